"""The audio files behind `/audio/{key}.{ext}`: atomic writes, verified reads, TTL clean-up.

All file work runs on a small thread pool so a slow disk never stalls the IOLoop. A file is
written to a temporary name and renamed, so readers see a whole file or nothing. Files are named
like the entries of the other tiers (`{key}.wav`, `{key}.mp3`, ...); a WAV is verified on every
read, the encoded renditions (which only PyAV could parse) are checked for being non-empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loguru import logger

from server.audio.pcm import parse_wav
from server.settings import StorageSettings

TEMP_SUFFIX = ".tmp"


def _verified(name: str, data: bytes) -> bool:
    """A WAV must parse as one this server wrote; any other rendition must at least have bytes."""
    if not name.endswith(".wav"):
        return bool(data)
    try:
        parse_wav(data)
    except ValueError:
        return False
    return True


class DiskStore:
    def __init__(self, settings: StorageSettings) -> None:
        self._root = Path(settings.dir)
        self._ttl_s = settings.ttl_s
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="disk")
        self.write_errors = 0

    @property
    def root(self) -> Path:
        return self._root

    def path(self, name: str) -> Path:
        # Names are a validated hex digest and a known suffix; the fan-out keeps folders small.
        return self._root / name[:2] / name

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _read(self, name: str) -> bytes | None:
        path = self.path(name)
        try:
            if time.time() - path.stat().st_mtime > self._ttl_s:
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not _verified(name, data):
            logger.warning("corrupt audio file {} removed", path.name)
            path.unlink(missing_ok=True)
            return None
        return data

    def _write(self, name: str, data: bytes) -> None:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _touch(self, name: str) -> bool:
        try:
            os.utime(self.path(name))
        except OSError:
            return False
        return True

    def _delete(self, key: str) -> bool:
        """Remove every rendition of `key` (its WAV and the encoded files beside it)."""
        removed = False
        for path in (self._root / key[:2]).glob(f"{key}.*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        return removed

    def _clean(self) -> int:
        cutoff = time.time() - self._ttl_s
        removed = 0
        if not self._root.is_dir():
            return 0
        for path in self._root.glob("*/*"):
            try:
                stale_temp = path.name.endswith(TEMP_SUFFIX) and path.stat().st_mtime < time.time() - 3600
                if stale_temp or path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _stats(self) -> dict[str, int]:
        cutoff = time.time() - self._ttl_s
        files = size = expired = 0
        if self._root.is_dir():
            # Only the fan-out folders: the journal's files beside them are not audio.
            for path in self._root.glob("[0-9a-f][0-9a-f]/*"):
                if path.name.endswith(TEMP_SUFFIX):
                    continue
                try:
                    info = path.stat()
                except FileNotFoundError:
                    continue
                files += 1
                size += info.st_size
                expired += info.st_mtime < cutoff
        return {"files": files, "bytes": size, "expired": expired}

    def _purge(self) -> int:
        removed = 0
        if self._root.is_dir():
            for path in self._root.glob("*/*"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    async def stats(self) -> dict[str, int]:
        return await self._run(self._stats)

    async def purge(self) -> int:
        return await self._run(self._purge)

    async def get(self, name: str) -> bytes | None:
        try:
            return await self._run(self._read, name)
        except OSError as exc:
            logger.warning("audio file read failed: {}", exc)
            return None

    async def put(self, name: str, data: bytes) -> bool:
        try:
            await self._run(self._write, name, data)
        except OSError as exc:
            self.write_errors += 1
            logger.warning("audio file write failed: {}", exc)
            return False
        return True

    async def touch(self, name: str) -> bool:
        return await self._run(self._touch, name)

    async def delete(self, key: str) -> bool:
        return await self._run(self._delete, key)

    async def clean(self) -> int:
        removed = await self._run(self._clean)
        if removed:
            logger.info("removed {} expired audio files", removed)
        return removed

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
