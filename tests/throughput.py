"""Aggregate synthesis throughput under many concurrent streams, with and without dynamic batching.

`./start.sh bench throughput [--streams 1,8] [--batch 8]` (and `./start.sh bench`, after its own
rows, when the voice runs on CUDA) starts a `python -m server` per batching setting, then for
each stream count opens that many cold `/tts/stream` requests at once (distinct paragraphs, read
as fast as they come) and measures:

- aggregate seconds of audio per second of wall time, from the first request to the last byte;
- first audio (median and slowest) and the mean chunks per inference call (the server's metrics);
- at one stream: the real-time factor, as wall time over audio (all of the server) and as the
  server's own inference seconds over audio.

The GPU targets (H100 class) are a single-stream real-time factor under 0.005 and at least 1,000
seconds of audio per second with batching. On the CPU the same rows are printed for comparison,
with fewer streams by default; the targets do not apply there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.benchmark import PARAGRAPHS, Client, Nonces, Row, cpu_model, paragraph_text, print_table

CUDA_STREAMS = (1, 8, 32, 128)
CPU_STREAMS = (1, 8)
CUDA_BATCH = 32
CPU_BATCH = 8  # batching is off on the CPU by default; this shows what turning it on would do
CUDA = "CUDAExecutionProvider"
RTF_TARGET = 0.005
AGGREGATE_TARGET = 1000.0


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    return ""


async def measure(client: Client, streams: int, nonces: Nonces) -> dict[str, Any]:
    texts = [paragraph_text(i % len(PARAGRAPHS), nonces.take()) for i in range(streams)]
    before = {
        name: await client.metric(name)
        for name in (
            "tts_inference_batch_size_sum",
            "tts_inference_batch_size_count",
            "tts_synthesis_seconds_sum",
        )
    }
    started = time.perf_counter()
    results = await asyncio.gather(*(client.stream(text) for text in texts))
    wall = time.perf_counter() - started
    after = {name: await client.metric(name) for name in before}
    chunks = after["tts_inference_batch_size_sum"] - before["tts_inference_batch_size_sum"]
    calls = after["tts_inference_batch_size_count"] - before["tts_inference_batch_size_count"]
    audio = sum(r.audio_s for r in results)
    firsts = [r.first_audio_s for r in results]
    return {
        "streams": streams,
        "wall_s": wall,
        "audio_s": audio,
        "audio_per_s": audio / wall,
        "first_audio_median_s": statistics.median(firsts),
        "first_audio_max_s": max(firsts),
        "mean_batch": chunks / calls if calls else 0.0,
        "server_inference_s": after["tts_synthesis_seconds_sum"] - before["tts_synthesis_seconds_sum"],
        "underruns": sum(r.underran for r in results),
    }


async def run_setting(
    batch: int | None, streams: tuple[int, ...] | None, work: Path, nonces: Nonces
) -> dict[str, Any]:
    """One server: `batch` None is the provider's batch default; `streams` None, its stream counts."""
    from tests.conftest import ServerProcess

    most = max(streams or CUDA_STREAMS)
    env = {"TTS__SYNTHESIS__MAX_ACTIVE_REQUESTS": str(2 * most)}
    if batch is not None:
        env["TTS__SYNTHESIS__BATCH_MAX_SIZE"] = str(batch)
    server = ServerProcess(work / f"batch-{batch}", env)
    client: Client | None = None
    try:
        server.start()
        client = Client(server.base, max_clients=2 * most)
        await client.stream(paragraph_text(0, nonces.take()))  # warm the path end to end
        providers = json.loads((await client.get("/readyz")).body)["providers"]
        provider = providers["en_US-joe-medium"]
        on_gpu = provider == CUDA
        streams = streams or (CUDA_STREAMS if on_gpu else CPU_STREAMS)
        figures: dict[str, Any] = {
            "provider": provider,
            "batch": batch or (CUDA_BATCH if on_gpu else CPU_BATCH),
            "runs": [],
        }
        for count in streams:
            result = await measure(client, count, nonces)
            figures["runs"].append(result)
            print(
                f"batch {figures['batch']}: {count} streams: {result['audio_per_s']:.1f} s audio/s, "
                f"first audio {result['first_audio_median_s'] * 1000:.0f} ms median, "
                f"mean batch {result['mean_batch']:.1f}",
                flush=True,
            )
        return figures
    finally:
        if client is not None:
            client.close()
        server.stop()


def build_rows(report: dict[str, Any]) -> list[Row]:
    on_gpu = report["provider"] == CUDA
    rows: list[Row] = []
    single = report["settings"]["off"]["runs"][0]
    if single["streams"] == 1:
        rtf = single["wall_s"] / single["audio_s"]
        rows.append(
            Row(
                "1 stream: real-time factor (wall / audio)",
                f"{rtf:.4f}",
                f"{single['audio_s']:.1f} s audio in {single['wall_s'] * 1000:.0f} ms",
                None,
                f"< {RTF_TARGET}" if on_gpu else "(GPU target)",
                rtf < RTF_TARGET if on_gpu else None,
            )
        )
        rows.append(
            Row(
                "1 stream: inference only / audio",
                f"{single['server_inference_s'] / single['audio_s']:.4f}",
                "the server's own onnxruntime seconds",
            )
        )
        rows.append(Row("1 stream: first audio", f"{single['first_audio_median_s'] * 1000:.0f} ms"))
    best_batched = 0.0
    for name in ("off", "on"):
        setting = report["settings"][name]
        off_runs = {r["streams"]: r for r in report["settings"]["off"]["runs"]}
        for run in setting["runs"]:
            streams = f"{run['streams']} stream" + ("s" if run["streams"] != 1 else "")
            label = f"{streams}, batching {name} (max {setting['batch']})"
            reference = ""
            ratio = None
            if name == "on" and run["streams"] in off_runs:
                unbatched = off_runs[run["streams"]]["audio_per_s"]
                reference, ratio = f"{unbatched:.1f} s/s unbatched", run["audio_per_s"] / unbatched
            if name == "on":
                best_batched = max(best_batched, run["audio_per_s"])
            rows.append(Row(f"{label}: audio s per s", f"{run['audio_per_s']:.1f}", reference, ratio))
            rows.append(
                Row(
                    f"{label}: first audio median / slowest",
                    f"{run['first_audio_median_s'] * 1000:.0f} / {run['first_audio_max_s'] * 1000:.0f} ms",
                    f"mean batch {run['mean_batch']:.1f}, {run['underruns']} underruns",
                )
            )
    rows.append(
        Row(
            "best aggregate with batching",
            f"{best_batched:.1f} s audio/s",
            "",
            None,
            f">= {AGGREGATE_TARGET:.0f}" if on_gpu else "(GPU target)",
            best_batched >= AGGREGATE_TARGET if on_gpu else None,
        )
    )
    return rows


async def run(streams: tuple[int, ...] | None, batch: int | None) -> dict[str, Any]:
    nonces = Nonces()
    with tempfile.TemporaryDirectory(prefix="tts-throughput-") as tmp:
        work = Path(tmp)
        off = await run_setting(1, streams, work, nonces)
        counts = tuple(run["streams"] for run in off["runs"])
        on_gpu = off["provider"] == CUDA
        on = await run_setting(batch or (CUDA_BATCH if on_gpu else CPU_BATCH), counts, work, nonces)
    return {
        "provider": off["provider"],
        "device": (gpu_name() if on_gpu else "") or cpu_model(),
        "settings": {"off": off, "on": on},
    }


def main(streams: str | None, batch: int | None) -> dict[str, Any]:
    counts = tuple(int(n) for n in streams.split(",")) if streams else None
    report = asyncio.run(run(counts, batch))
    print(f"throughput on {report['device']} ({report['provider']})")
    rows = build_rows(report)
    print_table(rows, note="Each setting runs in its own server; ratios compare the two in this run.")
    report["rows"] = [row.__dict__ for row in rows]
    return report
