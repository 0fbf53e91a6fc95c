"""Spec of the cache key: one key per distinct audio, the same in every process and on every machine."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.cache.keys import KeyParts, audio_key, is_key
from server.text.clean import normalize_text

ROOT = Path(__file__).resolve().parents[1]
BASE = KeyParts(
    voice_id="en_US-joe-medium",
    model_digest="0" * 64,
    speaker_id=None,
    text="Hello world.",
    length_scale=1.0,
    noise_scale=0.667,
    noise_w=0.8,
    render=(1.0, 0.2, 4.0, 16, 96, 400),
)
# Pinned on purpose: if this changes, every cached file and Redis entry is orphaned, so a change
# must be deliberate (and bump AUDIO_FORMAT_VERSION when the audio bytes change).
BASE_KEY = "9b1dba80bab29ba55d589486f47e0506c7552828128d474727aad404d676369e"


def key_for_text(text: str) -> str:
    return audio_key(dataclasses.replace(BASE, text=normalize_text(text)))


def test_key_is_a_pinned_sha256_hex_for_fixed_inputs():
    assert audio_key(BASE) == BASE_KEY


def test_key_is_the_same_in_a_fresh_process():
    # A different hash seed per process must not matter: replicas share Redis and disk.
    code = (
        "from server.cache.keys import KeyParts, audio_key;"
        "print(audio_key(KeyParts('en_US-joe-medium', '0' * 64, None, 'Hello world.',"
        " 1.0, 0.667, 0.8, (1.0, 0.2, 4.0, 16, 96, 400))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert result.stdout.strip() == BASE_KEY


def test_nfd_and_nfc_spellings_share_a_key():
    assert key_for_text("Caf\u00e9 cr\u00e8me.") == key_for_text("Cafe\u0301 cre\u0300me.")


def test_extra_whitespace_does_not_change_the_key():
    assert key_for_text("  Hello \n\t world.  ") == key_for_text("Hello world.")


def test_invisible_format_characters_do_not_change_the_key():
    assert key_for_text("Hello\u200b world.\ufeff") == key_for_text("Hello world.")


@given(st.text())
def test_normalization_equivalents_share_a_key(text):
    expected = key_for_text(text)
    assert key_for_text(unicodedata.normalize("NFD", text)) == expected
    assert key_for_text(f"  {text}\n") == expected


@given(st.text(min_size=1), st.text(min_size=1))
def test_different_normalized_texts_have_different_keys(first, second):
    a, b = normalize_text(first), normalize_text(second)
    if a != b:
        assert key_for_text(first) != key_for_text(second)


@pytest.mark.parametrize(
    "change",
    [
        {"voice_id": "en_US-joe-low"},
        {"model_digest": "1" + "0" * 63},
        {"speaker_id": 0},
        {"speaker_id": 1},
        {"text": "Hello world!"},
        {"text": "hello world."},
        {"length_scale": 1.2},
        {"length_scale": 0.9999},
        {"noise_scale": 0.5},
        {"noise_w": 0.7},
        {"render": (1.5, 0.2, 4.0, 60, 300)},
        {"render": (1.0, 0.3, 4.0, 60, 300)},
        {"render": (1.0, 0.2, 0.0, 60, 300)},
        {"render": (1.0, 0.2, 4.0, 40, 300)},
        {"render": (1.0, 0.2, 4.0, 60, 200)},
        {"render": (1.0, 0.2, 4.0, 60)},
        {"front": ("markdown", 1)},
        {"front": ("plain", 2)},
        {"front": ("ssml", 1, "en_US-other-medium:" + "0" * 64)},
    ],
    ids=repr,
)
def test_any_change_that_alters_the_audio_changes_the_key(change):
    assert audio_key(dataclasses.replace(BASE, **change)) != BASE_KEY


def test_float_noise_below_the_rounding_step_keeps_the_key():
    # 1/3 computed two ways differs in the last bit; such noise must not split the cache.
    assert audio_key(dataclasses.replace(BASE, length_scale=1 / 3)) == audio_key(
        dataclasses.replace(BASE, length_scale=(1 / 3) * (1 + 1e-12))
    )


@given(
    st.sampled_from(["voice_id", "model_digest", "speaker_id", "length_scale", "noise_scale", "noise_w"]),
    st.data(),
)
def test_changing_one_part_changes_the_key(field, data):
    values = {
        "voice_id": st.text(min_size=1),
        "model_digest": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        "speaker_id": st.none() | st.integers(0, 10_000),
        "length_scale": st.integers(1, 400_000).map(lambda n: n / 10_000),
        "noise_scale": st.integers(0, 20_000).map(lambda n: n / 10_000),
        "noise_w": st.integers(0, 20_000).map(lambda n: n / 10_000),
    }[field]
    value = data.draw(values)
    changed = dataclasses.replace(BASE, **{field: value})
    if getattr(BASE, field) != value:
        assert audio_key(changed) != BASE_KEY
    else:
        assert audio_key(changed) == BASE_KEY


def test_key_is_recognised_by_is_key():
    assert is_key(BASE_KEY)


@pytest.mark.parametrize(
    "value",
    [
        "",
        BASE_KEY[:-1],
        BASE_KEY + "0",
        BASE_KEY.upper(),
        "g" * 64,
        "../" + BASE_KEY[3:],
        BASE_KEY[:-1] + "\n",
        BASE_KEY + "\n",
        BASE_KEY + ".wav",
    ],
)
def test_is_key_rejects_anything_but_64_lowercase_hex(value):
    assert not is_key(value)
