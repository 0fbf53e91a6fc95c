"""Request and response models of `/jobs`: validation, and the OpenAPI document's schemas."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from server.schemas import (
    AudioFormat,
    ErrorDetail,
    Model,
    Speaker,
    Speed,
    TextFormatField,
    Voice,
    Volume,
    format_field,
)
from server.text.spans import TextFormat

MAX_METADATA_KEYS: Final = 32
MAX_LIST: Final = 100
JOB_ID_PATTERN: Final = "^job_[0-9a-f]{32}$"
JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelling", "cancelled", "expired"]
Metadata = Annotated[
    dict[str, Annotated[str, Field(max_length=512)]],
    Field(max_length=MAX_METADATA_KEYS, description="Up to 32 string values, echoed in the job"),
]


class JobFields(Model):
    """The body of POST /jobs: what /tts takes, for a whole document, plus a callback and metadata."""

    text: str = Field(
        min_length=1,
        description=(
            "The document. At most jobs.max_text_chars characters after normalization (longer gets 413). "
            "Plain text: paragraphs are separated by blank lines, a line starting with # is a heading. "
            "Markdown: each block (heading, paragraph, list item) is a segment. SSML: each <p> is a "
            "segment, spoken (and counted in progress) as one piece."
        ),
    )
    speed: Speed = None
    voice: Voice = None
    speaker: Speaker = None
    text_format: TextFormatField = None
    volume: Volume = None
    format: format_field(AudioFormat.WAV) = AudioFormat.WAV  # type: ignore[valid-type]
    webhook_url: Annotated[str, Field(max_length=2048)] | None = Field(
        None, description="Called (signed, Standard Webhooks) when the job completes, fails or is cancelled"
    )
    metadata: Metadata | None = None


class JobQuery(Model):
    """The query of GET /jobs."""

    status: JobStatus | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 20
    after: Annotated[str, Field(pattern=JOB_ID_PATTERN)] | None = Field(
        None, description="The last id of the previous page (its next_after)"
    )


class JobProgress(Model):
    percent: float = Field(ge=0, le=100)
    sentences_done: int = Field(ge=0)
    sentences_total: int = Field(
        ge=0, description="0 until the job starts and splits the text; SSML counts paragraphs"
    )
    audio_s_done: float = Field(ge=0)


class JobSegment(Model):
    """A paragraph, heading or (markdown) list item of the document and where it is in the audio."""

    kind: Literal["paragraph", "heading", "list_item"]
    text_start: int = Field(ge=0, description="Offset of its first character in the submitted text")
    text_end: int = Field(ge=0, description="Offset after its last character")
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    audio_url: str = Field(description="This segment's own audio, in the job's format")


class JobOutput(Model):
    audio_url: str
    audio_path: str = Field(description="The same audio on this server, relative")
    duration_s: float = Field(ge=0)
    sample_rate: int = Field(ge=1)
    segments: list[JobSegment]
    captions: dict[str, str] = Field(
        default_factory=dict,
        description="Caption URLs (vtt, srt) of the job's audio, where its voice gives word timings",
    )


class Job(Model):
    """One job, as GET /jobs/{id} and the webhooks show it."""

    id: Annotated[str, Field(pattern=JOB_ID_PATTERN)]
    status: JobStatus
    created_at: str
    started_at: str | None
    completed_at: str | None
    expires_at: str | None
    progress: JobProgress
    attempts: int = Field(ge=0)
    error: ErrorDetail | None
    metadata: dict[str, str]
    voice: str
    speed: str | float
    text_format: TextFormat
    volume: float
    format: AudioFormat
    output: JobOutput | None = None


class JobList(Model):
    jobs: list[Job]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last")
