"""`/jobs`: long documents as asynchronous jobs: submit, follow, list, cancel, delete.

Thin: each method validates, calls one `JobService` method with the caller's identity (the same
API keys and rate limits as `/tts`; each key sees only its own jobs) and writes the job.
"""

from __future__ import annotations

from typing import Final

from server.errors import InvalidRequest, JobsUnavailable, NotFound
from server.handlers.tts import SpeechHandler
from server.jobs.schemas import JOB_ID_PATTERN, Job, JobFields, JobList, JobQuery
from server.jobs.service import NO_QUEUE, JobService
from server.jobs.store import is_job_id
from server.openapi import RATE_LIMIT_HEADERS, Header, Reply, operation
from server.schemas import Error, dump, validate
from server.settings import jobs_max_body_bytes

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY: Final = 255
JOB_ERRORS: Final = (401, 404, 429, 503)
JSON_JOB: Final = {"application/json": Job}
ID_PARAMETER: Final = {"id": {"type": "string", "pattern": JOB_ID_PATTERN, "description": "The job's id"}}
LOCATION: Final = {"Location": Header("The job's URL", True)}
CONFLICT: Final = Reply("The job already ended (completed or failed)", {"application/json": Error})


class JobsBase(SpeechHandler):
    route = "/jobs"

    @property
    def jobs(self) -> JobService:
        jobs = self.services.jobs
        if jobs is None or not jobs.enabled:
            raise JobsUnavailable(NO_QUEUE)
        return jobs

    def job_id(self, raw: str) -> str:
        if not is_job_id(raw):
            raise NotFound("no such job")
        return raw


class JobsHandler(JobsBase):
    def max_body_bytes(self) -> int:
        return jobs_max_body_bytes(self.services.settings)

    @operation(
        operation_id="jobsCreate",
        body=JobFields,
        headers={IDEMPOTENCY_HEADER: Header("Makes a retried submission return the first job (24 h)")},
        replies={
            202: Reply("Accepted; follow it at Location", JSON_JOB, {**LOCATION, **RATE_LIMIT_HEADERS}),
            422: Reply("The Idempotency-Key was used with another body", {"application/json": Error}),
        },
        errors=(400, *JOB_ERRORS, 413),
    )
    async def post(self) -> None:
        """Submit a document; answers at once with the job (202), before any audio is made."""
        fields = validate(JobFields, self.json_fields())
        key = self.request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        self.text_chars = len(fields.text)
        submitted = await self.jobs.submit(fields, self.client_id, self.base_url(), key)
        self.set_header("Location", f"/jobs/{submitted.job.id}")
        self.write_json(dump(submitted.job), 202)

    @operation(
        operation_id="jobsList",
        query=JobQuery,
        replies={200: Reply("The caller's jobs, newest first", {"application/json": JobList})},
        errors=(400, *JOB_ERRORS),
    )
    async def get(self) -> None:
        """List the caller's jobs, newest first, by status, a page at a time."""
        wanted = validate(JobQuery, self.query_fields())
        found, after = await self.jobs.list(self.client_id, wanted.status, wanted.limit, wanted.after)
        self.write_json(dump(JobList(jobs=found, next_after=after)))


class JobHandler(JobsBase):
    @operation(
        operation_id="jobsGet",
        path=ID_PARAMETER,
        replies={200: Reply("The job", JSON_JOB, RATE_LIMIT_HEADERS)},
        errors=JOB_ERRORS,
    )
    async def get(self, job_id: str) -> None:
        """The job: status, progress and, once completed, its audio and segments."""
        self.write_json(dump(await self.jobs.get(self.job_id(job_id), self.client_id)))

    @operation(
        operation_id="jobsDelete",
        path=ID_PARAMETER,
        replies={204: Reply("Removed, with its audio")},
        errors=JOB_ERRORS,
    )
    async def delete(self, job_id: str) -> None:
        """Remove the job and its audio (a running job is cancelled first)."""
        await self.jobs.delete(self.job_id(job_id), self.client_id)
        self.set_status(204)
        self.finish()


class JobCancelHandler(JobsBase):
    @operation(
        operation_id="jobsCancel",
        path=ID_PARAMETER,
        replies={202: Reply("Cancelling (between sentences), or cancelled", JSON_JOB), 409: CONFLICT},
        errors=JOB_ERRORS,
    )
    async def post(self, job_id: str) -> None:
        """Cancel the job; it ends `cancelled` and the audio made so far is discarded."""
        self.write_json(dump(await self.jobs.cancel(self.job_id(job_id), self.client_id)), 202)


ROUTES: Final = [
    (r"/jobs", JobsHandler),
    (r"/jobs/([^/]+)", JobHandler),
    (r"/jobs/([^/]+)/cancel", JobCancelHandler),
]
