"""SAQ wiring: the queues over our Redis and the SAQ workers inside each server worker process.

Two queues: `{prefix}jobs` runs documents (`jobs.concurrency` at once per process, so a worker's
inference is never all jobs) and `{prefix}webhooks` delivers callbacks, each with its own retries.
A document job gets `jobs.timeout_s` per attempt, a heartbeat of `jobs.heartbeat_s` (the runner
touches it while it works; SAQ's sweep re-queues a job whose worker stopped touching it, that is,
died) and `jobs.max_attempts` attempts with exponential backoff. A job that SAQ ends failed or
aborted (its last attempt's worker died, it timed out) is passed to `ended`, so our record ends
too and the webhook goes. SAQ's finished-job records live `jobs.ttl_s`; our own records
(`store.py`) are what the API shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError
from saq import Job, Status, Worker
from saq.queue.redis import RedisQueue

from server.cache.redis import connect
from server.settings import Settings

RUN: Final = "run_job"
DELIVER: Final = "deliver_webhook"
WEBHOOK_CONCURRENCY: Final = 4
SAQ_TIMEOUT_S: Final = 5.0  # per Redis command; a dequeue blocks at most DEQUEUE_S of it
DEQUEUE_S: Final = 1.0
OUTAGE_BACKOFF_S: Final = 1.0
# On shutdown, how long a running job may go on (its sentence finishing, its cursor saved) before
# it is cancelled and queued again; also lets the idle dequeues end instead of being cancelled.
SHUTDOWN_GRACE_S: Final = 1
DISCONNECT_TIMEOUT_S: Final = 2.0


# Called when a job ends failed or aborted: (the SAQ job's key, True when the sweep ended it).
Ended = Callable[[str, bool], Awaitable[None]]


class _Queue(RedisQueue):
    """SAQ's Redis queue, riding out a Redis outage instead of spinning on it, and telling who
    asks when a job ends failed or aborted.

    SAQ's worker asks for the next job again as soon as a dequeue fails, and its upkeep (schedule,
    sweep, worker info) logs a traceback each second: with Redis down that would be a busy loop
    and a flood. Here a failed call waits a moment and reports nothing to do.

    `finish` is where every end of a job passes, whoever ends it: the worker that ran it (done,
    failed, timed out, aborted) and the sweep of any worker, which ends a job whose worker stopped
    touching it (died) and which has no attempt left as aborted, with `swept_error_message`.
    No hook of SAQ's sees that last case (`after_process` runs only in the worker that ran the
    job, which is dead), so `ended` is called from here.
    """

    def __init__(self, redis: Redis, name: str, ended: Ended | None = None) -> None:
        super().__init__(redis, name=name)
        self._ended = ended

    async def finish(
        self, job: Job, status: Status, *, result: Any = None, error: str | None = None, **kwargs: Any
    ) -> None:
        await super().finish(job, status, result=result, error=error, **kwargs)
        if self._ended is not None and status in (Status.FAILED, Status.ABORTED):
            await self._ended(job.key, error == self.swept_error_message)

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        try:
            return await super().dequeue(timeout, poll_interval)
        except (RedisError, OSError) as exc:
            await self._outage(exc)
            return None

    async def schedule(self, lock: int = 1) -> list[str]:
        try:
            return await super().schedule(lock)
        except (RedisError, OSError) as exc:
            await self._outage(exc)
            return []

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        try:
            return await super().sweep(lock, abort)
        except (RedisError, OSError) as exc:
            await self._outage(exc)
            return []

    async def write_worker_info(self, worker_id: str, info: Any, ttl: int) -> None:
        try:
            await super().write_worker_info(worker_id, info, ttl)
        except (RedisError, OSError) as exc:
            await self._outage(exc)

    async def _outage(self, exc: BaseException) -> None:
        logger.debug("job queue {}: Redis unavailable: {}", self.name, exc)
        await asyncio.sleep(OUTAGE_BACKOFF_S)


class _QuietWorker(Worker):  # type: ignore[type-arg]
    """A SAQ worker that leaves signals alone: the server's own drain handles SIGTERM."""

    SIGNALS: list[Any] = []  # noqa: RUF012 - overrides the class attribute on purpose


def redis_client(settings: Settings) -> Redis:
    """A client for the queue: the configured Redis, with timeouts that allow a blocking dequeue."""
    redis = settings.redis.model_copy(update={"timeout_s": SAQ_TIMEOUT_S})
    return connect(redis)  # type: ignore[return-value]


class JobQueues:
    def __init__(
        self,
        settings: Settings,
        run: Callable[..., Awaitable[Any]],
        deliver: Callable[..., Awaitable[Any]],
        ended: Ended,
    ) -> None:
        self._settings = settings
        prefix = settings.redis.key_prefix
        self.jobs = _Queue(redis_client(settings), name=f"{prefix}jobs", ended=ended)
        self.webhooks = _Queue(redis_client(settings), name=f"{prefix}webhooks")
        jobs = settings.jobs
        timers = {"sweep": jobs.sweep_interval_s, "abort": 1, "schedule": 1, "worker_info": 10}
        self._workers = [
            _QuietWorker(
                self.jobs,
                [(RUN, run)],
                concurrency=jobs.concurrency,
                timers=timers,  # type: ignore[arg-type]
                dequeue_timeout=DEQUEUE_S,
                shutdown_grace_period_s=SHUTDOWN_GRACE_S,
            ),
            _QuietWorker(
                self.webhooks,
                [(DELIVER, deliver)],
                concurrency=WEBHOOK_CONCURRENCY,
                timers=timers,  # type: ignore[arg-type]
                dequeue_timeout=DEQUEUE_S,
                shutdown_grace_period_s=SHUTDOWN_GRACE_S,
            ),
        ]

    @property
    def workers(self) -> list[Worker]:  # type: ignore[type-arg]
        return list(self._workers)

    async def connect(self) -> None:
        for queue in (self.jobs, self.webhooks):
            await queue.connect()

    async def enqueue_job(self, job_id: str) -> None:
        jobs = self._settings.jobs
        await self.jobs.enqueue(
            Job(
                RUN,
                kwargs={"job_id": job_id},
                key=job_id,
                timeout=jobs.timeout_s,
                heartbeat=jobs.heartbeat_s,
                retries=jobs.max_attempts,
                ttl=jobs.ttl_s,
                retry_delay=jobs.retry_delay_s,
                retry_backoff=True,
            )
        )

    async def enqueue_webhook(self, job_id: str, event: str, message_id: str) -> None:
        jobs = self._settings.jobs
        await self.webhooks.enqueue(
            Job(
                DELIVER,
                kwargs={"job_id": job_id, "event": event, "message_id": message_id},
                key=message_id,  # one delivery per event, however often it is enqueued
                timeout=int(jobs.webhook_timeout_s) + 5,
                retries=jobs.webhook_attempts,
                ttl=jobs.ttl_s,
                retry_delay=jobs.webhook_retry_delay_s,
                retry_backoff=True,
            )
        )

    async def status(self, job_id: str) -> Status | None:
        job = await self.jobs.job(job_id)
        return job.status if job is not None else None

    async def abort(self, job_id: str) -> bool:
        """Abort a queued or running job; True if it was still queued (so it never ran)."""
        job = await self.jobs.job(job_id)
        if job is None or job.status in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
            return False
        queued = job.status in (Status.NEW, Status.QUEUED)
        await self.jobs.abort(job, "cancelled")
        return queued

    async def forget(self, job_id: str) -> None:
        """Remove SAQ's record of a job (after DELETE)."""
        await self.jobs.redis.delete(self.jobs.job_id(job_id))

    async def report(self) -> dict[str, int]:
        info = await self.jobs.info()
        return {"queued": info["queued"], "active": info["active"], "workers": len(info["workers"])}

    async def disconnect(self) -> None:
        """Close both queues' connections; with Redis gone (an outage during a shutdown) SAQ's
        unsubscribe would retry its connection and raise, so each gets a bounded, quiet try."""
        for queue in (self.jobs, self.webhooks):
            try:
                await asyncio.wait_for(queue.disconnect(), DISCONNECT_TIMEOUT_S)
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("queue {} closed without Redis: {}", queue.name, type(exc).__name__)
