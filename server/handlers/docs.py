"""`/openapi.json` (the OpenAPI document of this server's API) and `/docs` (Swagger UI over it).

Swagger UI's files come from the `swagger-ui-bundle` package (its version pinned by uv.lock) and
are served from here, under a Content-Security-Policy that lets the page load nothing from
elsewhere: the docs work offline.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Final

import swagger_ui_bundle
import tornado.web

from server.errors import NotFound
from server.handlers.base import BaseHandler
from server.openapi import Header, Reply, openapi_30, openapi_document, operation
from server.settings import Settings

STATIC: Final = Path(__file__).resolve().parent.parent / "static"
SWAGGER: Final = Path(str(swagger_ui_bundle.swagger_ui_path))
# Exactly the files the page uses: name -> (where, Content-Type).
ASSETS: Final = {
    "swagger-ui.css": (SWAGGER / "swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": (SWAGGER / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "favicon-32x32.png": (SWAGGER / "favicon-32x32.png", "image/png"),
    "favicon-16x16.png": (SWAGGER / "favicon-16x16.png", "image/png"),
    "docs.js": (STATIC / "docs.js", "text/javascript; charset=utf-8"),
}
# Same origin only; Swagger UI's icons are data: SVGs (its element styles are set through the
# CSSOM, which a policy does not block, so no 'unsafe-inline' is needed: the browser test checks).
DOCS_CSP: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
JSON_OBJECT: Final = {"application/json": {"type": "object"}}
BINARY: Final = {"type": "string", "format": "binary"}


@functools.cache
def asset(name: str) -> bytes:
    """A docs file, read once."""
    return ASSETS[name][0].read_bytes()


class OpenAPIHandler(BaseHandler):
    route = "/openapi.json"

    @operation(operation_id="openapi", replies={200: Reply("OpenAPI 3.1", JSON_OBJECT)})
    def get(self) -> None:
        """This document, with this server's limits and loaded voices."""
        self.write_json(self.document())

    def document(self) -> dict[str, Any]:
        voices = tuple(info.id for info in self.services.catalog.infos())
        return cached_document(self.application, self.services.settings, voices)


@functools.lru_cache(maxsize=4)
def cached_document(
    app: tornado.web.Application, settings: Settings, voices: tuple[str, ...]
) -> dict[str, Any]:
    """Made once per app, settings and loaded voices: pydantic's schema writing takes some 20 ms."""
    return openapi_document(app.wildcard_router.rules, settings, voices)


class OpenAPI30Handler(OpenAPIHandler):
    route = "/docs/openapi-3.0.json"

    @operation(
        operation_id="openapi30", replies={200: Reply("The same document as OpenAPI 3.0", JSON_OBJECT)}
    )
    def get(self) -> None:
        """The document as OpenAPI 3.0, for the bundled Swagger UI (which reads no 3.1)."""
        self.write_json(openapi_30(self.document()))


class DocsHandler(BaseHandler):
    route = "/docs"

    @operation(
        operation_id="docs",
        replies={
            200: Reply(
                "Swagger UI; every file it loads comes from this server",
                {"text/html": {"type": "string"}},
                {"Content-Security-Policy": Header("Same-origin only", True)},
            )
        },
    )
    def get(self) -> None:
        """Interactive documentation of this API (Swagger UI, offline)."""
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", DOCS_CSP)
        self.finish(docs_page())


@functools.cache
def docs_page() -> bytes:
    return (STATIC / "docs.html").read_bytes()


class DocsAssetHandler(BaseHandler):
    route = "/docs/assets"

    @operation(
        operation_id="docsAsset",
        path={"name": {"type": "string", "enum": sorted(ASSETS)}},
        replies={
            200: Reply(
                "The file",
                {"text/css": BINARY, "text/javascript": BINARY, "image/png": BINARY},
                {"ETag": Header("Validator of these bytes", True)},
            )
        },
        errors=(404,),
    )
    def get(self, name: str) -> None:
        """One of the files the docs page loads."""
        if name not in ASSETS:
            raise NotFound("no such file")
        self.set_header("Content-Type", ASSETS[name][1])
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish(asset(name))
