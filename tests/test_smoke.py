"""The smallest end-to-end spec: a running server speaks and serves the file it promised."""

from tests.conftest import query, unique_text


def test_tts_returns_url_whose_wav_is_served(server):
    resp = server.get("/tts?" + query(text=unique_text("Hello world")))
    assert resp.status == 200
    body = resp.json()
    assert body["cache"] == "miss"
    path = body["audio_url"].removeprefix(server.base)
    audio = server.get(path)
    assert audio.status == 200
    assert audio.headers["Content-Type"] == "audio/wav"
    assert audio.body[:4] == b"RIFF"
