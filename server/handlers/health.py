"""Probes and metrics: `/healthz` (alive), `/readyz` (ready to take traffic), `/metrics`."""

from __future__ import annotations

from server.handlers.base import BaseHandler
from server.metrics import CONTENT_TYPE


class HealthHandler(BaseHandler):
    route = "/healthz"

    def get(self) -> None:
        """Liveness: the IOLoop answers. Touches neither Redis nor the model."""
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    route = "/readyz"

    def get(self) -> None:
        """Readiness: voices loaded and warmed, not draining. Redis state is reported, not required."""
        services = self.services
        catalog = services.catalog
        if services.lifecycle.draining:
            status = "draining"
        elif catalog.ready and services.ready:
            status = "ready"
        elif catalog.problem or catalog.ready:
            status = "unready"  # voices ready, but the object store has not answered yet
        else:
            status = "loading"
        body = {
            "status": status,
            "voices": [info.id for info in catalog.infos()],
            "providers": {info.id: info.provider for info in catalog.infos()},
            "redis": services.cache.redis.state,
            "store": services.cache.store.state if services.cache.store is not None else "disabled",
        }
        degraded = [tier for tier in ("redis", "store") if body[tier] == "degraded"]
        if degraded:
            body["degraded"] = degraded  # serving, but a shared tier is out: URLs may be local only
        if catalog.problem:
            body["problem"] = catalog.problem
        self.write_json(body, 200 if services.ready else 503)


class MetricsHandler(BaseHandler):
    route = "/metrics"

    def get(self) -> None:
        """Prometheus text format, summed over this server's workers."""
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.services.metrics.render())
