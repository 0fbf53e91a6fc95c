"""`make_app(settings, services)`: the route table and Tornado settings, nothing else."""

from __future__ import annotations

import tornado.web

from server.handlers.admin import (
    AdminAudioHandler,
    AdminHandler,
    CleanupHandler,
    ConfigHandler,
    PurgeHandler,
    RuntimeHandler,
    StorageHandler,
)
from server.handlers.answers import AnswerMemo
from server.handlers.audio import AudioHandler
from server.handlers.base import NotFoundHandler
from server.handlers.captions import SrtHandler, VttHandler
from server.handlers.docs import DocsAssetHandler, DocsHandler, OpenAPI30Handler, OpenAPIHandler
from server.handlers.health import HealthHandler, MetricsHandler, ReadyHandler
from server.handlers.jobs import ROUTES as JOB_ROUTES
from server.handlers.player import PlayerHandler
from server.handlers.stream import StreamHandler
from server.handlers.tts import TTSHandler
from server.handlers.voices import VoicesHandler
from server.openai.handlers import ROUTES as OPENAI_ROUTES
from server.services import Services
from server.settings import Settings


def make_app(settings: Settings, services: Services) -> tornado.web.Application:
    routes = [
        (r"/", PlayerHandler),
        (r"/tts", TTSHandler),
        (r"/tts/stream", StreamHandler),
        (r"/audio/([^/]*)\.vtt", VttHandler),
        (r"/audio/([^/]*)\.srt", SrtHandler),
        (r"/audio/([^/]*)\.([^/.]*)", AudioHandler),
        (r"/voices", VoicesHandler),
        *JOB_ROUTES,
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler),
        (r"/metrics", MetricsHandler),
        (r"/openapi\.json", OpenAPIHandler),
        (r"/docs", DocsHandler),
        (r"/docs/openapi-3\.0\.json", OpenAPI30Handler),
        (r"/docs/assets/([^/]+)", DocsAssetHandler),
        *OPENAI_ROUTES,
        (r"/admin/storage", StorageHandler),
        (r"/admin/cleanup", CleanupHandler),
        (r"/admin/audio/([^/]*)", AdminAudioHandler),
        (r"/admin/purge", PurgeHandler),
        (r"/admin/config", ConfigHandler),
        (r"/admin/runtime", RuntimeHandler),
        (r"/admin/.*", AdminHandler),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        services=services,
        answers=AnswerMemo.for_services(services),
        compress_response=False,  # audio does not compress; JSON answers are small
        xheaders=False,
        serve_traceback=False,
        # BaseHandler writes its own JSON access line; Tornado's would add the query string,
        # that is the user's text, in plain text.
        log_function=lambda handler: None,
    )
