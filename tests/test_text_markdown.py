"""Spec of markdown input: what a listener hears of each construct (sentences, pauses, offsets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.text.markdown import MarkdownRules, parse_markdown
from server.text.plan import FrontEnd, plan_text
from server.text.sentences import Pauses
from server.text.spans import TextFormat

FRONT = FrontEnd(Pauses(sentence_s=0.0, paragraph_s=0.3), MarkdownRules("Code omitted.", "Table omitted."))

LLM_ANSWER = """# Getting started

Install the **server** with *one* command, then open [the docs](https://example.com/docs).

## Steps

1. Run `./start.sh`.
2. Open the player.

```sh
./start.sh test
```

| key | value |
|-----|-------|
| a   | 1     |

![A diagram of the flow](flow.png) <span>Done</span>.
"""


def said(document: str, front: FrontEnd = FRONT) -> list[tuple[str, float]]:
    plan = plan_text(document, TextFormat.MARKDOWN, "en-us", front)
    return [(segment.text, segment.pause_s) for segment in plan.segments]


def test_an_llm_answer_is_read_as_sentences_with_paragraph_pauses():
    assert said(LLM_ANSWER) == [
        ("Getting started", 0.3),
        ("Install the server with one command, then open the docs.", 0.3),
        ("Steps", 0.3),
        ("Run ./start.sh.", 0.3),
        ("Open the player.", 0.3),
        ("Code omitted.", 0.3),
        ("Table omitted.", 0.3),
        ("A diagram of the flow Done.", 0.3),
    ]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("**bold** and __strong__ and *em* and _em_", "bold and strong and em and em"),
        ("a [link text](https://example.com/x) here", "a link text here"),
        ("run `pip install x` now", "run pip install x now"),
        ("![alt words](img.png)", "alt words"),
        ("> quoted words", "quoted words"),
        ("text <b>with</b> html", "text with html"),
        ("~~struck~~ kept", "~~struck~~ kept"),  # CommonMark has no strikethrough: read as written
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("line one\nline two", "line one line two"),
    ],
    ids=repr,
)
def test_inline_markup_vanishes_and_its_words_are_read(document, expected):
    assert [text for text, _ in said(document)] == [expected]


def test_an_html_block_is_dropped():
    assert said("<div>\nhidden\n</div>\n\nShown.") == [("Shown.", 0.3)]


def test_empty_placeholders_skip_code_and_tables_silently():
    front = FrontEnd(Pauses(0.0, 0.3), MarkdownRules("", ""))
    assert said("Before.\n\n```\ncode\n```\n\n| a |\n|---|\n| 1 |\n\nAfter.", front) == [
        ("Before.", 0.3),
        ("After.", 0.3),
    ]


def test_each_list_item_is_its_own_block():
    assert said("- apples\n- pears\n- plums") == [("apples", 0.3), ("pears", 0.3), ("plums", 0.3)]


def test_sentences_of_a_paragraph_get_the_sentence_pause_and_its_last_the_paragraph_pause():
    front = FrontEnd(Pauses(sentence_s=0.1, paragraph_s=0.5))
    assert said("One here. Two here.\n\nThree here.", front) == [
        ("One here.", 0.1),
        ("Two here.", 0.5),
        ("Three here.", 0.5),
    ]


def test_text_keeps_its_span_in_the_markdown_source_markers_included():
    document = "# Title\n\nSome **bold** words and `code`."
    (block_one, block_two) = parse_markdown(document, MarkdownRules())
    assert [(p.text, document[p.start : p.end]) for p in block_one] == [("Title", "Title")]
    assert [(p.text, document[p.start : p.end], p.literal) for p in block_two] == [
        ("Some bold words and ", "Some **bold** words and ", False),
        ("code", "code", True),
        (".", ".", False),
    ]


def test_inline_phonemes_work_in_markdown():
    plan = plan_text("Say [[ h ə l ˈoʊ ]] now.", TextFormat.MARKDOWN, "en-us", FRONT)
    (segment,) = plan.segments
    assert [(run.text, run.phonemes) for run in segment.runs] == [
        ("Say", ()),
        ("", ("h", "ə", "l", "ˈ", "o", "ʊ")),
        ("now.", ()),
    ]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .!?*_`#[]()<>|-\n\\&;1:"), max_size=80))
def test_any_markdown_is_planned_with_offsets_inside_the_document(document):
    for segment in plan_text(document, TextFormat.MARKDOWN, "en-us", FRONT).segments:
        assert all(0 <= run.start <= run.end <= len(document) for run in segment.runs)
