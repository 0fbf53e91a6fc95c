"""JobService: the rules of `/jobs` (submit, read, list, cancel, delete), expiry and webhooks.

Handlers call it with validated fields and the caller's identity; it owns the job store, the SAQ
queues and workers, the runner and the webhook sender. Each owner (an API key, else an address)
sees only its own jobs: another owner's id is answered like an unknown one. With no Redis
(`redis.url: ""`) it is disabled and every call answers 503 naming the missing queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from loguru import logger
from redis.exceptions import RedisError
from saq import Status

from server.cache.tiers import TieredCache
from server.errors import (
    Conflict,
    IdempotencyKeyReused,
    InvalidRequest,
    JobsUnavailable,
    NotFound,
    RateLimited,
    SynthesisFailed,
    WorkerLost,
)
from server.jobs import store as states
from server.jobs.queue import JobQueues, redis_client
from server.jobs.runner import JobRunner, output_key, segment_key
from server.jobs.schemas import Job, JobFields, JobOutput, JobProgress, JobSegment
from server.jobs.store import JobStore, Record, body_hash, new_job_id, unavailable
from server.jobs.webhooks import Sender, WebhookRefused
from server.metrics import Metrics
from server.ratelimit import SYNTHESIS, RateLimiter
from server.request import speech_request
from server.schemas import ErrorDetail, SpeechFields
from server.settings import Settings
from server.speech import SpeechService
from server.text.spans import TextFormat

EVENTS: Final = {
    states.COMPLETED: "job.completed",
    states.FAILED: "job.failed",
    states.CANCELLED: "job.cancelled",
}
NO_QUEUE: Final = "jobs need the job queue, and no Redis is configured (redis.url is empty)"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _store_errors(method: F) -> F:
    """Redis out while answering a request: a 503 with Retry-After, not a 500."""

    @functools.wraps(method)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            logger.warning("job store unavailable: {}", exc)
            raise unavailable() from None

    return guarded  # type: ignore[return-value]


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool  # an Idempotency-Key replay: the job already existed


class JobService:
    def __init__(
        self,
        settings: Settings,
        speech: SpeechService,
        cache: TieredCache,
        metrics: Metrics,
        limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        self._speech = speech
        self._cache = cache
        self._metrics = metrics
        self._limiter = limiter
        self.enabled = bool(settings.redis.url)
        self._tasks: list[asyncio.Task[None]] = []
        self._report: dict[str, Any] = {"state": "starting" if self.enabled else "disabled"}
        if not self.enabled:
            return
        self.store = JobStore(redis_client(settings), settings.redis.key_prefix)
        self.runner = JobRunner(settings, self.store, speech, metrics, self._finished)
        self.queues = JobQueues(settings, self.runner.run, self.deliver, self._ended)
        self.sender = Sender(settings.jobs, settings.webhook_secret)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the SAQ workers and the expiry sweep (after the voices loaded)."""
        if not self.enabled:
            return
        await self.queues.connect()
        for worker in self.queues.workers:
            self._tasks.append(asyncio.ensure_future(worker.start()))
        self._tasks.append(asyncio.ensure_future(self._sweep_periodically()))

    async def close(self) -> None:
        if not self.enabled:
            return
        for worker in self.queues.workers:
            with contextlib.suppress(Exception):
                await worker.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.queues.disconnect()
        self.sender.close()
        self.runner.close()

    def report(self) -> dict[str, Any]:
        """The queue as /readyz shows it: state, and the counts the last sweep saw."""
        return dict(self._report)

    async def _sweep_periodically(self) -> None:
        interval = self._settings.jobs.sweep_interval_s
        while True:
            try:
                await self.expire_due()
                counts = await self.queues.report()
                self._metrics.jobs_queued.set(counts["queued"])
                self._report = {"state": "ok", **counts}
            except (RedisError, OSError) as exc:
                self._report = {"state": "unavailable"}
                logger.warning("job sweep failed: {}", exc)
            await asyncio.sleep(interval)

    # -- the API -------------------------------------------------------------------------------------

    def _require(self) -> None:
        if not self.enabled:
            raise JobsUnavailable(NO_QUEUE)

    @_store_errors
    async def submit(
        self, fields: JobFields, owner: str, base: str, idempotency_key: str | None = None
    ) -> Submitted:
        self._require()
        jobs = self._settings.jobs
        synthesis = self._settings.synthesis
        speech = SpeechFields.model_construct(
            text=fields.text,
            speed=fields.speed,
            voice=fields.voice,
            speaker=fields.speaker,
            text_format=fields.text_format,
            volume=fields.volume,
        )
        parsed = speech_request(
            speech,
            default_voice=synthesis.default_voice,
            max_chars=jobs.max_text_chars,
            default_format=self._settings.text.tts_format,
        )
        request = {
            "voice": parsed.voice,
            "speaker": parsed.speaker,
            "speed": parsed.speed,
            "text_format": parsed.text_format.value,
            "volume": parsed.volume,
            "format": fields.format.value,
            "webhook_url": fields.webhook_url,
            "metadata": dict(fields.metadata or {}),
            "base": base,
        }
        catalog = self._speech.catalog
        if catalog.ready:  # unknown voice or speaker, malformed SSML: 400 now, not a failed job later
            voice = catalog.get(parsed.voice)
            try:
                voice.speaker_id(parsed.speaker)
            except KeyError:
                raise InvalidRequest(
                    f"unknown speaker {parsed.speaker!r} for voice {voice.voice_id}"
                ) from None
            if parsed.text_format is TextFormat.SSML:  # parsed (and cut into paragraphs) as the job will be
                await self.runner.document(fields.text, request)
        if fields.webhook_url is not None:
            await self.sender.policy.check(fields.webhook_url)
        digest = body_hash(fields.model_dump(mode="json"))
        job_id = new_job_id()
        if idempotency_key is not None:
            bound = await self.store.claim_idempotency_key(
                owner, idempotency_key, job_id, digest, jobs.idempotency_ttl_s
            )
            if bound is not None:
                earlier, earlier_digest = bound
                if earlier_digest != digest:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was used with a different body", param="Idempotency-Key"
                    )
                record = await self.store.get(earlier)
                if record is None:
                    raise NotFound("the job this Idempotency-Key created was deleted")
                return Submitted(await self.view(record), replayed=True)
        if owner and self._limiter.enabled:
            decision = await self._limiter.take(
                owner, SYNTHESIS, self._limiter.synthesis_cost(len(parsed.text))
            )
            if not decision.allowed:
                raise RateLimited("too many new syntheses; slow down", headers=decision.headers())
        record = await self.store.create(job_id, owner, fields.text, request)
        await self.queues.enqueue_job(job_id)
        self._metrics.jobs.labels("submitted").inc()
        logger.bind(job_id=job_id).info("job submitted: {} characters", len(parsed.text))
        return Submitted(await self.view(record), replayed=False)

    async def _owned(self, job_id: str, owner: str) -> Record:
        self._require()
        record = await self.store.get(job_id)
        if record is None or record.owner != owner:
            raise NotFound("no such job")
        return record

    @_store_errors
    async def get(self, job_id: str, owner: str) -> Job:
        return await self.view(await self._owned(job_id, owner))

    @_store_errors
    async def list(
        self, owner: str, status: str | None, limit: int, after: str | None
    ) -> tuple[list[Job], str | None]:
        """A page of the owner's jobs, newest first, and the cursor of the next page."""
        self._require()
        found: list[Job] = []
        cursor = after
        while len(found) < limit:
            ids = await self.store.owned(owner, cursor, limit)
            if not ids:
                return found, None
            for job_id in ids:
                cursor = job_id
                record = await self.store.get(job_id)
                if record is None:  # its tombstone expired: drop it from the index too
                    await self.store.forget_owned(owner, job_id)
                    continue
                job = await self.view(record)
                if status is None or job.status == status:
                    found.append(job)
                    if len(found) == limit:
                        break
        more = bool(await self.store.owned(owner, cursor, 1))
        return found, cursor if more else None

    @_store_errors
    async def cancel(self, job_id: str, owner: str) -> Job:
        """Cancel between sentences; a job already finished cannot be cancelled (409)."""
        record = await self._owned(job_id, owner)
        if record.terminal:
            if record.status == states.CANCELLED:
                return await self.view(record)
            raise Conflict(f"job is already {record.status}")
        await self.store.request_cancel(job_id)
        if await self.queues.abort(job_id):  # it never started: cancelled now
            await self._finish(job_id, states.CANCELLED)
        record = await self.store.get(job_id) or record
        return await self.view(record)

    @_store_errors
    async def delete(self, job_id: str, owner: str) -> None:
        """Remove the job and its audio; a running one is cancelled first."""
        record = await self._owned(job_id, owner)
        if not record.terminal:
            await self.store.request_cancel(job_id)
            await self.queues.abort(job_id)
        await self._delete_audio(record)
        await self.store.delete(record)
        await self.queues.forget(job_id)

    # -- the view ------------------------------------------------------------------------------------

    async def view(self, record: Record) -> Job:
        status = record.status
        error = record.error
        if not record.terminal:
            saq = await self.queues.status(record.id)
            if saq in (Status.FAILED, Status.ABORTED) or (saq is None and status == states.IN_PROGRESS):
                # SAQ gave up on it and `_ended` could not record that yet (Redis was out).
                status = states.CANCELLED if record.cancel else states.FAILED
                if not record.cancel:
                    error = {"code": "synthesis_failed", "message": "the job's attempts ran out"}
            elif record.cancel:
                status = states.CANCELLING
        wanted = record.request
        total = record.sentences_total
        percent = (
            100.0 if status == states.COMPLETED else (100.0 * record.sentences_done / total if total else 0.0)
        )
        return Job(
            id=record.id,
            status=status,  # type: ignore[arg-type]
            created_at=_iso(record.created_at) or "",
            started_at=_iso(record.started_at),
            completed_at=_iso(record.completed_at),
            expires_at=_iso(record.expires_at),
            progress=JobProgress(
                percent=round(min(100.0, percent), 2),
                sentences_done=record.sentences_done,
                sentences_total=total,
                audio_s_done=round(record.audio_s, 3),
            ),
            attempts=record.attempts,
            error=ErrorDetail(**error) if error else None,
            metadata=wanted.get("metadata") or {},
            voice=wanted.get("voice", ""),
            speed=wanted.get("speed", "normal"),
            text_format=wanted.get("text_format", TextFormat.PLAIN),
            volume=wanted.get("volume", 1.0),
            format=wanted.get("format", "wav"),
            output=self._output(record) if status == states.COMPLETED else None,
        )

    def _output(self, record: Record) -> JobOutput | None:
        output = record.output
        if not output:
            return None
        base = self._settings.server.public_url.rstrip("/") or record.request.get("base", "")
        path = f"/audio/{output['key']}.{record.request.get('format', 'wav')}"
        url = f"{base}{path}"
        extension = record.request.get("format", "wav")
        segments = []
        for segment in output["segments"]:
            fields = {name: value for name, value in segment.items() if name != "key"}
            segments.append(JobSegment(**fields, audio_url=f"{base}/audio/{segment['key']}.{extension}"))
        captions = (
            {kind: f"{base}/audio/{output['key']}.{kind}" for kind in ("vtt", "srt")}
            if output.get("captions")
            else {}
        )
        return JobOutput(
            audio_url=url,
            audio_path=path,
            duration_s=output["duration_s"],
            sample_rate=output["sample_rate"],
            segments=segments,
            captions=captions,
        )

    # -- ends: webhooks and expiry -------------------------------------------------------------------

    async def _finish(self, job_id: str, status: str, **details: Any) -> None:
        if await self.store.finish(job_id, status, self._settings.jobs.ttl_s, **details):
            self._metrics.jobs.labels(status).inc()
            await self._finished(job_id)

    async def _ended(self, job_id: str, lost: bool) -> None:
        """SAQ ended a job failed or aborted; if the runner could not record that end (its worker
        died in the last attempt, `lost`, or the attempt timed out), record it (once) here."""
        try:
            record = await self.store.get(job_id)
            if record is None or record.terminal:
                return  # deleted, or ended by the runner
            if record.cancel:
                await self._finish(job_id, states.CANCELLED)
                return
            if lost:
                error = WorkerLost("the job's worker stopped during its last attempt")
            else:
                error = SynthesisFailed("the job's attempts ran out")
            logger.bind(job_id=job_id).warning("job failed: {}", error.message)
            await self._finish(job_id, states.FAILED, error={"code": error.code, "message": error.message})
        except (RedisError, OSError) as exc:  # the view still shows it failed, from SAQ's record
            logger.warning("job {} ended by the queue, not recorded: {}", job_id, exc)

    async def _finished(self, job_id: str) -> None:
        """A job reached its end: queue its webhook, if it has one."""
        record = await self.store.get(job_id)
        if record is None or not record.request.get("webhook_url"):
            return
        event = EVENTS.get(record.status)
        if event is not None:
            await self.queues.enqueue_webhook(job_id, event, f"msg_{job_id}_{record.status}")

    async def deliver(self, ctx: Mapping[str, Any], *, job_id: str, event: str, message_id: str) -> None:
        """The SAQ function delivering one webhook; raising makes SAQ retry it with backoff."""
        record = await self.store.get(job_id)
        if record is None or not record.request.get("webhook_url"):
            return  # deleted since
        job = await self.view(record)
        body = json.dumps(
            {"type": event, "timestamp": _iso(time.time()), "data": job.model_dump(mode="json")},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        log = logger.bind(job_id=job_id)
        try:
            status = await self.sender.send(record.request["webhook_url"], message_id, body)
        except WebhookRefused as refused:
            log.warning("webhook refused: {}", refused.message)
            return
        if not 200 <= status < 300:
            log.warning("webhook answered {}; will retry", status)
            raise RuntimeError(f"webhook answered {status}")
        log.info("webhook {} delivered", event)

    async def _delete_audio(self, record: Record) -> None:
        """The joined audio and each segment's, with their word timings and renditions."""
        segments = len((record.output or {}).get("segments", []))
        keys = [output_key(record.id), *(segment_key(record.id, n) for n in range(segments))]
        await asyncio.gather(*(self._cache.delete(key) for key in keys))

    async def expire_due(self) -> int:
        """Expire every finished job past its lifetime: its audio deleted, its record marked."""
        expired = 0
        for job_id in await self.store.due(time.time()):
            if not await self.store.take_due(job_id):
                continue  # another worker took it
            record = await self.store.get(job_id)
            if record is not None:
                await self._delete_audio(record)
            await self.store.expire(job_id, self._settings.jobs.idempotency_ttl_s)
            self._metrics.jobs.labels(states.EXPIRED).inc()
            expired += 1
        return expired
