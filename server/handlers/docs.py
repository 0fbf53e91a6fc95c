"""`/openapi.json`: the OpenAPI document of this server's API."""

from __future__ import annotations

from server.handlers.base import BaseHandler
from server.openapi import Reply, openapi_document, operation


class OpenAPIHandler(BaseHandler):
    route = "/openapi.json"

    @operation(
        operation_id="openapi", replies={200: Reply("OpenAPI 3.1", {"application/json": {"type": "object"}})}
    )
    def get(self) -> None:
        """This document, with this server's limits and loaded voices."""
        voices = [info.id for info in self.services.catalog.infos()]
        rules = self.application.wildcard_router.rules
        self.write_json(openapi_document(rules, self.services.settings, voices))
