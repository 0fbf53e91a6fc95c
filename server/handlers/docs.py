"""`/openapi.json`: the OpenAPI document of this server's API."""

from __future__ import annotations

from server.handlers.base import BaseHandler
from server.openapi import openapi_document


class OpenAPIHandler(BaseHandler):
    route = "/openapi.json"

    def get(self) -> None:
        """The document, with this server's limits and loaded voices."""
        voices = [info.id for info in self.services.catalog.infos()]
        self.write_json(openapi_document(self.services.settings, voices))
