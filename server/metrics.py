"""Prometheus metrics, aggregated across gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set.

The metric objects belong to one `Metrics` instance built by the worker, not to module globals;
in multiprocess mode prometheus-client writes every worker's values to files in that directory
and `render()` sums them.
"""

from __future__ import annotations

import os
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
RTF_BUCKETS: Final = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)


class Metrics:
    def __init__(self) -> None:
        # Each (route, status)'s children, kept: `labels()` validates and looks them up under a
        # lock on every call, and every request is counted.
        self._answered: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._registry = CollectorRegistry(auto_describe=True)
        r = self._registry
        self.requests = Counter(
            "tts_http_requests_total", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "tts_http_request_duration_seconds",
            "HTTP request latency.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inferences = Counter(
            "tts_inferences_total",
            "Chunks synthesized (each chunk of a batch counts).",
            ["voice"],
            registry=r,
        )
        self.synthesis_seconds = Histogram(
            "tts_synthesis_seconds",
            "Inference time per chunk (a batch's time shared out by phonemes).",
            ["voice"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "tts_synthesized_audio_seconds_total", "Seconds of audio synthesized.", ["voice"], registry=r
        )
        self.real_time_factor = Histogram(
            "tts_real_time_factor",
            "Inference time over audio duration, per chunk.",
            ["voice"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tts_inference_batch_size",
            "Chunks per inference call (more than one when batching).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encodes = Counter(
            "tts_encodes_total",
            "Audio encoded into a format (a stream or a file; cache hits are never re-encoded).",
            ["format"],
            registry=r,
        )
        self.encode_seconds = Counter(
            "tts_encode_seconds_total", "Time spent in the encoders.", ["format"], registry=r
        )
        self.cache_hits = Counter("tts_cache_hits_total", "Cache hits by tier.", ["tier"], registry=r)
        self.cache_misses = Counter("tts_cache_misses_total", "Lookups that found no tier.", registry=r)
        self.answers_again = Counter(
            "tts_answers_sent_again_total",
            "L1 hits answered with a kept answer, before any handler (also in requests and cache hits).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "tts_inference_queue_depth",
            "Chunks waiting for inference.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.active_streams = Gauge(
            "tts_active_streams", "Streams being sent.", multiprocess_mode="livesum", registry=r
        )
        self.redis_errors = Counter("tts_redis_errors_total", "Failed or skipped Redis calls.", registry=r)
        self.storage_errors = Counter(
            "tts_storage_write_errors_total", "Audio files that could not be written.", registry=r
        )
        self.store_errors = Counter(
            "tts_store_errors_total", "Failed or skipped object store calls.", registry=r
        )
        self.journal_replayed = Counter(
            "tts_journal_replayed_total",
            "Entries written to a shared tier after its outage.",
            ["tier"],
            registry=r,
        )
        self.journal_dropped = Counter(
            "tts_journal_dropped_total", "Journal entries dropped (journal full or file gone).", registry=r
        )
        self.wyoming_events = Counter(
            "tts_wyoming_events_total",
            "Wyoming events received, by type (unknown types as 'unknown') and outcome.",
            ["type", "outcome"],
            registry=r,
        )

        self.jobs = Counter(
            "tts_jobs_total",
            "Jobs by the status they reached (submitted, then a final one).",
            ["status"],
            registry=r,
        )
        self.jobs_queued = Gauge(
            "tts_jobs_queue_depth",
            "Jobs waiting in the queue, as this worker last saw it.",
            multiprocess_mode="max",
            registry=r,
        )
        self.job_seconds = Histogram(
            "tts_job_duration_seconds",
            "From a job's first start to its end (completed).",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
            registry=r,
        )
        self.job_sentences = Counter(
            "tts_job_sentences_total",
            "Sentences of jobs done, by where their audio came from (synthesized, or cached).",
            ["source"],
            registry=r,
        )
        self.job_sentence_seconds = Counter(
            "tts_job_sentence_seconds_total",
            "Time spent on job sentences (sentences per second = sentences_total / this).",
            registry=r,
        )

    def answered(self, route: str, status: int, seconds: float) -> None:
        """One request answered: counted by route and status, its latency by route."""
        children = self._answered.get((route, status))
        if children is None:
            children = self.requests.labels(route, str(status)), self.latency.labels(route)
            self._answered[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self._registry)
