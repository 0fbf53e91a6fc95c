"""The job records in Redis: what was asked, where it stands, and the cursor of finished sentences.

One job is a hash `{prefix}job:{id}` (owner, status, times, the request, the output), its text in
`{prefix}job:{id}:text` and its finished sentences in the list `{prefix}job:{id}:pieces`, one JSON
entry per sentence in order. The list's length is the cursor: a piece is appended only if the list
is exactly as long as its index (one Lua script), so an attempt that resumes after a dead worker
starts at the first unfinished sentence, and two attempts can never both record one sentence.
Each owner's jobs are indexed by creation time for listing; terminal jobs by expiry time for the
sweeper. Idempotency keys map (owner, key) to a job and the hash of the body that created it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis

from server.errors import StorageUnavailable

QUEUED: Final = "queued"
IN_PROGRESS: Final = "in_progress"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLING: Final = "cancelling"
CANCELLED: Final = "cancelled"
EXPIRED: Final = "expired"
STATUSES: Final = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLING, CANCELLED, EXPIRED)
TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED, EXPIRED})
ID_PREFIX: Final = "job_"

# Append piece ARGV[2] (duration ARGV[3]) only when the list holds exactly ARGV[1] pieces.
_APPEND: Final = """
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[2], 'audio_s', ARGV[3])
return 1
"""
# Move a job that is not yet terminal to the terminal status ARGV[1] with fields ARGV[2..].
_FINISH: Final = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled'
   or status == 'expired' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 2))
return 1
"""


def new_job_id() -> str:
    return f"{ID_PREFIX}{uuid.uuid4().hex}"


def is_job_id(value: str) -> bool:
    rest = value.removeprefix(ID_PREFIX)
    return value.startswith(ID_PREFIX) and len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)


def body_hash(fields: Mapping[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Record:
    """A job's hash, decoded."""

    id: str
    owner: str
    status: str
    created_at: float
    request: dict[str, Any]
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    attempts: int = 0
    sentences_total: int = 0
    sentences_done: int = 0
    audio_s: float = 0.0
    cancel: bool = False
    error: dict[str, str] | None = None
    output: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _float(raw: bytes | None) -> float | None:
    return float(raw) if raw else None


def _decode(job_id: str, raw: Mapping[bytes, bytes], done: int) -> Record:
    def text(name: str) -> str:
        return raw.get(name.encode(), b"").decode()

    def data(name: str) -> Any:
        value = raw.get(name.encode())
        return json.loads(value) if value else None

    return Record(
        id=job_id,
        owner=text("owner"),
        status=text("status"),
        created_at=float(raw.get(b"created_at", b"0")),
        request=data("request") or {},
        started_at=_float(raw.get(b"started_at")),
        completed_at=_float(raw.get(b"completed_at")),
        expires_at=_float(raw.get(b"expires_at")),
        attempts=int(raw.get(b"attempts", b"0")),
        sentences_total=int(raw.get(b"sentences_total", b"0")),
        sentences_done=done,
        audio_s=float(raw.get(b"audio_s", b"0")),
        cancel=raw.get(b"cancel") == b"1",
        error=data("error"),
        output=data("output"),
    )


class JobStore:
    def __init__(self, client: Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._append = client.register_script(_APPEND)
        self._finish = client.register_script(_FINISH)

    # -- names ---------------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self._prefix}job:{job_id}"

    def _text(self, job_id: str) -> str:
        return f"{self._prefix}job:{job_id}:text"

    def _pieces(self, job_id: str) -> str:
        return f"{self._prefix}job:{job_id}:pieces"

    def _owned(self, owner: str) -> str:
        return f"{self._prefix}jobs:owner:{owner}"

    def _idempotency(self, owner: str, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{self._prefix}jobs:idempotency:{owner}:{digest}"

    @property
    def _expiry(self) -> str:
        return f"{self._prefix}jobs:expiry"

    # -- writing -------------------------------------------------------------------------------------

    async def claim_idempotency_key(
        self, owner: str, key: str, job_id: str, digest: str, ttl_s: int
    ) -> tuple[str, str] | None:
        """Bind `key` to (job_id, digest) unless it is bound already; then its (job id, body digest)."""
        name = self._idempotency(owner, key)
        value = json.dumps({"id": job_id, "body": digest})
        if await self._redis.set(name, value, nx=True, ex=ttl_s):
            return None
        raw = await self._redis.get(name)
        if raw is None:  # expired between the two calls: take it now
            await self._redis.set(name, value, ex=ttl_s)
            return None
        bound = json.loads(raw)
        return bound["id"], bound["body"]

    async def create(self, job_id: str, owner: str, text: str, request: Mapping[str, Any]) -> Record:
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._job(job_id),
                mapping={
                    "owner": owner,
                    "status": QUEUED,
                    "created_at": repr(now),
                    "request": json.dumps(request, ensure_ascii=False),
                },
            )
            pipe.set(self._text(job_id), text)
            pipe.zadd(self._owned(owner), {job_id: now})
            await pipe.execute()
        return Record(job_id, owner, QUEUED, now, dict(request))

    async def started(self, job_id: str, attempt: int, sentences_total: int) -> None:
        """An attempt begins: in progress (unless cancelling), its number and the sentence count."""
        name = self._job(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(name, "started_at", repr(time.time()))
            pipe.hset(name, mapping={"attempts": attempt, "sentences_total": sentences_total})
            pipe.hset(name, "status", IN_PROGRESS)
            await pipe.execute()

    async def append_piece(self, job_id: str, index: int, piece: Mapping[str, Any]) -> bool:
        """Record sentence `index` as finished; False if another attempt already did (or moved on)."""
        duration = float(piece.get("duration_s", 0.0))
        done = await self._append(
            keys=[self._pieces(job_id), self._job(job_id)],
            args=[index, json.dumps(piece), repr(duration)],
        )
        return bool(done)

    async def request_cancel(self, job_id: str) -> None:
        await self._redis.hset(self._job(job_id), "cancel", "1")

    async def finish(
        self,
        job_id: str,
        status: str,
        ttl_s: int,
        *,
        output: Mapping[str, Any] | None = None,
        error: Mapping[str, str] | None = None,
    ) -> bool:
        """Move a job to a terminal status once; True for the caller that did (it sends the webhook)."""
        now = time.time()
        fields: dict[str, str] = {"completed_at": repr(now), "expires_at": repr(now + ttl_s)}
        if output is not None:
            fields["output"] = json.dumps(output, ensure_ascii=False)
        if error is not None:
            fields["error"] = json.dumps(error, ensure_ascii=False)
        args: list[str] = [status]
        for name, value in fields.items():
            args += [name, value]
        if not await self._finish(keys=[self._job(job_id)], args=args):
            return False
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._expiry, {job_id: now + ttl_s})
            pipe.delete(self._text(job_id))  # the text is not needed once it is spoken (or never will be)
            await pipe.execute()
        return True

    async def expire(self, job_id: str, tombstone_s: int) -> None:
        """Expired: the output is gone; the record says so for `tombstone_s`, then goes too."""
        name = self._job(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, "status", EXPIRED)
            pipe.hdel(name, "output")
            pipe.delete(self._pieces(job_id), self._text(job_id))
            pipe.expire(name, tombstone_s)
            pipe.zrem(self._expiry, job_id)
            await pipe.execute()

    async def forget_owned(self, owner: str, job_id: str) -> None:
        await self._redis.zrem(self._owned(owner), job_id)

    async def delete(self, record: Record) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._job(record.id), self._text(record.id), self._pieces(record.id))
            pipe.zrem(self._owned(record.owner), record.id)
            pipe.zrem(self._expiry, record.id)
            await pipe.execute()

    # -- reading -------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Record | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._job(job_id))
            pipe.llen(self._pieces(job_id))
            raw, done = await pipe.execute()
        if not raw:
            return None
        return _decode(job_id, raw, int(done))

    async def text(self, job_id: str) -> str | None:
        raw = await self._redis.get(self._text(job_id))
        return raw.decode("utf-8") if raw is not None else None

    async def pieces(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in await self._redis.lrange(self._pieces(job_id), 0, -1)]

    async def cancel_requested(self, job_id: str) -> bool:
        return await self._redis.hget(self._job(job_id), "cancel") == b"1"

    async def owned(self, owner: str, after: str | None, count: int) -> list[str]:
        """Up to `count` of the owner's job ids, newest first, after the id `after`."""
        start = 0
        if after is not None:
            rank = await self._redis.zrevrank(self._owned(owner), after)
            if rank is None:
                return []
            start = rank + 1
        ids = await self._redis.zrevrange(self._owned(owner), start, start + count - 1)
        return [raw.decode() for raw in ids]

    async def due(self, now: float, count: int = 100) -> list[str]:
        """Terminal jobs whose lifetime is over."""
        return [raw.decode() for raw in await self._redis.zrangebyscore(self._expiry, 0, now, 0, count)]

    async def take_due(self, job_id: str) -> bool:
        """Whether this caller won the expiry of `job_id` (several workers sweep)."""
        return bool(await self._redis.zrem(self._expiry, job_id))

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False


def unavailable() -> StorageUnavailable:
    return StorageUnavailable("the job store (Redis) is unavailable; retry shortly", retry_after_s=5)
