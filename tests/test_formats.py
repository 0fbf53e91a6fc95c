"""Compressed formats on the native API, against a real server, decoded with PyAV (FFmpeg).

Every format comes from `/tts` + `/audio/{hash}.{ext}` and from `/tts/stream?format=...`; the
decoded audio must be the synthesized PCM's length (give or take what the codec adds: encoder
delay and the last frame's padding), a live stream must decode to the file's audio, and the
cache must never synthesize a text twice or encode a rendition twice.
"""

from __future__ import annotations

import io
import time
import wave

import av
import numpy as np
import pytest

from server.audio.encode import Encoder, encode_file
from server.audio.formats import FORMATS
from tests.conftest import ServerProcess, query, unique_text
from tests.test_stream import read_stream

VOICE_RATE = 22050  # en_US-joe-medium
# What PyAV reports for each format: (container, decoder, sample rate).
DECODED = {
    "mp3": ("mp3", "mp3float", VOICE_RATE),
    "opus": ("ogg", "opus", 48000),
    "aac": ("aac", "aac", VOICE_RATE),
    "flac": ("flac", "flac", VOICE_RATE),
    "wav": ("wav", "pcm_s16le", VOICE_RATE),
}
# Samples per codec frame at the decoded rate: a stream and a file may differ by at most one.
FRAME = {"mp3": 1152, "opus": 960, "aac": 1024, "flac": 4608, "wav": 1, "pcm": 1}
# Lossy codecs add their encoder delay and pad the last frame; no container here says how much
# to trim (MP3 without a LAME tag, ADTS), so decoded audio is a little longer than the PCM.
SLACK_S = 0.12
TEXT = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April."


def decode(data: bytes, name: str) -> tuple[str, str, int, int]:
    """(container, decoder, sample rate, decoded samples) of an encoded file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return container.format.name, stream.codec_context.name, stream.rate, samples


def seconds(data: bytes, name: str) -> float:
    if name == "pcm":
        return len(data) / 2 / VOICE_RATE
    _, _, rate, samples = decode(data, name)
    return samples / rate


def wav_seconds(server: ServerProcess, key: str) -> float:
    with wave.open(io.BytesIO(server.get(f"/audio/{key}.wav").body)) as wav:
        return wav.getnframes() / wav.getframerate()


def tts(server: ServerProcess, text: str, audio_format: str) -> dict:
    resp = server.get("/tts?" + query(text=text, format=audio_format))
    assert resp.status == 200, resp.body
    return resp.json()


# -- the encoders alone ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "pcm"])
def test_encoded_bytes_do_not_depend_on_how_the_pcm_was_chunked(name):
    tone = (np.sin(np.arange(VOICE_RATE * 2) * 0.05) * 8000).astype("<i2").tobytes()
    encoder = Encoder(FORMATS[name], VOICE_RATE)
    pieces = [encoder.encode(tone[start : start + 3001 * 2]) for start in range(0, len(tone), 3001 * 2)]
    assert b"".join(pieces) + encoder.finish() == encode_file(FORMATS[name], tone, VOICE_RATE)


def test_a_streamed_wav_has_the_unknown_size_header_and_a_file_the_real_sizes():
    pcm = bytes(4410)
    streamed = Encoder(FORMATS["wav"], VOICE_RATE).encode(pcm)
    assert streamed[4:8] == b"\xff\xff\xff\xff" and streamed[40:44] == b"\xff\xff\xff\xff"
    whole = encode_file(FORMATS["wav"], pcm, VOICE_RATE)
    assert int.from_bytes(whole[40:44], "little") == len(pcm)


def test_pcm_can_be_resampled_to_24_khz():
    pcm = (np.sin(np.arange(VOICE_RATE) * 0.05) * 8000).astype("<i2").tobytes()
    out = encode_file(FORMATS["pcm"], pcm, VOICE_RATE, 24000)
    assert abs(len(out) // 2 - 24000) <= 32


# -- /tts and /audio/{hash}.{ext} -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "flac", "wav"])
def test_every_format_from_tts_decodes_to_the_pcm_length(server: ServerProcess, name: str):
    meta = tts(server, unique_text(TEXT), name)
    assert meta["audio_url"] == f"{server.base}/audio/{meta['hash']}.{FORMATS[name].ext}"
    resp = server.get(meta["audio_url"].removeprefix(server.base))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == FORMATS[name].content_type
    container, codec, rate, samples = decode(resp.body, name)
    assert (container, codec, rate) == DECODED[name]
    assert meta["sample_rate"] == rate
    pcm_s = wav_seconds(server, meta["hash"])
    assert pcm_s <= samples / rate <= pcm_s + SLACK_S
    assert meta["duration_s"] == pytest.approx(pcm_s, abs=0.001)


def test_pcm_from_tts_is_the_wav_samples(server: ServerProcess):
    meta = tts(server, unique_text(TEXT), "pcm")
    resp = server.get(f"/audio/{meta['hash']}.pcm")
    assert resp.headers["Content-Type"] == "audio/pcm"
    assert resp.body == server.get(f"/audio/{meta['hash']}.wav").body[44:]


def test_an_encoded_file_has_etag_ranges_and_the_wav_lifetime(server: ServerProcess):
    key = tts(server, unique_text(TEXT), "mp3")["hash"]
    whole = server.get(f"/audio/{key}.mp3")
    wav = server.get(f"/audio/{key}.wav")
    assert whole.headers["Cache-Control"] == wav.headers["Cache-Control"]
    assert whole.headers["ETag"] != wav.headers["ETag"]
    part = server.get(f"/audio/{key}.mp3", headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(whole.body)}"
    assert part.body == whole.body[10:20]
    same = server.get(f"/audio/{key}.mp3", headers={"If-None-Match": whole.headers["ETag"]})
    assert same.status == 304


@pytest.mark.parametrize("ext", ["txt", "mp4", "ogg", "24000.pcm", "WAV"])
def test_other_extensions_are_not_found(server: ServerProcess, ext: str):
    key = tts(server, unique_text(TEXT), "wav")["hash"]
    resp = server.get(f"/audio/{key}.{ext}")
    assert resp.status == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_a_format_for_an_unknown_hash_is_not_found(server: ServerProcess):
    assert server.get(f"/audio/{'0' * 64}.mp3").status == 404


@pytest.mark.parametrize("path", ["/tts", "/tts/stream"])
def test_an_unknown_format_is_a_400_listing_the_formats(server: ServerProcess, path: str):
    resp = server.get(f"{path}?" + query(text="Hello.", format="ogg"))
    assert resp.status == 400
    assert resp.json()["error"] == {
        "code": "invalid_request",
        "message": "format must be one of wav, pcm, mp3, opus, aac or flac",
    }


# -- /tts/stream --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_a_live_stream_decodes_to_the_same_audio_as_the_file(server: ServerProcess, name: str):
    text = unique_text(TEXT)
    streamed = read_stream(server, "/tts/stream?" + query(text=text, format=name))
    assert streamed.status == 200
    assert streamed.headers["x-cache"] == "miss"
    assert streamed.headers["content-type"] == FORMATS[name].content_type
    meta = tts(server, text, name)
    assert meta["hash"] == streamed.headers["x-audio-hash"]
    assert meta["cache"] != "miss"  # the stream synthesized it
    file_body = server.get(f"/audio/{meta['hash']}.{FORMATS[name].ext}").body
    rate = DECODED.get(name, ("", "", VOICE_RATE))[2]
    assert int(streamed.headers["x-audio-sample-rate"]) == rate
    stream_s, file_s = seconds(streamed.body, name), seconds(file_body, name)
    assert abs(stream_s - file_s) * rate <= FRAME[name]
    if FORMATS[name].stream_is_file and name != "pcm":
        assert streamed.body == file_body  # the finished stream was stored as the file


def test_a_stream_sends_encoded_audio_before_the_synthesis_ends(server: ServerProcess):
    text = unique_text(" ".join([TEXT] * 3))
    streamed = read_stream(server, "/tts/stream?" + query(text=text, format="mp3"))
    assert len([chunk for chunk in streamed.chunks if chunk]) >= 3
    assert streamed.chunks[0].startswith(b"ID3")


def test_post_tts_stream_takes_the_json_body_of_post_tts(server: ServerProcess):
    text = unique_text(TEXT)
    resp = server.post("/tts/stream", {"text": text, "format": "opus", "speed": 1.25})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/ogg"
    assert decode(resp.body, "opus")[:3] == DECODED["opus"]
    meta = server.post("/tts", {"text": text, "speed": 1.25}).json()
    assert meta["hash"] == resp.headers["X-Audio-Hash"]


# -- the cache ----------------------------------------------------------------------------------------


def test_a_new_format_for_cached_text_runs_no_inference(server: ServerProcess):
    text = unique_text(TEXT)
    tts(server, text, "wav")
    inferences = server.metric("tts_inferences_total")
    encodes = server.metric("tts_encodes_total", 'format="aac"')
    assert tts(server, text, "aac")["cache"] in ("l1", "l2", "disk")
    read_stream(server, "/tts/stream?" + query(text=text, format="opus"))
    assert server.metric("tts_inferences_total") == inferences
    assert server.metric("tts_encodes_total", 'format="aac"') == encodes + 1


def test_a_repeat_of_the_same_format_runs_no_encode(server: ServerProcess):
    text = unique_text(TEXT)
    key = tts(server, text, "mp3")["hash"]
    encodes = server.metric("tts_encodes_total")
    tts(server, text, "mp3")
    server.get(f"/audio/{key}.mp3")
    streamed = read_stream(server, "/tts/stream?" + query(text=text, format="mp3"))
    assert streamed.body == server.get(f"/audio/{key}.mp3").body
    assert server.metric("tts_encodes_total") == encodes


def test_a_completed_live_stream_is_stored_so_its_file_needs_no_encode(server: ServerProcess):
    text = unique_text(TEXT)
    streamed = read_stream(server, "/tts/stream?" + query(text=text, format="aac"))
    encodes = server.metric("tts_encodes_total")
    assert tts(server, text, "aac")["hash"] == streamed.headers["x-audio-hash"]
    assert server.metric("tts_encodes_total") == encodes


def test_leaving_an_encoded_stream_stops_synthesis_and_stores_nothing(make_server):
    server = make_server({"TTS__SYNTHESIS__MAX_ACTIVE_REQUESTS": "1"})
    count = 40
    text = " ".join(f"Sentence number {n} of a long text." for n in range(count))
    before = server.metric("tts_inferences_total")
    streamed = read_stream(server, "/tts/stream?" + query(text=text, format="opus"), max_chunks=1)
    assert streamed.status == 200
    deadline = time.monotonic() + 30
    settled = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        ran = server.metric("tts_inferences_total") - before
        if ran == settled and server.metric("tts_active_streams") == 0:
            break
        settled = ran
    assert settled is not None and settled < count / 4
    assert server.get(f"/audio/{streamed.headers['x-audio-hash']}.opus").status == 404
    assert server.get("/tts?" + query(text=unique_text("Next"), format="mp3")).status == 200
    assert "Traceback" not in server.logs()
