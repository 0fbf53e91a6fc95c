"""The audio files behind `/audio/{key}.wav`: atomic writes, verified reads, TTL clean-up.

All file work runs on a small thread pool so a slow disk never stalls the IOLoop. A file is
written to a temporary name and renamed, so readers see a whole WAV or nothing.
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


class DiskStore:
    def __init__(self, settings: StorageSettings) -> None:
        self._root = Path(settings.dir)
        self._ttl_s = settings.ttl_s
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="disk")
        self.write_errors = 0

    @property
    def root(self) -> Path:
        return self._root

    def path(self, key: str) -> Path:
        # Keys are validated hex digests before they reach here; the fan-out keeps folders small.
        return self._root / key[:2] / f"{key}.wav"

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _read(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            if time.time() - path.stat().st_mtime > self._ttl_s:
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            parse_wav(data)
        except ValueError:
            logger.warning("corrupt audio file {} removed", path.name)
            path.unlink(missing_ok=True)
            return None
        return data

    def _write(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _touch(self, key: str) -> bool:
        try:
            os.utime(self.path(key))
        except OSError:
            return False
        return True

    def _delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

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
            for path in self._root.glob("*/*.wav"):
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

    async def get(self, key: str) -> bytes | None:
        try:
            return await self._run(self._read, key)
        except OSError as exc:
            logger.warning("audio file read failed: {}", exc)
            return None

    async def put(self, key: str, data: bytes) -> bool:
        try:
            await self._run(self._write, key, data)
        except OSError as exc:
            self.write_errors += 1
            logger.warning("audio file write failed: {}", exc)
            return False
        return True

    async def touch(self, key: str) -> bool:
        return await self._run(self._touch, key)

    async def delete(self, key: str) -> bool:
        return await self._run(self._delete, key)

    async def clean(self) -> int:
        removed = await self._run(self._clean)
        if removed:
            logger.info("removed {} expired audio files", removed)
        return removed

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
