"""The voices this worker serves: discovered from config, `models/` and the bundled package.

Loading and warm-up happen once per worker process, after the fork, in a thread so the IOLoop
stays up for `/healthz`; readiness turns true only when every voice has synthesized once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from loguru import logger

from server.audio.loudness import LoudnessMeter, gain_to
from server.errors import UnknownVoice
from server.memory import trim_heap
from server.settings import Settings
from server.synthesis.files import bundled_voice, discover, voice_file_problem  # noqa: F401 (bundled_voice: re-exported)
from server.synthesis.voice import CUDA, RuntimeOptions, Voice

# Batching pays on a GPU, which runs a batch's rows in parallel; on the CPU the padded rows
# measured slower than the same chunks one by one, so `batch_max_size: 0` means this on CUDA only.
AUTO_CUDA_BATCH = 32
# A batched row may differ from the row alone only by rounding: about 1e-4 of its level on the CPU,
# more where the GPU picks other kernels for another batch shape (TF32 convolutions). A wrong trim
# changes the length, and padding leaking into a row changes it by tens of percent.
BATCH_CHECK_TOLERANCE = 0.02
# On CUDA, kernels (and cuDNN's algorithm choice) are picked per input shape on first use, so the
# warm-up covers the lengths requests bring: a word, a clause, a long sentence (in phonemes of the
# fixed warm-up sentence, which needs no phonemizer).
CUDA_WARMUP_LENGTHS = (6, 40, None)
WARMUP_LENGTHS = (6,)


@dataclass(frozen=True)
class VoiceInfo:
    id: str
    language: str
    sample_rate: int
    speakers: list[str]
    num_speakers: int
    provider: str
    attribution: tuple[str, str] | None = None  # (name, url) where the voice's config has one


class VoiceCatalog:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._voices: dict[str, Voice] = {}
        self.ready = False
        self.problem: str | None = None

    @property
    def default_voice(self) -> str:
        return self._settings.synthesis.default_voice

    def load(self) -> None:
        """Blocking: load and warm every voice; sets `ready` or `problem`."""
        synthesis = self._settings.synthesis
        options = RuntimeOptions(
            provider=synthesis.provider,
            intra_op_threads=self._settings.intra_op_threads(),
            cuda_device_id=synthesis.cuda_device_id,
            cuda_mem_limit_bytes=synthesis.cuda_mem_limit_bytes,
            cudnn_conv_algo_search=synthesis.cudnn_conv_algo_search,
            cuda_copy_in_default_stream=synthesis.cuda_copy_in_default_stream,
            cpu_mem_arena=synthesis.cpu_mem_arena,
            mem_pattern=synthesis.mem_pattern,
            windowed=synthesis.windowed,
            first_window_frames=synthesis.first_window_frames,
            window_frames=synthesis.window_frames,
            flow_margin_frames=synthesis.flow_margin_frames,
            decoder_margin_frames=synthesis.decoder_margin_frames,
        )
        files = discover(self._settings)
        for voice_files in files:
            # A broken extra voice must not make the good ones unusable; the default voice is
            # checked before the workers start (check_voices), so it fails there, not here.
            problem = voice_file_problem(voice_files)
            if problem is not None:
                logger.error("voice {} skipped: {}", voice_files.voice_id, problem)
                continue
            meter = None if synthesis.gain else LoudnessMeter()  # its imports overlap the loading
            try:
                voice = Voice.load(voice_files, options)
            except Exception as exc:
                if meter is not None:
                    meter.close()
                if voice_files.voice_id == self.default_voice:
                    raise
                logger.error(
                    "voice {} skipped: cannot load {}: {}", voice_files.voice_id, voice_files.model, exc
                )
                continue
            self._warm_up(voice)
            voice.gain = self._gain(voice, meter)
            voice.batch_limit = self._batch_limit(voice)
            self._voices[voice.voice_id] = voice
        trim_heap()  # loading freed the model protos and the split parts' bytes: about 65 MiB
        if self.default_voice not in self._voices:
            self.problem = f"default voice {self.default_voice!r} not found"
        elif synthesis.require_cuda and any(v.provider != CUDA for v in self._voices.values()):
            self.problem = "synthesis.require_cuda is set but a session runs on the CPU"
        if self.problem:
            logger.error("not ready: {}", self.problem)
            return
        self.ready = True
        logger.info("ready with voices {}", ", ".join(self._voices))

    @staticmethod
    def _warm_up(voice: Voice) -> None:
        for count in CUDA_WARMUP_LENGTHS if voice.provider == CUDA else WARMUP_LENGTHS:
            voice.infer(voice.warmup_ids(count), 1.0, voice.speaker_id(None))

    def _gain(self, voice: Voice, meter: LoudnessMeter | None) -> float:
        """`synthesis.gain` when set; else the gain that brings the voice to `loudness_lufs`."""
        synthesis = self._settings.synthesis
        if meter is None:  # synthesis.gain is set
            return synthesis.gain
        lufs = measured_lufs(voice, meter)
        gain = gain_to(synthesis.loudness_lufs, lufs)
        logger.info(
            "{}: {:.1f} LUFS, gain {:.3f} to {} LUFS", voice.voice_id, lufs, gain, synthesis.loudness_lufs
        )
        return gain

    def _batch_limit(self, voice: Voice) -> int:
        limit = self._settings.synthesis.batch_max_size or (AUTO_CUDA_BATCH if voice.provider == CUDA else 1)
        if limit <= 1 or not voice.batchable:
            return 1
        if not batch_matches_alone(voice):
            logger.warning("{}: batched rows differ from single runs, so batching is off", voice.voice_id)
            return 1
        logger.info("{}: batches of up to {} chunks", voice.voice_id, limit)
        return limit

    def get(self, voice_id: str) -> Voice:
        voice = self._voices.get(voice_id)
        if voice is None:
            raise UnknownVoice(f"unknown voice {voice_id!r}; available: {', '.join(self._voices)}")
        return voice

    def voices(self) -> list[Voice]:
        return list(self._voices.values())

    def infos(self) -> list[VoiceInfo]:
        return [
            VoiceInfo(
                v.voice_id,
                v.language,
                v.sample_rate,
                sorted(v.speakers, key=v.speakers.get),
                v.num_speakers,
                v.provider,
                v.attribution,
            )
            for v in self._voices.values()
        ]


def batch_matches_alone(voice: Voice) -> bool:
    """With the noise off, a batch of warm-up sentences must give each one's own audio, trimmed."""
    rows = [voice.warmup_ids(count) for count in CUDA_WARMUP_LENGTHS]
    speakers = [voice.speaker_id(None)] * len(rows)
    alone = [voice.infer_batch([row], 1.0, speakers[:1], noise_scale=0, noise_w=0)[0] for row in rows]
    batched = voice.infer_batch(rows, 1.0, speakers, noise_scale=0, noise_w=0)
    return all(
        a.shape == b.shape and _rms(a - b) <= BATCH_CHECK_TOLERANCE * _rms(a)
        for a, b in zip(alone, batched, strict=True)
    )


def measured_lufs(voice: Voice, meter: LoudnessMeter | None = None) -> float:
    """Loudness of the fixed warm-up sentence with the noise off: the same in every process."""
    (samples,) = voice.infer_batch(
        [voice.warmup_ids()], 1.0, [voice.speaker_id(None)], noise_scale=0, noise_w=0
    )
    return (meter or LoudnessMeter()).measure(samples, voice.sample_rate)


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
