"""Spec of SSML input: every supported element, and hostile documents rejected fast with a clear 400."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import InvalidRequest
from server.text.plan import FrontEnd, plan_text
from server.text.sentences import Pauses
from server.text.spans import TextFormat

FRONT = FrontEnd(Pauses(sentence_s=0.0, paragraph_s=0.3))


def plan(body: str, *, wrap: bool = True):
    document = f"<speak>{body}</speak>" if wrap else body
    return plan_text(document, TextFormat.SSML, "en-us", FRONT)


def said(body: str) -> list[tuple[str, float]]:
    return [(segment.text, segment.pause_s) for segment in plan(body).segments]


def rejected(document: str) -> str:
    with pytest.raises(InvalidRequest) as caught:
        plan_text(document, TextFormat.SSML, "en-us", FRONT)
    assert caught.value.status == 400
    return caught.value.message


# -- elements ----------------------------------------------------------------------------------


def test_plain_text_in_speak_is_one_sentence():
    assert said("Hello world.") == [("Hello world.", 0.3)]


def test_the_ssml_namespace_is_accepted():
    document = '<speak version="1.1" xmlns="http://www.w3.org/2001/10/synthesis">Hi there.</speak>'
    assert [s.text for s in plan(document, wrap=False).segments] == ["Hi there."]


def test_p_elements_are_paragraphs():
    assert said("<p>First one.</p><p>Second one.</p>") == [("First one.", 0.3), ("Second one.", 0.3)]


def test_s_elements_end_sentences_without_punctuation():
    assert said("<p><s>One</s><s>Two</s></p>") == [("One", 0.0), ("Two", 0.3)]


@pytest.mark.parametrize(
    ("attributes", "pause"),
    [
        ('time="800ms"', 0.8),
        ('time="1.5s"', 1.5),
        ('time="0ms"', 0.0),
        ('strength="none"', 0.0),
        ('strength="weak"', 0.2),
        ('strength="strong"', 0.7),
        ("", 0.4),  # medium
    ],
)
def test_break_sets_the_pause_between_its_neighbours(attributes, pause):
    assert said(f"Hello <break {attributes}/> world.") == [("Hello", pause), ("world.", 0.3)]


def test_a_break_at_the_start_is_a_silence_of_its_own():
    segments = plan('<break time="500ms"/>Hi.').segments
    assert [(s.text, s.pause_s) for s in segments] == [("", 0.5), ("Hi.", 0.3)]


def test_a_break_ending_a_paragraph_replaces_the_paragraph_pause():
    assert said('<p>One.<break time="1s"/></p><p>Two.</p>') == [("One.", 1.0), ("Two.", 0.3)]


@pytest.mark.parametrize(
    ("rate", "factor"),
    [("fast", 1.25), ("x-slow", 0.5), ("150%", 1.5), ("+20%", 1.2), ("-50%", 0.5), ("2", 2.0)],
)
def test_prosody_rate_scales_the_speaking_rate(rate, factor):
    segments = plan(f'Normal. <prosody rate="{rate}">Changed.</prosody>').segments
    assert [(s.text, s.rate) for s in segments] == [("Normal.", 1.0), ("Changed.", factor)]


def test_a_rate_change_inside_a_sentence_adds_no_pause_and_one_after_a_sentence_does():
    paused = FrontEnd(Pauses(sentence_s=0.25, paragraph_s=0.5))
    document = '<speak>Wait for it, <prosody rate="fast">then go. And</prosody> stop.</speak>'
    segments = plan_text(document, TextFormat.SSML, "en-us", paused).segments
    assert [(s.text, s.pause_s) for s in segments] == [
        ("Wait for it,", 0.0),
        ("then go.", 0.25),
        ("And", 0.0),
        ("stop.", 0.5),
    ]


def test_a_break_alone_between_paragraphs_keeps_its_time():
    document = (
        '<speak><p>One.</p>\n  <break time="1s"/>\n  <prosody rate="slow"><p>Two.</p></prosody></speak>'
    )
    segments = plan_text(document, TextFormat.SSML, "en-us", FRONT).segments
    assert [(s.text, s.pause_s) for s in segments] == [("One.", 0.3), ("", 1.0), ("Two.", 0.3)]


def test_sub_reads_its_alias():
    assert said('<sub alias="World Wide Web">WWW</sub> rules.') == [("World Wide Web rules.", 0.3)]


def test_phoneme_reads_its_ipa():
    (segment,) = plan('Say <phoneme alphabet="ipa" ph="təˈmɑːtoʊ">tomato</phoneme>.').segments
    assert [(r.text, r.phonemes) for r in segment.runs] == [
        ("Say", ()),
        ("", tuple("təˈmɑːtoʊ")),
        (".", ()),
    ]


@pytest.mark.parametrize(
    ("interpret_as", "fmt", "text", "words"),
    [
        ("characters", None, "ABC", "A B C"),
        ("spell-out", None, "hi", "h i"),
        ("cardinal", None, "1234", "one thousand, two hundred and thirty-four"),
        ("cardinal", None, "12,345", "twelve thousand, three hundred and forty-five"),
        ("ordinal", None, "3", "third"),
        ("ordinal", None, "21", "twenty-first"),
        ("digits", None, "2024", "two zero two four"),
        ("date", "mdy", "12/25/2024", "December twenty-fifth, twenty twenty-four"),
        ("date", "dmy", "25.12.2024", "December twenty-fifth, twenty twenty-four"),
        ("date", None, "2024-03-01", "March first, twenty twenty-four"),
        ("date", "md", "7/4", "July fourth"),
        ("time", None, "10:30", "ten thirty"),
        ("time", None, "9:05", "nine oh five"),
        ("time", None, "5:00 pm", "five p m"),
        ("telephone", None, "555-1234", "five five five, one two three four"),
        ("telephone", None, "+1 555 0100", "plus one, five five five, zero one zero zero"),
    ],
)
def test_say_as_reads_each_kind_as_words(interpret_as, fmt, text, words):
    attributes = f'interpret-as="{interpret_as}"' + (f' format="{fmt}"' if fmt else "")
    assert said(f"<say-as {attributes}>{text}</say-as>") == [(words, 0.3)]


def test_say_as_that_does_not_fit_reads_the_text():
    assert said('<say-as interpret-as="date">someday</say-as>') == [("someday", 0.3)]


def test_emphasis_is_read_normally():
    assert said("This is <emphasis level='strong'>very</emphasis> good.") == [("This is very good.", 0.3)]


def test_voice_switches_voice_for_its_text():
    result = plan('Hi. <voice name="en_US-other-medium">Hello.</voice> Bye.')
    assert [(s.text, s.voice) for s in result.segments] == [
        ("Hi.", None),
        ("Hello.", "en_US-other-medium"),
        ("Bye.", None),
    ]
    assert result.voices == ("en_US-other-medium",)


def test_unknown_elements_are_ignored_and_their_text_read():
    assert said('<foo bar="1">Inside</foo> and <mark name="m"/>after.') == [("Inside and after.", 0.3)]


def test_desc_is_not_read():
    assert said("<audio src='x.wav'>Fallback.<desc>a bell</desc></audio>") == [("Fallback.", 0.3)]


def test_text_keeps_its_offsets_in_the_ssml_source():
    document = "<speak>Hello <break/> world.</speak>"
    segments = plan(document, wrap=False).segments
    assert [document[r.start : r.end] for s in segments for r in s.runs] == ["Hello ", " world."]


# -- malformed ---------------------------------------------------------------------------------


def test_malformed_xml_names_line_and_column():
    assert rejected("<speak>\n  Hello <b>world</speak>") == (
        "SSML: not well-formed XML (mismatched tag) at line 2, column 19"
    )


def test_the_root_must_be_speak():
    assert rejected("<p>Hello</p>") == "SSML: the root element must be <speak>, not <p>"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('<break time="soon"/>', "SSML: break time must look like 500ms or 1.5s, got 'soon'"),
        ('<break time="11s"/>', "SSML: break time must be at most 10s, got '11s'"),
        (
            '<break strength="huge"/>',
            "SSML: break strength must be one of none, x-weak, weak, medium, strong, x-strong, got 'huge'",
        ),
        (
            '<prosody rate="warp">x</prosody>',
            "SSML: prosody rate must be a name, a percentage or a factor, got 'warp'",
        ),
        (
            '<prosody rate="900%">x</prosody>',
            "SSML: prosody rate must come to between 0.25 and 4 times normal",
        ),
        ("<sub>x</sub>", "SSML: sub needs an alias"),
        (
            '<phoneme alphabet="x-sampa" ph="h@">x</phoneme>',
            "SSML: phoneme alphabet must be ipa, got 'x-sampa'",
        ),
        ("<phoneme>x</phoneme>", "SSML: phoneme needs a ph attribute"),
        ("<voice>x</voice>", "SSML: voice needs a name"),
    ],
)
def test_bad_attributes_are_400s_that_say_what_is_wrong(body, message):
    assert rejected(f"<speak>{body}</speak>") == message


# -- hostile -----------------------------------------------------------------------------------


def test_billion_laughs_is_rejected_without_expanding():
    entities = "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i else "lol"}">' for i in range(10)
    )
    document = f"<?xml version='1.0'?><!DOCTYPE speak [{entities}]><speak>&lol9;</speak>"
    started = time.perf_counter()
    tracemalloc.start()
    try:
        assert rejected(document) == "SSML: DTDs and entity declarations are not allowed"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 0.5
    assert peak < 1_000_000  # expanded, it would be 3 GB


def test_an_external_entity_is_rejected():
    document = '<!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><speak>&xxe;</speak>'
    assert rejected(document) == "SSML: DTDs and entity declarations are not allowed"


def test_an_undeclared_entity_is_malformed():
    assert (
        rejected("<speak>&xxe;</speak>") == "SSML: not well-formed XML (undefined entity) at line 1, column 8"
    )


def test_ten_thousand_deep_nesting_is_rejected_fast():
    document = "<speak>" + "<p>" * 10_000 + "deep" + "</p>" * 10_000 + "</speak>"
    started = time.perf_counter()
    assert rejected(document) == "SSML: elements nest deeper than 32 levels"
    assert time.perf_counter() - started < 2


def test_a_one_megabyte_attribute_is_parsed_and_ignored_without_harm():
    # The HTTP front doors refuse it first (body and text limits); the parser alone stays bounded.
    document = f'<speak><foo data="{"a" * 1_000_000}">Short.</foo></speak>'
    started = time.perf_counter()
    assert [s.text for s in plan_text(document, TextFormat.SSML, "en-us", FRONT).segments] == ["Short."]
    assert time.perf_counter() - started < 2


# -- fuzz --------------------------------------------------------------------------------------

_TAGS = st.sampled_from(["speak", "p", "s", "break", "prosody", "sub", "phoneme", "say-as", "voice", "x"])
_ATTRS = st.sampled_from(
    [
        'time="1s"',
        'time="x"',
        'strength="weak"',
        'rate="150%"',
        'rate="0"',
        'alias="a"',
        'ph="hə"',
        'interpret-as="date"',
        'interpret-as="cardinal"',
        'format="mdy"',
        'name="v"',
        "",
    ]
)


@st.composite
def ssml_like(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.builds(lambda t, a: f"<{t} {a}>", _TAGS, _ATTRS),
                st.builds(lambda t: f"</{t}>", _TAGS),
                st.builds(lambda t, a: f"<{t} {a}/>", _TAGS, _ATTRS),
                st.text(max_size=12),
            ),
            max_size=12,
        )
    )
    return "<speak>" + "".join(parts) + "</speak>"


@settings(max_examples=300, deadline=None)
@given(document=st.one_of(ssml_like(), st.text(max_size=60)))
def test_any_document_is_a_plan_or_a_400(document):
    try:
        plan_text(document, TextFormat.SSML, "en-us", FRONT)
    except InvalidRequest as error:
        assert error.status == 400
        assert error.message.startswith("SSML: ")
