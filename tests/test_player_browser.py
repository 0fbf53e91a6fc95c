"""The player at `/`: a self-contained page under a strict CSP that, in real headless Chromium,
schedules streamed PCM into Web Audio while the response is still arriving."""

from __future__ import annotations

import base64
import hashlib
import re
from array import array
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.conftest import ServerProcess, multi_speaker_voice, query, unique_text

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STREAM_TIMEOUT_MS = 120_000  # a cold synthesis on a busy 2-core machine


def inline_hash(html: str, tag: str) -> str:
    (source,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def multi_sentence_text() -> str:
    return (
        f"{unique_text('The player streams')} Each sentence is synthesized on its own. "
        "The browser schedules every chunk as soon as it arrives. "
        "So the first words play while the last ones are still being spoken."
    )


def wait_for_stream_end(page: Page) -> None:
    page.wait_for_function(
        "() => ['done', 'error'].includes(window.playerStats.state)", timeout=STREAM_TIMEOUT_MS
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def console_errors() -> list[str]:
    return []


@pytest.fixture
def page(browser: Browser, server: ServerProcess, console_errors: list[str]) -> Iterator[Page]:
    """The player, loaded, with its voice picker filled; console errors (CSP ones too) collected."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()

    def record(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    page.on("console", record)
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.goto(f"{server.base}/")
    page.wait_for_function("() => document.getElementById('voice').options.length > 0")
    yield page
    context.close()


def test_player_page_is_html_with_strict_csp_that_admits_only_its_inline_code(server):
    resp = server.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    html = resp.body.decode()
    assert resp.headers["Content-Security-Policy"] == (
        "default-src 'none'; "
        f"script-src {inline_hash(html, 'script')}; "
        f"style-src {inline_hash(html, 'style')}; "
        "connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@pytest.mark.browser
def test_player_schedules_audio_before_the_stream_ends_and_all_of_it(server, page, console_errors):
    text = multi_sentence_text()
    page.fill("#text", text)
    page.click("#play")
    wait_for_stream_end(page)
    stats = page.evaluate("window.playerStats")

    reference = server.get("/tts/stream?" + query(text=text))
    assert reference.status == 200
    assert stats["state"] == "done", stats["error"]
    assert stats["contextState"] == "running"
    assert stats["sampleRate"] == int(reference.headers["X-Audio-Sample-Rate"])
    assert stats["bytesReceived"] == len(reference.body)
    assert stats["samplesScheduled"] == len(reference.body) // 2
    assert stats["sampleSum"] == sum(array("h", reference.body))
    # A cold multi-sentence stream arrives in several reads; the first was already scheduled
    # when the last bytes came in, so playback began before the response finished.
    assert stats["chunks"] >= 2
    assert stats["firstScheduledAt"] < stats["lastChunkAt"] <= stats["streamDoneAt"]
    assert console_errors == []


@pytest.mark.browser
def test_the_highlight_moves_word_by_word_in_step_with_playback(server, page, console_errors):
    text = multi_sentence_text()
    page.fill("#text", text)
    page.click("#play")
    wait_for_stream_end(page)
    # Playback runs in real time after the stream ends: wait until the last word is lit.
    page.wait_for_function(
        "() => { const s = window.playerStats; const last = s.highlights[s.highlights.length - 1];"
        " return s.words.length > 0 && last && last.index === s.words.length - 1; }",
        timeout=STREAM_TIMEOUT_MS,
    )
    stats = page.evaluate("window.playerStats")
    words, highlights = stats["words"], stats["highlights"]
    assert [w["word"] for w in words] == text.split()
    assert page.eval_on_selector_all("#transcript span", "spans => spans.map((s) => s.textContent)") == [
        w["word"] for w in words
    ]
    indexes = [h["index"] for h in highlights]
    assert indexes == sorted(set(indexes))  # forward only, never back or twice
    assert len(indexes) >= 0.8 * len(words)  # a word is skipped only when shorter than a tick
    for highlight in highlights:
        word = words[highlight["index"]]
        # Lit once its start has been played, and no later than a tick and a buffer after it.
        assert word["start_s"] <= highlight["played"] < word["start_s"] + 0.15, (word, highlight)
    assert console_errors == []


@pytest.mark.browser
def test_event_parser_joins_an_event_split_across_network_chunks(page):
    parsed = page.evaluate(
        """() => {
            const parser = window.ttsPlayer.createEventParser();
            const bytes = (text) => new TextEncoder().encode(text);
            const first = parser.push(bytes('event: words\\ndata: {"words"'));
            const second = parser.push(bytes(':[]}\\n\\nevent: done\\ndata: {"hash":"h"}\\n\\n'));
            return { first, second };
        }"""
    )
    assert parsed == {
        "first": [],
        "second": [{"name": "words", "data": {"words": []}}, {"name": "done", "data": {"hash": "h"}}],
    }


@pytest.mark.browser
def test_pcm_decoder_joins_a_sample_split_across_network_chunks(page):
    decoded = page.evaluate(
        """() => {
            const decoder = window.ttsPlayer.createPcmDecoder();
            const parts = [[0x01], [0x80, 0xff], [0x7f, 0x00], [0x00]];
            const decode = (part) => Array.from(decoder.push(new Uint8Array(part)), (x) => x * 32768);
            const samples = parts.map(decode);
            return { samples, pending: decoder.pendingBytes };
        }"""
    )
    assert decoded == {"samples": [[], [-32767], [32767], [0]], "pending": 0}


@pytest.mark.browser
def test_voice_picker_lists_the_servers_voices_with_the_default_selected(server, page):
    voices = server.get("/voices").json()
    options = page.eval_on_selector_all("#voice option", "options => options.map((o) => o.value)")
    assert options == [voice["id"] for voice in voices["voices"]]
    assert page.input_value("#voice") == voices["default"]


@pytest.mark.browser
def test_a_multi_speaker_voice_offers_its_speakers_by_name(browser, make_server, tmp_path):
    voice = multi_speaker_voice(tmp_path / "models")
    proc = make_server({"TTS__SYNTHESIS__MODELS_DIR": str(tmp_path / "models")})
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{proc.base}/")
        page.wait_for_function("() => document.getElementById('voice').options.length > 1")
        assert page.is_hidden("#speaker-field")  # the default voice has one speaker
        page.select_option("#voice", voice)
        speakers = page.eval_on_selector_all("#speaker option", "options => options.map((o) => o.text)")
        assert speakers == ["alice", "bob"]
        assert page.is_visible("#speaker-field")
    finally:
        context.close()


@pytest.mark.browser
def test_speed_picker_offers_the_presets_and_a_custom_rate(page):
    options = page.eval_on_selector_all("#speed option", "options => options.map((o) => o.value)")
    assert options == ["very_slow", "slow", "normal", "fast", "very_fast", "custom"]
    assert page.input_value("#speed") == "normal"
    assert page.is_hidden("#rate")
    page.select_option("#speed", "custom")
    assert page.is_visible("#rate")


@pytest.mark.browser
def test_custom_rate_is_sent_to_the_stream_as_a_number(page):
    text = unique_text("Custom rate")
    page.fill("#text", text)
    page.select_option("#speed", "custom")
    page.fill("#rate", "1.5")
    with page.expect_request("**/tts/stream?*") as sent:
        page.click("#play")
    assert parse_qs(urlsplit(sent.value.url).query) == {
        "text": [text],
        "voice": [page.input_value("#voice")],
        "speed": ["1.5"],
        "events": ["sse"],
    }
    wait_for_stream_end(page)
    assert page.evaluate("window.playerStats.state") == "done"


@pytest.mark.browser
def test_stream_error_shows_the_servers_message(page):
    page.fill("#text", "   ")
    page.click("#play")
    page.wait_for_function("() => window.playerStats.state === 'error'", timeout=STREAM_TIMEOUT_MS)
    assert page.evaluate("window.playerStats.error") == "text is empty"
    assert page.text_content("#status") == "Could not play: text is empty"


@pytest.mark.browser
def test_download_button_offers_the_wav_that_tts_stored(server, page, console_errors):
    text = unique_text("Download me")
    page.fill("#text", text)
    with page.expect_download(timeout=STREAM_TIMEOUT_MS) as started:
        page.click("#download")
    download = started.value
    key = server.get("/tts?" + query(text=text)).json()["hash"]
    assert download.suggested_filename == f"speech-{key[:12]}.wav"
    assert Path(download.path()).read_bytes() == server.get(f"/audio/{key}.wav").body
    assert console_errors == []


@pytest.mark.browser
def test_download_offers_every_format_and_saves_the_chosen_one(server, page, console_errors):
    options = page.eval_on_selector_all("#download-format option", "os => os.map(o => o.value)")
    assert options == ["wav", "mp3", "opus", "aac", "flac", "pcm"]
    text = unique_text("Download an mp3")
    page.fill("#text", text)
    page.select_option("#download-format", "mp3")
    with page.expect_download(timeout=STREAM_TIMEOUT_MS) as started:
        page.click("#download")
    download = started.value
    key = server.get("/tts?" + query(text=text)).json()["hash"]
    assert download.suggested_filename == f"speech-{key[:12]}.mp3"
    assert Path(download.path()).read_bytes() == server.get(f"/audio/{key}.mp3").body
    assert console_errors == []
