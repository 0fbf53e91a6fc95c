"""A loaded Piper voice: its config and onnxruntime sessions (phonemes to ids to audio).

`Voice.load()` is blocking and runs once per worker process, after the fork. The methods that
phonemize and run inference are blocking too: the scheduler calls them from executor threads
(onnxruntime releases the GIL), never from the IOLoop.

Where the graph splits (see `graph.split`), the voice runs as three parts (`windows`): an
encoder once per sentence, then the flow and decoder window by window, with margins measured at
load. Otherwise it keeps one session of the stock graph with each row's length as an extra
output, and synthesizes whole sentences. Phonemization lives in `phonemize` and is imported only
when text is phonemized, so the engine runs from phoneme ids alone where espeak is missing.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
from loguru import logger

from server.synthesis.files import VoiceFiles
from server.synthesis.graph import SPEAKER_INPUT, Parts, find_cuts, split, with_lengths_output
from server.synthesis.windows import Encoded, WindowedEngine, find_margins

BOS: Final = "^"
EOS: Final = "$"
PAD: Final = "_"
CUDA: Final = "CUDAExecutionProvider"
CPU: Final = "CPUExecutionProvider"
# A fixed English sentence in espeak's IPA, one phoneme a character as Piper's voices take them.
# Warm-up, the batch check and the window-margin search map it through the voice's own
# `phoneme_id_map` (phonemes a voice lacks are skipped), so they need no phonemizer.
WARMUP_PHONEMES: Final = (
    "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˈoʊvɚ ðə lˈeɪzi dˈɑːɡ, ænd ðɛn ɪt ɹˈʌnz fˈɑːɹ ɐwˈeɪ ˈɪntʊ ðə fˈɔːɹɪst."
)


@dataclass(frozen=True)
class RuntimeOptions:
    """How to build the onnxruntime session (from `Settings.synthesis`)."""

    provider: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 1
    windowed: bool = True  # split the graph and synthesize in windows where it splits
    first_window_frames: int = 16
    window_frames: int = 96
    flow_margin_frames: int = 0  # 0: measured at load
    decoder_margin_frames: int = 0
    cuda_device_id: int = 0
    cuda_mem_limit_bytes: int = 0  # 0: no cap
    cudnn_conv_algo_search: str = "HEURISTIC"
    cuda_copy_in_default_stream: bool = True
    # onnxruntime's CPU arena keeps the peak of every call (the warm-up's whole sentences) for
    # the process's life; off, each call's buffers go back to the allocator (see README, memory).
    cpu_mem_arena: bool = False
    mem_pattern: bool = False  # CPU sessions only

    def cuda_provider_options(self) -> dict[str, str]:
        """CUDAExecutionProvider options, as onnxruntime documents them (string values)."""
        options = {
            "device_id": str(self.cuda_device_id),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "do_copy_in_default_stream": "1" if self.cuda_copy_in_default_stream else "0",
            "arena_extend_strategy": "kSameAsRequested",
        }
        if self.cuda_mem_limit_bytes:
            options["gpu_mem_limit"] = str(self.cuda_mem_limit_bytes)
        return options


@dataclass
class Voice:
    """A Piper voice ready to synthesize."""

    voice_id: str
    sample_rate: int
    language: str
    speakers: dict[str, int]
    num_speakers: int
    noise_scale: float
    noise_w: float
    phoneme_type: str
    espeak_voice: str
    phoneme_id_map: dict[str, list[int]]
    digest: str  # sha256 of the model file: a new model never serves old cached audio
    provider: str  # the provider the session really runs on
    length_scale: float = 1.0  # the config's delivery rate; a request's speed multiplies it
    session: ort.InferenceSession | None = field(default=None, repr=False)  # the stock graph
    windows: WindowedEngine | None = field(default=None, repr=False)  # or its three parts
    lengths_output: str | None = None  # the stock graph's output with each row's frame count
    batch_limit: int = 1  # most chunks per inference call; the catalog sets it after a check
    gain: float = 1.0  # brings the voice to the loudness target; the catalog measures it at load
    unknown_phonemes: int = 0
    attribution: tuple[str, str] | None = None  # (name, url) from the .onnx.json, where it has one

    @classmethod
    def load(cls, files: VoiceFiles, options: RuntimeOptions) -> Voice:
        config = json.loads(files.config.read_text(encoding="utf-8"))
        id_map = {str(k): list(v) for k, v in config["phoneme_id_map"].items()}
        windows = _windowed_engine(files, options, id_map) if options.windowed else None
        session, lengths_output = None, None
        if windows is None:
            model, lengths_output = with_lengths_output(files.model)
            session = _make_session(model, options)
            del model  # the session holds its own copy; this one is 60 MB
            if lengths_output is None:
                logger.warning("{}: unknown graph, so its sentences run one at a time", files.voice_id)
        provider = (session or windows.encoder).get_providers()[0]  # type: ignore[union-attr]
        inference = config.get("inference", {})
        language = config.get("language", {}).get("code") or config.get("espeak", {}).get("voice", "")
        voice = cls(
            voice_id=files.voice_id,
            sample_rate=int(config["audio"]["sample_rate"]),
            language=str(language),
            speakers={str(k): int(v) for k, v in (config.get("speaker_id_map") or {}).items()},
            num_speakers=int(config.get("num_speakers", 1)),
            noise_scale=float(inference.get("noise_scale", 0.667)),
            noise_w=float(inference.get("noise_w", 0.8)),
            phoneme_type=str(config.get("phoneme_type", "espeak")),
            espeak_voice=str(config.get("espeak", {}).get("voice", "en-us")),
            phoneme_id_map=id_map,
            digest=_file_digest(files.model),
            provider=provider,
            length_scale=float(inference.get("length_scale", 1.0)),
            session=session,
            windows=windows,
            lengths_output=lengths_output,
            attribution=_attribution(config),
        )
        logger.info(
            "voice {} loaded on {} ({} Hz, {} speakers)",
            voice.voice_id,
            provider,
            voice.sample_rate,
            voice.num_speakers,
        )
        return voice

    @property
    def batchable(self) -> bool:
        """Whether rows of different lengths can share one call (each row's length is known)."""
        return self.windows is not None or self.lengths_output is not None

    def phonemize(self, text: str) -> list[list[str]]:
        """Sentences of phonemes (espeak splits sentences; codepoint voices get one sentence)."""
        # Imported here, not at the top: the engine must run from ids where espeak is missing.
        from server.synthesis.phonemize import phonemize

        return phonemize(text, self.phoneme_type, self.espeak_voice)

    def warmup_ids(self, phonemes: int | None = None) -> list[int]:
        """Ids of the fixed warm-up sentence (its first `phonemes` phonemes), no espeak needed."""
        return self.phoneme_ids(list(WARMUP_PHONEMES[:phonemes]))

    def phoneme_ids(self, phonemes: Sequence[str]) -> list[int]:
        """Piper's mapping (piper1-gpl `phonemes_to_ids`): BOS, pad, each known phoneme followed
        by a pad, EOS; unknown ones skipped. The pad after BOS matters: without it sentence
        durations differ from Piper's by up to 9%."""
        id_map = self.phoneme_id_map
        ids = list(id_map[BOS]) + list(id_map[PAD])
        for phoneme in phonemes:
            mapped = id_map.get(phoneme)
            if mapped is None:
                self.unknown_phonemes += 1
                continue
            ids.extend(mapped)
            ids.extend(id_map[PAD])
        ids.extend(id_map[EOS])
        return ids

    def phoneme_frames(
        self, phonemes: Sequence[str], durations: Sequence[int]
    ) -> list[tuple[int, int] | None]:
        """Each phoneme's [first, end) frames in its utterance, its pad included (None: not in the
        voice, so not said), from the encoder's frames per id laid out as `phoneme_ids` lays them."""
        id_map = self.phoneme_id_map
        pad = len(id_map[PAD])
        position = len(id_map[BOS]) + pad
        frame = int(sum(durations[:position]))
        spans: list[tuple[int, int] | None] = []
        for phoneme in phonemes:
            mapped = id_map.get(phoneme)
            if mapped is None:
                spans.append(None)
                continue
            width = len(mapped) + pad
            length = int(sum(durations[position : position + width]))
            spans.append((frame, frame + length))
            frame += length
            position += width
        return spans

    def speaker_id(self, speaker: str | None) -> int | None:
        """Resolve a speaker name or number; None for single-speaker voices."""
        if self.num_speakers <= 1:
            return None
        if speaker is None or speaker == "":
            return 0
        if speaker in self.speakers:
            return self.speakers[speaker]
        if speaker.isdigit() and int(speaker) < self.num_speakers:
            return int(speaker)
        raise KeyError(speaker)

    def infer(self, ids: Sequence[int], length_scale: float, speaker_id: int | None) -> np.ndarray:
        """One inference call: float32 mono samples in about [-1, 1]."""
        return self.infer_batch([ids], length_scale, [speaker_id])[0]

    def infer_batch(
        self,
        rows: Sequence[Sequence[int]],
        length_scale: float,
        speaker_ids: Sequence[int | None],
        *,
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> list[np.ndarray]:
        """One inference call for several phoneme-id rows: each row's samples, trimmed to its length.

        Rows share the scales (Piper takes one `scales` tensor per call), so only chunks with the
        same speed may share a batch. Padding is masked inside the model, which is why a trimmed
        row equals the same row run alone (tests/test_batching.py checks it).
        """
        if len(rows) > 1 and not self.batchable:
            raise ValueError(f"voice {self.voice_id} cannot run batches")
        if self.windows is not None:
            return self.windows.whole(self.encode(rows, length_scale, speaker_ids, noise_scale, noise_w))
        assert self.session is not None
        longest = max(len(row) for row in rows)
        ids = np.full((len(rows), longest), self.phoneme_id_map[PAD][0], dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        inputs: dict[str, Any] = {
            "input": ids,
            "input_lengths": np.array([len(row) for row in rows], dtype=np.int64),
            "scales": np.array(
                [
                    self.noise_scale if noise_scale is None else noise_scale,
                    length_scale,
                    self.noise_w if noise_w is None else noise_w,
                ],
                dtype=np.float32,
            ),
        }
        if speaker_ids[0] is not None:
            inputs["sid"] = np.array(speaker_ids, dtype=np.int64)
        outputs = self.session.run(None, inputs)
        audio = outputs[0].reshape(len(rows), -1)
        if len(rows) == 1:
            return [audio[0]]
        frames = np.rint(outputs[1]).astype(np.int64).reshape(-1)
        hop, rest = divmod(audio.shape[1], int(frames.max()))
        if rest:
            raise RuntimeError(f"{self.voice_id}: output of {audio.shape[1]} samples is not whole frames")
        return [audio[index, : int(count) * hop] for index, count in enumerate(frames)]

    def encode(
        self,
        rows: Sequence[Sequence[int]],
        length_scale: float,
        speaker_ids: Sequence[int | None],
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> list[Encoded]:
        """The encoder part for several rows: each sentence's latents and frames per id."""
        assert self.windows is not None, "only a windowed voice encodes"
        scales = (
            self.noise_scale if noise_scale is None else noise_scale,
            length_scale,
            self.noise_w if noise_w is None else noise_w,
        )
        return self.windows.encode(rows, scales, speaker_ids)


def _windowed_engine(
    files: VoiceFiles, options: RuntimeOptions, id_map: dict[str, list[int]]
) -> WindowedEngine | None:
    """The voice's graph as three windowed parts with measured margins, or None (whole sentences)."""
    proto = onnx.load(str(files.model))
    cuts = find_cuts(proto.graph)
    if cuts is None:
        logger.warning(
            "{}: graph does not split into encoder, flow and decoder; whole sentences", files.voice_id
        )
        return None
    try:
        parts: Parts = split(proto, cuts)
    except Exception as exc:  # an export we do not know: whole-sentence synthesis still works
        logger.warning("{}: graph does not split ({}); whole sentences", files.voice_id, exc)
        return None
    del proto
    engine = WindowedEngine(parts, lambda model: _make_session(model, options), id_map[PAD][0])
    del parts
    ids = list(id_map[BOS]) + list(id_map[PAD])
    for phoneme in WARMUP_PHONEMES:
        if phoneme in id_map:
            ids += id_map[phoneme] + id_map[PAD]
    ids += id_map[EOS]
    speaker = 0 if SPEAKER_INPUT in [i.name for i in engine.encoder.get_inputs()] else None
    (encoded,) = engine.encode([ids], (0.0, 1.0, 0.0), [speaker])
    engine.calibrate(encoded)
    margins = find_margins(
        engine,
        encoded,
        options.first_window_frames,
        options.window_frames,
        files.voice_id,
        (options.flow_margin_frames, options.decoder_margin_frames),
    )
    return None if margins is None else engine


def _attribution(config: dict[str, Any]) -> tuple[str, str] | None:
    """Who made the voice, as `{"attribution": {"name", "url"}}` in its config (Wyoming shows it)."""
    given = config.get("attribution")
    if isinstance(given, dict) and isinstance(given.get("name"), str) and given["name"]:
        return given["name"], str(given.get("url") or "")
    return None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _make_session(model: bytes, options: RuntimeOptions) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = 1
    session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.enable_cpu_mem_arena = options.cpu_mem_arena
    # Idle spinning threads would burn the cores that other workers' inference needs.
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers: list[Any] = [CPU]
    if options.provider in ("auto", "cuda"):
        if hasattr(ort, "preload_dlls"):
            try:
                # onnxruntime-gpu finds the CUDA/cuDNN libraries of the nvidia-* wheels this way,
                # without LD_LIBRARY_PATH; absent libraries only make CUDA unavailable below.
                ort.preload_dlls()
            except Exception as exc:
                logger.warning("could not preload CUDA libraries: {}", exc)
        if CUDA in ort.get_available_providers():
            providers = [(CUDA, options.cuda_provider_options()), CPU]
        elif options.provider == "cuda":
            logger.warning("CUDA requested but onnxruntime offers only {}", ort.get_available_providers())
    if providers != [CPU]:
        return ort.InferenceSession(model, sess_options=session_options, providers=providers)
    # Measured on the CPU only; a CUDA session keeps onnxruntime's default until it is measured
    # on a GPU.
    session_options.enable_mem_pattern = options.mem_pattern
    # onnxruntime's Python session keeps the bytes it was made from for its whole life (to remake
    # itself on the CPU after a CUDA failure), a second copy of the weights: 60 MB a voice. Made
    # from a file it keeps only the name; a CPU session has nothing to fall back to, so the file
    # goes at once.
    with tempfile.TemporaryDirectory(prefix="tts-voice-") as folder:
        path = Path(folder) / "graph.onnx"
        path.write_bytes(model)
        session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
    session.disable_fallback()
    return session
