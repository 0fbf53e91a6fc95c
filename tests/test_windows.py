"""Spec of windowed synthesis on the real bundled voice: the split graph, margins, equality.

With the noise off VITS is deterministic, so a sentence made window by window must equal the stock
graph's one-shot synthesis of the same ids within 1e-4 (samples in [-1, 1]), for sentences of one
to 400 phonemes. The stock graph here is a second voice loaded with `windowed=False`.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from loguru import logger

from server.synthesis.catalog import bundled_voice
from server.synthesis.graph import find_cuts
from server.synthesis.voice import WARMUP_PHONEMES, RuntimeOptions, Voice
from server.synthesis.windows import WINDOW_TOLERANCE, Window, find_margins, window_bounds, windowed
from tests.conftest import ROOT, query, unique_text

FIRST, SIZE = 16, 96
TEXT = (
    "The old lighthouse keeper climbed the winding stairs every evening before sunset, "
    "carrying a lantern and a small notebook in which he wrote down the colour of the sky, "
    "the direction of the wind and the names of the ships that passed the rocky point "
    "on their way to the harbour beyond the hills and the long grey breakwater, "
    "and when the fog came rolling in from the sea he lit the great lamp and sat beside it "
    "until the morning"
)


@pytest.fixture(scope="module")
def voices() -> tuple[Voice, Voice]:
    files = bundled_voice()
    assert files is not None
    options = RuntimeOptions(
        provider="cpu", intra_op_threads=2, first_window_frames=FIRST, window_frames=SIZE
    )
    return Voice.load(files, options), Voice.load(files, RuntimeOptions(provider="cpu", windowed=False))


def phonemes_of(voice: Voice, count: int) -> list[str]:
    (sentence,) = voice.phonemize(TEXT)
    assert len(sentence) >= 400
    return list(sentence[:count])


def test_the_bundled_graph_is_cut_at_z_p_the_mask_durations_and_the_decoder_input():
    files = bundled_voice()
    assert files is not None
    cuts = find_cuts(onnx.load(str(files.model)).graph)
    assert cuts is not None
    # Found by structure; these are the names this export happens to give those tensors.
    assert (cuts.z_p, cuts.mask, cuts.durations, cuts.decoder_input) == (
        "/Add_output_0",
        "/Cast_2_output_0",
        "/Ceil_output_0",
        "/Mul_7_output_0",
    )


def test_a_graph_that_is_not_vits_has_no_cuts():
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Ceil", ["x"], ["up"]), helper.make_node("Relu", ["up"], ["y"])],
        "not-vits",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    assert find_cuts(graph) is None


def test_the_voice_loads_windowed_with_margins_measured_at_load(voices):
    voice, _ = voices
    assert voice.windows is not None
    assert voice.session is None  # one copy of each part, no stock graph beside them
    assert voice.windows.hop == 256
    assert 0 < voice.windows.decoder_margin <= 32
    assert 0 < voice.windows.flow_margin <= 64


def test_the_parts_run_without_onnxruntimes_cpu_arena_or_memory_patterns_by_default(voices):
    # Both hold every call's peak for the process's life: about 250 MiB after a bench run.
    voice, _ = voices
    assert voice.windows is not None
    for session in (voice.windows.encoder, voice.windows.flow, voice.windows.decoder):
        options = session.get_session_options()
        assert (options.enable_cpu_mem_arena, options.enable_mem_pattern) == (False, False)


@pytest.mark.parametrize("count", [1, 5, 20, 60, 150, 400])
def test_with_the_noise_off_windows_equal_the_stock_one_shot_synthesis(voices, count):
    voice, stock = voices
    assert voice.windows is not None
    ids = voice.phoneme_ids(phonemes_of(voice, count))
    one_shot = stock.infer_batch([ids], 1.0, [None], noise_scale=0, noise_w=0)[0]
    (encoded,) = voice.encode([ids], 1.0, [None], noise_scale=0, noise_w=0)
    joined = windowed(voice.windows, encoded, FIRST, SIZE)
    assert joined.shape == one_shot.shape
    assert float(np.abs(joined - one_shot).max()) <= WINDOW_TOLERANCE


def test_with_the_noise_on_the_windows_of_one_encoding_are_its_whole_synthesis(voices):
    # The encoder draws all the noise, so the windows a stream plays are the file's samples.
    voice, _ = voices
    assert voice.windows is not None
    ids = voice.phoneme_ids(phonemes_of(voice, 200))
    (encoded,) = voice.encode([ids], 1.0, [None])
    (whole,) = voice.windows.whole([encoded])
    assert float(np.abs(windowed(voice.windows, encoded, FIRST, SIZE) - whole).max()) <= WINDOW_TOLERANCE


def test_the_encoder_gives_frames_per_phoneme_id_summing_to_the_sentence(voices):
    voice, _ = voices
    ids = voice.phoneme_ids(phonemes_of(voice, 80))
    (encoded,) = voice.encode([ids], 1.0, [None], noise_scale=0, noise_w=0)
    assert encoded.durations.shape == (len(ids),)
    assert encoded.durations.min() >= 0
    assert int(encoded.durations.sum()) == encoded.frames
    (slow,) = voice.encode([ids], 2.0, [None], noise_scale=0, noise_w=0)
    assert slow.frames > 1.6 * encoded.frames  # twice the durations, each rounded up


def test_margins_too_small_are_refused(voices):
    voice, _ = voices
    assert voice.windows is not None
    engine = voice.windows
    kept = (engine.flow_margin, engine.decoder_margin)
    (encoded,) = voice.encode([voice.warmup_ids()], 1.0, [None], noise_scale=0, noise_w=0)
    try:
        assert find_margins(engine, encoded, FIRST, SIZE, voice.voice_id, fixed=(1, 1)) is None
    finally:
        engine.flow_margin, engine.decoder_margin = kept


def test_a_voice_whose_margin_check_fails_loads_whole_sentence_synthesis_with_one_warning():
    # Margins of one frame are far too small: the check at load refuses the windows, and the voice
    # falls back to the stock graph (which still synthesizes), saying so in exactly one line.
    files = bundled_voice()
    assert files is not None
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        voice = Voice.load(
            files, RuntimeOptions(provider="cpu", flow_margin_frames=1, decoder_margin_frames=1)
        )
    finally:
        logger.remove(sink)

    assert voice.windows is None and voice.session is not None
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{voice.voice_id}: windows differ from one-shot by ")
    assert warnings[0].endswith("(flow margin 1, decoder 1), so not windowed")
    assert voice.infer(voice.warmup_ids(), 1.0, None).size % 256 == 0


def test_a_voice_with_windowing_off_synthesizes_whole_sentences_with_the_stock_graph(voices):
    _, stock = voices
    assert stock.windows is None and stock.session is not None
    assert stock.infer(stock.warmup_ids(), 1.0, None).size % 256 == 0


def test_windows_start_small_then_take_the_configured_size_without_a_sliver_at_the_end():
    assert window_bounds(10, 16, 96) == [(0, 10)]
    assert window_bounds(300, 16, 96) == [(0, 16), (16, 112), (112, 208), (208, 300)]
    assert window_bounds(120, 16, 96) == [(0, 16), (16, 120)]
    bounds = window_bounds(1000, 12, 64)
    assert bounds[0] == (0, 12)
    assert all(b[0] == a[1] for a, b in itertools.pairwise(bounds))
    assert bounds[-1][1] == 1000


def test_a_windows_spans_add_margins_clipped_to_the_sentence(voices):
    voice, _ = voices
    (encoded,) = voice.encode([voice.warmup_ids()], 1.0, [None], noise_scale=0, noise_w=0)
    frames = encoded.frames
    assert Window(encoded, 0, 16).spans(24, 12) == (0, 52, 0, 28)
    assert Window(encoded, 100, 196).spans(24, 12) == (64, 232, 88, 208)
    assert Window(encoded, frames - 10, frames).spans(24, 12)[1] == frames


def test_the_warm_up_sentence_maps_without_a_phonemizer(voices):
    voice, _ = voices
    before = voice.unknown_phonemes
    ids = voice.warmup_ids()
    assert voice.unknown_phonemes == before
    assert len(ids) == 2 * len(WARMUP_PHONEMES) + 3


def test_the_engine_loads_checks_and_synthesizes_without_piper_phonemize():
    # The GPU check machine has no piper_phonemize wheel: warm-up, the batch check and the margin
    # search must run from the fixed phoneme sequence alone.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('piper_phonemize'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from server.synthesis.catalog import batch_matches_alone, bundled_voice\n"
        "from server.synthesis.scheduler import Scheduler\n"
        "from server.synthesis.voice import RuntimeOptions, Voice\n"
        "voice = Voice.load(bundled_voice(), RuntimeOptions(provider='cpu'))\n"
        "assert voice.windows is not None and batch_matches_alone(voice)\n"
        "print(voice.infer(voice.warmup_ids(), 1.0, None).size > 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"


def test_a_voice_configs_length_scale_is_multiplied_by_the_requests_speed(make_server, tmp_path):
    # With the noise off the audio depends only on the ids and the product of the two scales: a
    # voice slowed to 2.0 by its config at normal speed is the same voice at speed 0.5.
    files = bundled_voice()
    assert files is not None
    models = tmp_path / "models"
    models.mkdir()
    config = json.loads(files.config.read_text(encoding="utf-8"))
    for name, length_scale in (("joe-still", 1.0), ("joe-slow", 2.0)):
        os.symlink(files.model, models / f"{name}.onnx")
        config["inference"].update(noise_scale=0.0, noise_w=0.0, length_scale=length_scale)
        (models / f"{name}.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    server = make_server({"TTS__SYNTHESIS__MODELS_DIR": str(models)})
    text = unique_text("Slowly")

    def wav(**fields: str) -> bytes:
        meta = server.get("/tts?" + query(text=text, **fields), timeout=120).json()
        return server.get(f"/audio/{meta['hash']}.wav").body

    normal = wav(voice="joe-still")
    slow = wav(voice="joe-slow")
    assert len(slow) > 1.6 * len(normal)
    assert slow == wav(voice="joe-still", speed="0.5")
