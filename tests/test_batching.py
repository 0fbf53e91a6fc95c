"""Spec of dynamic batching on the real voice: a chunk batched with others sounds as it would alone.

Piper's export pads every row of a batch to the longest one; the server adds the model's own
per-row frame count as a graph output and trims each row to it. Two kinds of check:

- With the noise off (noise_scale = noise_w = 0) VITS is deterministic, so a batched row must be
  the row run alone, sample for sample, up to float32 rounding (a different batch shape sums in
  a different order: about 1e-4 of full scale). A wrong trim changes the length; padding that
  leaked into a row would change its samples far beyond that.
- With the voice's own noise, two runs of one sentence differ even unbatched (random durations and
  latents, drawn afresh per call), so exact equality is meaningless. We check what a listener
  hears instead: the duration is that of the sentence alone (within 20%; repeat runs vary about
  5%), and the average spectrum is that of the sentence alone (a mean log-band distance under
  0.15, where repeat runs measure about 0.05 and other sentences by the same voice 0.2 to 0.5,
  which a control assertion checks so the measure is known to tell them apart).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from server.audio.pcm import parse_wav
from server.settings import load_settings
from server.synthesis.catalog import VoiceCatalog, bundled_voice
from server.synthesis.graph import with_lengths_output
from server.synthesis.voice import RuntimeOptions, Voice
from tests.conftest import ROOT, query, unique_text

HOP = 256  # samples per frame of Piper's medium-quality voices
ROUNDING = 1e-3
SPECTRUM_SAME = 0.15
SENTENCES = [
    "Okay.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest.",
    "Hello there, how are you today?",
    "Numbers like forty two are spoken too.",
]


@pytest.fixture(scope="module")
def voice() -> Voice:
    files = bundled_voice()
    assert files is not None
    return Voice.load(files, RuntimeOptions(provider="cpu", intra_op_threads=2))


def ids(voice: Voice, text: str) -> list[int]:
    (sentence,) = voice.phonemize(text)
    return voice.phoneme_ids(sentence)


def band_spectrum(samples: np.ndarray, bands: int = 40) -> np.ndarray:
    """Log energy in `bands` log-spaced bands, averaged over the utterance: its timbre and content."""
    frames = np.lib.stride_tricks.sliding_window_view(samples, 1024)[::HOP] * np.hanning(1024)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    edges = np.geomspace(2, power.shape[1], bands + 1).astype(int)
    energy = np.stack([power[:, lo:hi].sum(axis=1) for lo, hi in itertools.pairwise(edges)])
    return np.log10(energy.mean(axis=1) + 1e-10)


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(band_spectrum(a) - band_spectrum(b)).mean())


def stock_voice() -> Voice:
    files = bundled_voice()
    assert files is not None
    return Voice.load(files, RuntimeOptions(provider="cpu", intra_op_threads=2, windowed=False))


def test_the_stock_session_gains_one_output_each_rows_frame_count():
    stock = stock_voice()
    assert stock.session is not None and stock.windows is None
    assert stock.lengths_output is not None
    assert [o.name for o in stock.session.get_outputs()] == ["output", stock.lengths_output]
    alone = stock.infer(ids(stock, SENTENCES[2]), 1.0, None)
    assert alone.size % HOP == 0


def test_a_graph_without_vits_durations_loads_unchanged_and_unbatched(tmp_path):
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Ceil", ["x"], ["up"]), helper.make_node("Relu", ["up"], ["y"])],
        "not-vits",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = tmp_path / "not-vits.onnx"
    onnx.save(helper.make_model(graph), str(model))
    data, name = with_lengths_output(model)
    assert name is None
    assert data == model.read_bytes()


def test_with_the_noise_off_a_batched_row_is_the_row_alone(voice):
    rows = [ids(voice, text) for text in SENTENCES]
    alone = [voice.infer_batch([row], 1.0, [None], noise_scale=0, noise_w=0)[0] for row in rows]
    batched = voice.infer_batch(rows, 1.0, [None] * len(rows), noise_scale=0, noise_w=0)

    assert [b.size for b in batched] == [a.size for a in alone]  # trimmed to each row's own length
    assert len({b.size for b in batched}) == len(rows)  # so the padding really was there to trim
    for a, b in zip(alone, batched, strict=True):
        assert float(np.abs(a - b).max()) < ROUNDING


def test_batched_rows_keep_the_speed_they_share(voice):
    rows = [ids(voice, text) for text in SENTENCES[1:3]]
    normal = voice.infer_batch(rows, 1.0, [None, None], noise_scale=0, noise_w=0)
    slow = voice.infer_batch(rows, 1.5, [None, None], noise_scale=0, noise_w=0)
    for n, s in zip(normal, slow, strict=True):
        assert s.size > 1.3 * n.size


def test_with_the_voices_noise_a_batched_row_sounds_like_the_row_alone(voice):
    texts = SENTENCES[1:]  # a one-word row is too short for a stable spectrum
    rows = [ids(voice, text) for text in texts]
    alone = [[voice.infer(row, 1.0, None) for row in rows] for _ in range(3)]
    batched = voice.infer_batch(rows, 1.0, [None] * len(rows))

    for index, samples in enumerate(batched):
        usual = np.mean([run[index].size for run in alone])
        assert abs(samples.size - usual) < 0.2 * usual
        assert spectrum_distance(samples, alone[0][index]) < SPECTRUM_SAME
        for other in range(len(texts)):
            if other != index:  # control: the measure does tell sentences apart
                assert spectrum_distance(samples, alone[0][other]) > SPECTRUM_SAME


def test_a_voice_without_the_lengths_output_runs_rows_only_one_at_a_time(voice):
    unknown = replace(voice, lengths_output=None, windows=None, session=stock_voice().session)
    rows = [ids(voice, text) for text in SENTENCES[:2]]
    assert unknown.infer(rows[0], 1.0, None).size > 0
    with pytest.raises(ValueError, match="cannot run batches"):
        unknown.infer_batch(rows, 1.0, [None, None])


@pytest.mark.parametrize(
    ("configured", "limit"),
    [("0", 1), ("6", 6)],
    ids=["auto-on-the-cpu-is-off", "configured-size"],
)
def test_the_catalog_sets_each_voices_batch_limit(tmp_path, configured, limit):
    settings = load_settings(
        ROOT / "config.yaml",
        {
            "TTS__SYNTHESIS__PROVIDER": "cpu",
            "TTS__SYNTHESIS__BATCH_MAX_SIZE": configured,
            "TTS__SYNTHESIS__MODELS_DIR": str(tmp_path),
        },
    )
    catalog = VoiceCatalog(settings)
    catalog.load()
    assert catalog.ready
    assert catalog.get("en_US-joe-medium").batch_limit == limit


# -- through the server ----------------------------------------------------------------------------


@pytest.fixture
def still_voice(tmp_path: Path) -> Iterator[Path]:
    """A models dir with `joe-still`: the bundled model with its noise turned off."""
    files = bundled_voice()
    assert files is not None
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(files.model, models / "joe-still.onnx")
    config = json.loads(files.config.read_text(encoding="utf-8"))
    config["inference"].update(noise_scale=0.0, noise_w=0.0)
    (models / "joe-still.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    yield models


def synthesize_all(server, texts: list[str]) -> list[bytes]:
    """Ask for every text at once, then fetch each WAV."""
    metas: list[dict] = [{}] * len(texts)

    def ask(index: int) -> None:
        metas[index] = server.get("/tts?" + query(text=texts[index], voice="joe-still"), timeout=120).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [server.get(f"/audio/{meta['hash']}.wav").body for meta in metas]


@pytest.mark.slow
def test_concurrent_requests_share_inference_calls_and_get_the_audio_they_would_alone(
    make_server, still_voice
):
    texts = [
        unique_text(f"Batch {n}") + " " + SENTENCES[n % len(SENTENCES)] + " It ends here." for n in range(8)
    ]
    models = {"TTS__SYNTHESIS__MODELS_DIR": str(still_voice)}
    batching = make_server(
        {**models, "TTS__SYNTHESIS__BATCH_MAX_SIZE": "8", "TTS__SYNTHESIS__BATCH_WINDOW_MS": "50"}
    )
    alone = make_server({**models, "TTS__SYNTHESIS__BATCH_MAX_SIZE": "1"})

    together = synthesize_all(batching, texts)
    one_by_one = [synthesize_all(alone, [text])[0] for text in texts]

    calls = batching.metric("tts_inference_batch_size_count")
    chunks = batching.metric("tts_inference_batch_size_sum")
    assert chunks == batching.metric("tts_inferences_total")
    assert calls < chunks  # some calls carried chunks of several requests
    assert alone.metric("tts_inference_batch_size_sum") == alone.metric("tts_inference_batch_size_count")
    for shared, single in zip(together, one_by_one, strict=True):
        a = np.frombuffer(parse_wav(shared)[1], dtype=np.int16).astype(np.int32)
        b = np.frombuffer(parse_wav(single)[1], dtype=np.int16).astype(np.int32)
        assert a.size == b.size
        assert int(np.abs(a - b).max()) <= 16  # float rounding, in int16 steps (of 32767)
