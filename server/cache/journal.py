"""The journal: entries stored while a shared tier (Redis, the object store) was unreachable.

One small file per entry under `{storage.dir}/journal/`, named like the entry plus `.pending`
(so the disk tier's file counts ignore it, and its TTL clean-up and purge cover it), listing the
tiers that still lack it, so the list survives a worker restart and sits beside the audio files it
refers to. The tiers replay it as soon as a tier answers again; then the URL works on every
replica. It is bounded: when full, the oldest entry is dropped (logged and counted), and its URL
is still served by this replica from its own disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

from loguru import logger

_NAME: Final = re.compile(r"[0-9a-f]{64}\.[a-z0-9]{1,8}")
SUFFIX: Final = ".pending"


class Journal:
    def __init__(self, root: Path, max_entries: int, *, on_drop: Callable[[], None] = lambda: None) -> None:
        self._root = root / "journal"
        self._max_entries = max_entries
        self._on_drop = on_drop
        self._lock = asyncio.Lock()
        self.dropped = 0

    def _path(self, name: str) -> Path:
        return self._root / f"{name}{SUFFIX}"

    def _entries(self) -> list[tuple[float, str]]:
        found = []
        if self._root.is_dir():
            for path in self._root.iterdir():
                name = path.name.removesuffix(SUFFIX)
                if not path.name.endswith(SUFFIX) or not _NAME.fullmatch(name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append((path.stat().st_mtime, name))
        return sorted(found)

    def _add(self, name: str, tiers: frozenset[str]) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        known = set(self._read(name)) if path.exists() else set()
        if not known:
            entries = self._entries()
            for _, oldest in entries[: max(0, len(entries) - self._max_entries + 1)]:
                self._path(oldest).unlink(missing_ok=True)
                self.dropped += 1
                self._on_drop()
                logger.warning("journal full: {} dropped; only this replica serves it", oldest)
        temp = path.with_name(f".{name}.tmp")  # disk clean-up removes stale temp files
        temp.write_text(",".join(sorted(known | tiers)), encoding="ascii")
        os.replace(temp, path)

    def _read(self, name: str) -> list[str]:
        try:
            return [t for t in self._path(name).read_text(encoding="ascii").split(",") if t]
        except FileNotFoundError:
            return []

    def _set(self, name: str, tiers: list[str]) -> None:
        if not tiers:
            self._path(name).unlink(missing_ok=True)
            return
        temp = self._path(name).with_name(f".{name}.tmp")
        temp.write_text(",".join(sorted(tiers)), encoding="ascii")
        os.replace(temp, self._path(name))

    async def add(self, name: str, tiers: frozenset[str]) -> None:
        """Remember that `tiers` lack the entry `name` (whose bytes are on the local disk)."""
        async with self._lock:
            try:
                await asyncio.to_thread(self._add, name, tiers)
            except OSError as exc:
                self.dropped += 1
                self._on_drop()
                logger.warning("journal write failed, {} only served by this replica: {}", name, exc)

    async def pending(self) -> list[tuple[str, list[str]]]:
        """Entries oldest first, each with the tiers that still lack it."""
        entries = await asyncio.to_thread(self._entries)
        return [(name, await asyncio.to_thread(self._read, name)) for _, name in entries]

    async def settle(self, name: str, remaining: list[str]) -> None:
        """Record what replay achieved: the tiers still missing the entry (none: forget it)."""
        async with self._lock:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._set, name, remaining)

    async def discard(self, name: str) -> None:
        """Give up on an entry (its file is gone): logged by the caller, counted here."""
        self.dropped += 1
        self._on_drop()
        await self.settle(name, [])

    async def size(self) -> int:
        return len(await asyncio.to_thread(self._entries))
