"""The Wyoming front door, spoken to with the `wyoming` package's own client against a real server.

The module's server runs `python -m server` with Wyoming on, the bundled voice and a second voice
(the same model under another id, language and attribution), so voice selection is visible in
the cache: a Wyoming synthesis is the entry a `/tts` of the same text and voice finds, and the
reverse. A second server has tight limits (one synthesis at a time, a small request bucket, only
two loopback addresses allowed) for the busy, rate-limit and network tests; the drain test runs
the gunicorn command with two workers sharing the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from wyoming.audio import AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from server.audio.pcm import parse_wav
from server.errors import UnknownVoice
from server.settings import WyomingSettings
from server.synthesis.catalog import VoiceInfo
from server.synthesis.files import bundled_voice
from server.wyoming.discovery import SERVICE_TYPE, lock_path, take_lock
from server.wyoming.sentences import split_sentences
from server.wyoming.voices import describe, select_voice
from tests.conftest import ServerProcess, free_port, query, unique_text

DEFAULT_VOICE = "en_US-joe-medium"
OTHER_VOICE = "de_DE-test-medium"  # joe's model under another id, language and attribution
OTHER_ATTRIBUTION = {"name": "Test Maker", "url": "https://example.com/voice"}
AUDIO_END = ("audio-stop", "error")
READ_TIMEOUT_S = 60
IDLE_S = 2  # the module server's wyoming.idle_timeout_s


# -- servers ---------------------------------------------------------------------------------


def wyoming_env(**extra: str) -> dict[str, str]:
    return {"TTS__WYOMING__ENABLED": "true", "TTS__WYOMING__PORT": str(free_port()), **extra}


def wyoming_port(server: ServerProcess) -> int:
    return int(server.env["TTS__WYOMING__PORT"])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models_dir holding a second voice: joe's model (linked) with its own config."""
    directory = tmp_path_factory.mktemp("models")
    files = bundled_voice()
    assert files is not None
    (directory / f"{OTHER_VOICE}.onnx").symlink_to(files.model)
    config = json.loads(files.config.read_text(encoding="utf-8"))
    config["language"] = {"code": "de_DE"}
    config["attribution"] = OTHER_ATTRIBUTION
    (directory / f"{OTHER_VOICE}.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[ServerProcess]:
    env = wyoming_env(
        TTS__SYNTHESIS__MODELS_DIR=str(models),
        TTS__WYOMING__IDLE_TIMEOUT_S=str(IDLE_S),
        TTS__WYOMING__ZEROCONF="true",
        TTS__WYOMING__ZEROCONF_NAME=f"tts-test-{uuid.uuid4().hex[:12]}",
    )
    proc = ServerProcess(tmp_path_factory.mktemp("wyoming"), env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One synthesis at a time, two requests a client, and only 127.0.0.1 and 127.0.0.2 allowed."""
    env = wyoming_env(
        TTS__WYOMING__ALLOWED_NETWORKS="127.0.0.1/32,127.0.0.2/32",
        TTS__SYNTHESIS__MAX_ACTIVE_REQUESTS="1",
        TTS__LIMITS__ENABLED="true",
        TTS__LIMITS__REQUESTS_BURST="2",
        TTS__LIMITS__REQUESTS_PER_MINUTE="1",
    )
    proc = ServerProcess(tmp_path_factory.mktemp("tight"), env).start()
    yield proc
    proc.stop()


# -- talking Wyoming -------------------------------------------------------------------------


async def converse(
    port: int, events: Sequence[Event], until: Sequence[str] = AUDIO_END, host: str = "127.0.0.1"
) -> list[Event]:
    """Send `events`, then read until an event of a type in `until` (or the end of the stream)."""
    async with AsyncTcpClient(host, port, read_timeout=READ_TIMEOUT_S) as client:
        for event in events:
            await client.write_event(event)
        return await read_until(client, until)


async def read_until(client: AsyncTcpClient, until: Sequence[str]) -> list[Event]:
    received: list[Event] = []
    while True:
        event = await client.read_event()
        if event is None:
            return received
        received.append(event)
        if event.type in until:
            return received


def exchange(port: int, *events: Event, until: Sequence[str] = AUDIO_END) -> list[Event]:
    return asyncio.run(converse(port, events, until))


def types(events: Sequence[Event]) -> list[str]:
    return [event.type for event in events]


def pcm(events: Sequence[Event]) -> bytes:
    return b"".join(event.payload or b"" for event in events if event.type == "audio-chunk")


def spoken(events: Sequence[Event]) -> list[str]:
    """The event types with the audio chunks collapsed: what the listener hears, in order."""
    collapsed: list[str] = []
    for kind in types(events):
        if not (kind == "audio-chunk" and collapsed and collapsed[-1] == "audio-chunk"):
            collapsed.append(kind)
    return collapsed


def error_of(events: Sequence[Event]) -> Error:
    assert events and events[-1].type == "error", types(events)
    return Error.from_event(events[-1])


def http_pcm(server: ServerProcess, text: str, voice: str | None = None) -> tuple[bytes, dict]:
    """`/tts` of the text (with its answer) and the samples of its WAV file."""
    answer = server.get("/tts?" + query(text=text, voice=voice)).json()
    wav = server.get(f"/audio/{answer['hash']}.wav").body
    return bytes(parse_wav(wav)[1]), answer


def inferences(server: ServerProcess) -> float:
    return server.metric("tts_inferences_total")


# -- describe --------------------------------------------------------------------------------


def test_describe_lists_every_voice_in_one_streaming_tts_program(server):
    (answer,) = exchange(wyoming_port(server), Describe().event(), until=("info",))
    info = Info.from_event(answer)

    (program,) = info.tts
    voices = {voice.name: voice for voice in program.voices}
    assert program.supports_synthesize_streaming is True
    assert sorted(voices) == [OTHER_VOICE, DEFAULT_VOICE]
    assert voices[DEFAULT_VOICE].languages == ["en_US"]
    assert voices[OTHER_VOICE].languages == ["de_DE"]
    assert voices[DEFAULT_VOICE].speakers is None
    assert (voices[OTHER_VOICE].attribution.name, voices[OTHER_VOICE].attribution.url) == (
        OTHER_ATTRIBUTION["name"],
        OTHER_ATTRIBUTION["url"],
    )
    assert (voices[DEFAULT_VOICE].attribution.name, voices[DEFAULT_VOICE].attribution.url) == (
        "Piper",
        "https://github.com/OHF-Voice/piper1-gpl",
    )


def catalog_entry(voice_id: str, language: str, speakers: Sequence[str] = ()) -> VoiceInfo:
    return VoiceInfo(voice_id, language, 22050, list(speakers), max(1, len(speakers)), "CPUExecutionProvider")


def test_a_multi_speaker_voice_lists_its_speakers_by_name():
    voices = [catalog_entry("en_GB-many-medium", "en_GB", ["alice", "bob"]), catalog_entry("solo", "en_US")]
    (program,) = describe(voices, WyomingSettings()).tts

    assert [[s.name for s in v.speakers] if v.speakers else None for v in program.voices] == [
        ["alice", "bob"],
        None,
    ]


def test_a_language_selects_its_exact_voice_else_the_first_of_its_family():
    voices = [catalog_entry("a", "en_GB"), catalog_entry("b", "en_US"), catalog_entry("c", "de_DE")]

    assert select_voice(voices, "a", SynthesizeVoice(language="en-US")) == "b"
    assert select_voice(voices, "a", SynthesizeVoice(language="en")) == "a"
    assert select_voice(voices, "a", SynthesizeVoice(language="DE")) == "c"


def test_a_language_without_a_voice_is_an_unknown_voice():
    with pytest.raises(UnknownVoice) as raised:
        select_voice([catalog_entry("a", "en_US")], "a", SynthesizeVoice(language="fr"))

    assert raised.value.message == "no voice for language 'fr'; available: a"


# -- synthesize ------------------------------------------------------------------------------


def test_synthesize_sends_audio_start_chunks_and_stop_in_the_voice_format(server):
    events = exchange(wyoming_port(server), Synthesize(text=unique_text("Format")).event())

    assert spoken(events) == ["audio-start", "audio-chunk", "audio-stop"]
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    assert all(
        (e.data["rate"], e.data["width"], e.data["channels"]) == (22050, 2, 1)
        for e in events
        if e.type == "audio-chunk"
    )


def test_wyoming_audio_is_the_tts_file_of_the_same_text_byte_for_byte(server):
    """Golden: a Wyoming miss is the entry /tts then serves, with no second synthesis."""
    text = unique_text("Golden")
    events = exchange(wyoming_port(server), Synthesize(text=f"  {text}\n").event())
    before = inferences(server)
    samples, answer = http_pcm(server, text)

    assert pcm(events) == samples
    assert round(len(pcm(events)) / 2 / 22050, 3) == answer["duration_s"]  # /tts rounds to ms
    assert inferences(server) == before


def test_tts_audio_is_a_cache_hit_over_wyoming_with_no_inference(server):
    text = unique_text("Reverse")
    samples, answer = http_pcm(server, text)
    before = inferences(server)
    events = exchange(wyoming_port(server), Synthesize(text=text).event())

    assert answer["cache"] == "miss"
    assert pcm(events) == samples
    assert inferences(server) == before


def test_a_wyoming_hit_counts_in_the_shared_cache_metrics(server):
    text = unique_text("Counted")
    exchange(wyoming_port(server), Synthesize(text=text).event())
    misses = server.metric("tts_cache_misses_total")
    hits = server.metric("tts_cache_hits_total", 'tier="l1"')
    exchange(wyoming_port(server), Synthesize(text=text).event())

    assert server.metric("tts_cache_hits_total", 'tier="l1"') == hits + 1
    assert server.metric("tts_cache_misses_total") == misses


def test_a_repeated_synthesize_runs_no_inference(server):
    text = unique_text("Twice")
    before = inferences(server)
    first = exchange(wyoming_port(server), Synthesize(text=text).event())
    after_first = inferences(server)
    second = exchange(wyoming_port(server), Synthesize(text=text).event())

    assert after_first > before
    assert inferences(server) == after_first
    assert pcm(second) == pcm(first)


def test_voice_by_name_is_that_voice(server):
    text = unique_text("Named")
    events = exchange(
        wyoming_port(server), Synthesize(text=text, voice=SynthesizeVoice(name=OTHER_VOICE)).event()
    )
    before = inferences(server)
    samples, _ = http_pcm(server, text, voice=OTHER_VOICE)

    assert pcm(events) == samples
    assert inferences(server) == before


def test_voice_by_language_is_the_first_voice_of_that_language(server):
    text = unique_text("Language")
    events = exchange(
        wyoming_port(server), Synthesize(text=text, voice=SynthesizeVoice(language="de-DE")).event()
    )
    before = inferences(server)
    samples, _ = http_pcm(server, text, voice=OTHER_VOICE)

    assert pcm(events) == samples
    assert inferences(server) == before


def test_no_voice_is_the_default_voice(server):
    text = unique_text("Default")
    events = exchange(wyoming_port(server), Synthesize(text=text, voice=SynthesizeVoice()).event())
    before = inferences(server)
    samples, _ = http_pcm(server, text, voice=DEFAULT_VOICE)

    assert pcm(events) == samples
    assert inferences(server) == before


def test_unknown_voice_is_an_error_event_and_the_connection_goes_on(server):
    events = exchange(
        wyoming_port(server),
        Synthesize(text="Hello.", voice=SynthesizeVoice(name="nobody")).event(),
        Describe().event(),
        until=("info",),
    )

    assert types(events) == ["error", "info"]
    error = Error.from_event(events[0])
    assert error.code == "unknown_voice"
    assert error.text == f"unknown voice 'nobody'; available: {DEFAULT_VOICE}, {OTHER_VOICE}"  # bundled first


def test_empty_text_is_an_invalid_request_error(server):
    events = exchange(wyoming_port(server), Synthesize(text=" \n ").event())

    assert types(events) == ["error"]
    assert Error.from_event(events[0]).code == "invalid_request"


def test_eight_concurrent_clients_all_get_their_audio(server):
    texts = [unique_text(f"Client {n}") for n in range(8)]

    async def everyone() -> list[list[Event]]:
        port = wyoming_port(server)
        return await asyncio.gather(*(converse(port, [Synthesize(text=t).event()]) for t in texts))

    results = asyncio.run(everyone())

    assert [spoken(events) for events in results] == [["audio-start", "audio-chunk", "audio-stop"]] * 8
    assert all(len(pcm(events)) > 22050 for events in results)  # over half a second each


# -- streaming -------------------------------------------------------------------------------


def test_streamed_text_speaks_each_sentence_as_soon_as_it_is_complete(server):
    first = unique_text("Streaming")
    second = f"Then {unique_text('another')[:-1]} follows?"
    text = f"{first} {second}"
    cut = len(first)
    # Mid-word, mid-sentence, across the sentence end into the next word, then the rest.
    pieces = [text[:4], text[4 : cut - 3], text[cut - 3 : cut + 3], text[cut + 3 :]]

    async def talk() -> tuple[list[Event], list[Event]]:
        port = wyoming_port(server)
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
            await client.write_event(SynthesizeStart().event())
            for piece in pieces[:3]:
                await client.write_event(SynthesizeChunk(text=piece).event())
            early = await read_until(client, ("audio-chunk",))  # synthesize-stop not sent yet
            await client.write_event(SynthesizeChunk(text=pieces[3]).event())
            await client.write_event(Synthesize(text=text).event())  # Home Assistant's copy: ignored
            await client.write_event(SynthesizeStop().event())
            return early, await read_until(client, ("synthesize-stopped", "error"))

    early, late = asyncio.run(talk())
    before = inferences(server)
    first_pcm, _ = http_pcm(server, first)
    second_pcm, _ = http_pcm(server, second)

    assert types(early) == ["audio-start", "audio-chunk"]
    assert spoken(late) == ["audio-chunk", "audio-stop", "synthesize-stopped"]
    assert pcm(early + late) == first_pcm + second_pcm  # each sentence its own /tts entry, in order
    assert inferences(server) == before


def test_a_stream_with_no_text_still_ends_with_audio_stop_and_stopped(server):
    events = exchange(
        wyoming_port(server),
        SynthesizeStart().event(),
        SynthesizeChunk(text="  ").event(),
        SynthesizeStop().event(),
        until=("synthesize-stopped", "error"),
    )

    assert types(events) == ["audio-start", "audio-stop", "synthesize-stopped"]


@pytest.mark.parametrize(
    ("text", "complete", "rest"),
    [
        ("Hello world. How a", ["Hello world."], "How a"),
        ("Hello world. ", [], "Hello world. "),
        ('He said "hi." Then e.g. this! And', ['He said "hi."', "Then e.g. this!"], "And"),
        ("A list\n\nand more", ["A list"], "and more"),
        ("Dr. Smith came. He", ["Dr. Smith came."], "He"),
        ("It is 3.", [], "It is 3."),
        ("It is 3.14 today. So", ["It is 3.14 today."], "So"),
        ("  no end yet", [], "no end yet"),
    ],
)
def test_sentences_complete_only_once_the_next_one_starts(text, complete, rest):
    # The same segmenter as /tts: abbreviations, initials and decimals end no sentence.
    assert split_sentences(text, "en-us") == (complete, rest)


# -- robustness ------------------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes and read everything until the server closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        with contextlib.suppress(ConnectionError):  # the server may close before it all went out
            writer.write(data)
            await writer.drain()
            writer.write_eof()  # nothing more comes: an event cut short is cut short for good
        try:
            return await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)
        except ConnectionResetError:
            return b""  # closed with our unread bytes still in its buffer: a reset, not a FIN
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def bad_input_closes_only_its_connection(server: ServerProcess, data: bytes) -> tuple[bytes, list[str]]:
    async def both() -> tuple[bytes, list[str]]:
        port = wyoming_port(server)
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as bystander:
            answer = await raw_exchange(port, data)
            await bystander.write_event(Describe().event())
            return answer, types(await read_until(bystander, ("info",)))

    return asyncio.run(both())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"this is not json\n", id="garbage"),
        pytest.param(b'["a list"]\n', id="not-an-object"),
        pytest.param(b'{"data": {}}\n', id="no-type"),
        pytest.param(b'{"type": "synthesize", "data_length": 1000000000}\n', id="huge-data-length"),
        pytest.param(b'{"type": "synthesize", "payload_length": 1000000000}\n', id="huge-payload-length"),
        pytest.param(b'{"type": "synthesize", "data_length": "ten"}\n', id="length-not-a-number"),
        pytest.param(b'{"type": "' + b"x" * 100_000, id="endless-header"),
        pytest.param(b'{"type": "synthesize", "data_length": 10}\n{"te', id="cut-off-data"),
    ],
)
def test_malformed_input_closes_only_that_connection(server, data):
    answer, bystander = bad_input_closes_only_its_connection(server, data)

    assert answer == b""
    assert bystander == ["info"]


def test_unknown_event_type_gets_an_error_and_closes_only_that_connection(server):
    answer, bystander = bad_input_closes_only_its_connection(server, b'{"type": "make-coffee"}\n')
    header = json.loads(answer.split(b"\n")[0])

    assert header["type"] == "error"
    assert json.loads(answer.split(b"\n", 1)[1])["code"] == "unsupported_event"
    assert bystander == ["info"]


def test_a_client_leaving_mid_synthesis_stops_it(server):
    text = " ".join([unique_text("Leaving"), *(f"Then line {i} follows here." for i in range(40))])

    async def leave() -> None:
        async with AsyncTcpClient("127.0.0.1", wyoming_port(server), read_timeout=READ_TIMEOUT_S) as client:
            await client.write_event(Synthesize(text=text).event())
            await read_until(client, ("audio-chunk",))

    before = inferences(server)
    asyncio.run(leave())
    time.sleep(1.0)
    after_leaving = inferences(server)
    time.sleep(1.0)

    assert inferences(server) == after_leaving  # nothing synthesizes for the departed client
    assert after_leaving - before < 40  # far fewer windows than the 41 sentences need


def test_a_connection_with_nothing_to_do_is_closed_after_the_idle_timeout(server):
    async def silent() -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", wyoming_port(server))
        started = time.monotonic()
        try:
            writer.write(b'{"type": "desc')  # a header that never ends keeps nobody busy
            return await asyncio.wait_for(reader.read(), READ_TIMEOUT_S), time.monotonic() - started
        finally:
            writer.close()
            await writer.wait_closed()

    answer, waited = asyncio.run(silent())

    assert answer == b""
    # The server's clock starts at accept, a moment before ours; the upper bound leaves room for a
    # loaded machine, far below the READ_TIMEOUT_S a never-closed connection would take.
    assert IDLE_S - 0.5 <= waited < IDLE_S + 20


def test_each_connection_logs_with_its_own_request_id_and_never_the_text(server):
    text = unique_text("Logged secret")
    exchange(wyoming_port(server), Synthesize(text=text).event())
    entries = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    synthesized = [e for e in entries if e["message"].startswith("wyoming synthesize")]

    assert synthesized and all(len(e["request_id"]) == 32 for e in synthesized)
    assert "Logged secret" not in server.logs()


def test_events_are_counted_by_type_and_outcome(server):
    port = wyoming_port(server)
    before = server.metric("tts_wyoming_events_total", 'outcome="ok",type="describe"')
    exchange(port, Describe().event(), until=("info",))

    assert server.metric("tts_wyoming_events_total", 'outcome="ok",type="describe"') == before + 1


# -- limits and access -----------------------------------------------------------------------


def test_a_full_queue_answers_busy_with_the_retry_delay(tight):
    long_text = " ".join([unique_text("Busy"), *(f"Then line {i} follows here." for i in range(30))])

    async def crowd() -> list[Event]:
        port = wyoming_port(tight)
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as first:
            await first.write_event(Synthesize(text=long_text).event())
            await read_until(first, ("audio-chunk",))  # the one synthesis slot is taken
            return await converse(port, [Synthesize(text=unique_text("Second")).event()])

    error = error_of(asyncio.run(crowd()))

    assert error.code == "busy"
    assert error.text == "the server is busy; retry shortly (retry after 1 s)"


def test_the_per_address_request_limit_applies(tight):
    async def from_second_address() -> list[Event]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", wyoming_port(tight), local_addr=("127.0.0.2", 0)
        )
        received: list[Event] = []
        try:
            for _ in range(3):
                await async_write_event(Synthesize(text="Limits apply here.").event(), writer)
                while (event := await asyncio.wait_for(async_read_event(reader), READ_TIMEOUT_S)) is not None:
                    received.append(event)
                    if event.type in AUDIO_END:
                        break
        finally:
            writer.close()
            await writer.wait_closed()
        return received

    events = asyncio.run(from_second_address())

    assert spoken(events) == ["audio-start", "audio-chunk", "audio-stop"] * 2 + ["error"]
    assert error_of(events).code == "rate_limited"
    assert error_of(events).text.startswith("too many requests; slow down (retry after ")


def test_a_peer_outside_allowed_networks_is_disconnected_at_once(tight):
    async def from_outside() -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", wyoming_port(tight), local_addr=("127.0.0.3", 0)
        )
        try:
            with contextlib.suppress(ConnectionError):
                await async_write_event(Describe().event(), writer)
            try:
                return await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)
            except ConnectionResetError:
                # Closed with our event still unread, so the kernel resets the connection
                # instead of ending it: as much a disconnection, with nothing sent.
                return b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    assert asyncio.run(from_outside()) == b""
    assert tight.metric("tts_wyoming_events_total", 'outcome="refused",type="connection"') == 1


# -- process model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The gunicorn command with two workers sharing the Wyoming port, announced over zeroconf.

    Its tests read its logs, which outlive it, so the drain test may stop it in any order.
    """
    env = wyoming_env(
        TTS__SERVER__WORKERS="2",
        TTS__WYOMING__ZEROCONF="true",
        TTS__WYOMING__ZEROCONF_NAME=f"tts-test-{uuid.uuid4().hex[:12]}",
    )
    proc = ServerProcess(tmp_path_factory.mktemp("workers"), env, command="gunicorn").start()
    yield proc
    proc.stop()


def logged(server: ServerProcess, message: str) -> list[dict]:
    """The server's JSON log lines whose message starts with `message`."""
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [entry for entry in lines if entry["message"].startswith(message)]


def wait_for_log(server: ServerProcess, message: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while len(found := logged(server, message)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_every_worker_listens_on_the_wyoming_port(workers):
    listening = wait_for_log(workers, "wyoming listening", 2)

    assert len({entry["pid"] for entry in listening}) == 2
    assert logged(workers, "wyoming cannot listen") == []


def test_one_worker_announces_the_server_over_zeroconf(workers):
    wait_for_log(workers, "wyoming announced", 1)
    time.sleep(2)  # the other worker tried at the same start-up: it must have lost the lock

    assert len(logged(workers, "wyoming announced")) == 1


def test_sigterm_lets_open_wyoming_syntheses_finish(workers):
    text = " ".join([unique_text("Draining"), *(f"Then line {i} follows here." for i in range(12))])

    async def drained() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", wyoming_port(workers), read_timeout=READ_TIMEOUT_S) as client:
            await client.write_event(Synthesize(text=text).event())
            early = await read_until(client, ("audio-chunk",))
            assert workers.proc is not None
            os.kill(workers.proc.pid, signal.SIGTERM)  # the master, as Kubernetes does
            return early + await read_until(client, AUDIO_END)

    events = asyncio.run(drained())
    assert workers.proc is not None
    workers.proc.wait(60)

    assert spoken(events) == ["audio-start", "audio-chunk", "audio-stop"]
    assert len(pcm(events)) > 22050 * 2 * 5  # over five seconds of audio arrived after the signal
    assert workers.proc.returncode == 0


# -- discovery -------------------------------------------------------------------------------


def test_zeroconf_announces_the_wyoming_port_on_the_lan(server):
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    name = f"{server.env['TTS__WYOMING__ZEROCONF_NAME']}.{SERVICE_TYPE}"

    async def look() -> AsyncServiceInfo | None:
        zeroconf = AsyncZeroconf()
        try:
            return await zeroconf.async_get_service_info(SERVICE_TYPE, name, timeout=10_000)
        finally:
            await zeroconf.async_close()

    info = asyncio.run(look())

    assert info is not None
    assert info.port == wyoming_port(server)
    assert info.parsed_addresses() == ["127.0.0.1"]  # wyoming.host: loopback, as configured


def test_only_one_worker_of_a_server_holds_the_announcement(tmp_path):
    path = lock_path(free_port())
    first = take_lock(path)
    try:
        second = take_lock(path)  # another open of the file: what another worker would do
        assert first is not None
        assert second is None
    finally:
        if first is not None:
            os.close(first)
    third = take_lock(path)  # the holder is gone: the next try takes over
    assert third is not None
    os.close(third)
    path.unlink()
