"""Probes and metrics: `/healthz` (alive), `/readyz` (ready to take traffic), `/metrics`."""

from __future__ import annotations

from server.handlers.base import BaseHandler
from server.metrics import CONTENT_TYPE
from server.openapi import Reply, operation
from server.schemas import Health, QueueReport, Readiness, dump


class HealthHandler(BaseHandler):
    route = "/healthz"

    @operation(
        operation_id="healthz", replies={200: Reply("The process answers", {"application/json": Health})}
    )
    def get(self) -> None:
        """Liveness: the IOLoop answers. Touches neither Redis nor the model."""
        self.write_json(dump(Health(status="ok")))


class ReadyHandler(BaseHandler):
    route = "/readyz"

    @operation(
        operation_id="readyz",
        replies={
            200: Reply("Ready", {"application/json": Readiness}),
            503: Reply("Loading, unready or draining", {"application/json": Readiness}),
        },
    )
    def get(self) -> None:
        """Readiness: voices loaded and warmed, not draining. Redis state is reported, not required."""
        services = self.services
        catalog = services.catalog
        if services.lifecycle.draining:
            status = "draining"
        elif catalog.ready and services.ready:
            status = "ready"
        elif catalog.problem or (catalog.ready and services.warmed):
            status = "unready"  # voices ready, but the object store has not answered yet
        else:
            status = "loading"
        store = services.cache.store.state if services.cache.store is not None else "disabled"
        redis = services.cache.redis.state
        degraded = [name for name, state in (("redis", redis), ("store", store)) if state == "degraded"]
        body = Readiness(
            status=status,  # type: ignore[arg-type]
            voices=[info.id for info in catalog.infos()],
            providers={info.id: info.provider for info in catalog.infos()},
            redis=redis,  # type: ignore[arg-type]
            store=store,  # type: ignore[arg-type]
            degraded=degraded or None,  # type: ignore[arg-type]
            problem=catalog.problem or None,
            jobs=QueueReport(**services.jobs.report()) if services.jobs is not None else None,
        )
        self.write_json(dump(body), 200 if services.ready else 503)


class MetricsHandler(BaseHandler):
    route = "/metrics"

    @operation(
        operation_id="metrics",
        replies={200: Reply("Text exposition format", {"text/plain": {"type": "string"}})},
    )
    def get(self) -> None:
        """Prometheus metrics, summed over this server's workers."""
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.services.metrics.render())
