"""`./start.sh soak`: minutes of mixed load on loopback, sampling the workers' resident memory.

Not part of the test suite. Prints RSS samples and whether memory stays flat: the mean of the
last third of the samples within 10% of the mean of the middle third (the first third is
warm-up: caches fill, allocator arenas grow).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import RedisProcess, ServerProcess, query

WORDS = [
    "voice",
    "stream",
    "cache",
    "replica",
    "audio",
    "sentence",
    "clause",
    "server",
    "latency",
    "memory",
    "steady",
    "quiet",
]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tts-soak-"))
    redis = RedisProcess(work / "redis").start()
    server = ServerProcess(
        work / "server",
        {
            "TTS__REDIS__URL": redis.url,
            "TTS__SERVER__WORKERS": "2",
            "TTS__CACHE__L1_MAX_BYTES": str(32 * 1024 * 1024),
        },
        command="gunicorn",
    ).start()
    statuses: Counter[int] = Counter()
    stop = threading.Event()
    paragraphs = [" ".join(sentence(random.Random(n * 7 + k)) for k in range(3)) for n in range(200)]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            text = rng.choice(paragraphs) if rng.random() < 0.7 else f"{sentence(rng)} {rng.random()}"
            route = rng.choice(["/tts", "/tts/stream"])
            statuses[server.get(f"{route}?{query(text=text)}", timeout=120).status] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    samples: list[float] = []
    end = time.monotonic() + args.minutes * 60
    master = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    try:
        while time.monotonic() < end:
            time.sleep(5)
            rss = sum(child.memory_info().rss for child in master.children()) / 2**20
            samples.append(rss)
            print(
                f"{len(samples) * 5:5d}s  workers RSS {rss:8.1f} MiB  statuses {dict(statuses)}", flush=True
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        server.stop()
        redis.stop()
    third = max(1, len(samples) // 3)
    middle = sum(samples[third : 2 * third]) / max(1, len(samples[third : 2 * third]))
    last = sum(samples[-third:]) / third
    growth = (last - middle) / middle if middle else 0.0
    errors = {code: n for code, n in statuses.items() if code not in (200, 429, 503)}
    print(f"\nrequests {sum(statuses.values())}, statuses {dict(statuses)}")
    print(f"RSS middle third {middle:.1f} MiB, last third {last:.1f} MiB, growth {growth:+.1%}")
    flat = growth < 0.10
    print(
        "memory stays flat: " + ("yes" if flat else "NO") + "; errors: " + (str(errors) if errors else "none")
    )
    sys.exit(0 if flat and not errors else 1)


if __name__ == "__main__":
    main()
