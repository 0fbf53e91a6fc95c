"""Spec of `/docs`: Swagger UI from the bundled package, every file served by us (works offline),
showing every operation of `/openapi.json` (through its OpenAPI 3.0 rendition)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import swagger_ui_bundle
from playwright.sync_api import Browser, ConsoleMessage, Route, sync_playwright
from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

from tests.conftest import ServerProcess
from tests.test_player_browser import CHROMIUM, CHROMIUM_ARGS

SWAGGER = Path(str(swagger_ui_bundle.swagger_ui_path))
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
RENDER_TIMEOUT_MS = 60_000


def page_references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_docs_page_is_html_under_a_same_origin_csp(server):
    resp = server.get("/docs")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Content-Security-Policy"] == DOCS_CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_every_file_the_page_loads_is_served_by_us(server):
    html = server.get("/docs").body.decode()
    references = page_references(html)
    assert references == [
        "docs/assets/swagger-ui.css",
        "docs/assets/favicon-32x32.png",
        "docs/assets/swagger-ui-bundle.js",
        "docs/assets/docs.js",
    ]
    for reference in references:
        url = urljoin(f"{server.base}/docs", reference)
        assert urlsplit(url).netloc == urlsplit(server.base).netloc
        assert server.get(urlsplit(url).path).status == 200, reference


def test_swagger_ui_is_the_bundled_packages_own_file(server):
    resp = server.get("/docs/assets/swagger-ui-bundle.js")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=86400"
    assert resp.body == (SWAGGER / "swagger-ui-bundle.js").read_bytes()
    css = server.get("/docs/assets/swagger-ui.css")
    assert (css.status, css.headers["Content-Type"]) == (200, "text/css; charset=utf-8")
    assert css.body == (SWAGGER / "swagger-ui.css").read_bytes()


def test_an_asset_answers_304_to_its_own_etag(server):
    first = server.get("/docs/assets/favicon-16x16.png")
    again = server.get("/docs/assets/favicon-16x16.png", headers={"If-None-Match": first.headers["ETag"]})
    assert (first.status, first.headers["Content-Type"], again.status) == (200, "image/png", 304)


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "..%2Fdocs.html", "x"])
def test_any_other_file_is_a_json_404(server, name):
    resp = server.get(f"/docs/assets/{name}")
    assert resp.status == 404
    assert resp.json() == {"error": {"code": "not_found", "message": "no such file"}}


def test_the_page_script_reads_the_3_0_rendition_and_never_the_public_validator(server):
    script = server.get("/docs/assets/docs.js").body.decode()
    assert 'url: "docs/openapi-3.0.json"' in script
    assert "validatorUrl: null" in script


def test_the_3_0_rendition_is_a_valid_openapi_3_0_document_of_the_same_api(server):
    original = server.get("/openapi.json").json()
    rendition = server.get("/docs/openapi-3.0.json").json()
    assert rendition["openapi"] == "3.0.3"
    assert list(OPENAPI_30_VALIDATOR.iter_errors(rendition)) == []
    assert {path: set(item) for path, item in rendition["paths"].items()} == {
        path: set(item) for path, item in original["paths"].items()
    }
    assert set(rendition["components"]["schemas"]) == set(original["components"]["schemas"])
    text = json.dumps(rendition)
    assert '"const"' not in text
    assert '{"type": "null"}' not in text


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.browser
def test_swagger_ui_renders_every_operation_offline(browser: Browser, server: ServerProcess):
    errors: list[str] = []
    outside: list[str] = []
    context = browser.new_context()
    page = context.new_page()

    def only_this_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc == urlsplit(server.base).netloc:
            route.continue_()
        else:  # as if offline: nothing else is reachable
            outside.append(route.request.url)
            route.abort()

    def record(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.route("**/*", only_this_server)
    page.on("console", record)
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{server.base}/docs")
        page.wait_for_selector(".opblock", timeout=RENDER_TIMEOUT_MS)
        shown = page.eval_on_selector_all(
            ".opblock-summary",
            "blocks => blocks.map((b) => [b.querySelector('.opblock-summary-method').textContent,"
            " b.querySelector('.opblock-summary-path').getAttribute('data-path')])",
        )
        # Try it out: the page calls this server and shows the answer.
        health = page.locator("#operations-default-healthz")
        health.locator(".opblock-summary").click()
        health.locator(".try-out__btn").click()
        health.locator(".execute").click()
        health.locator(".live-responses-table tr.response .response-col_status").first.wait_for(
            timeout=RENDER_TIMEOUT_MS
        )
        status = health.locator(".live-responses-table tr.response .response-col_status").first.text_content()
        answer = health.locator(".live-responses-table tr.response .microlight").first.text_content()
    finally:
        context.close()
    document = server.get("/openapi.json").json()
    operations = sorted((method.upper(), path) for path, item in document["paths"].items() for method in item)
    assert sorted(tuple(block) for block in shown) == operations
    assert (status or "").strip() == "200"
    assert json.loads(answer or "") == {"status": "ok"}
    assert outside == []
    assert errors == []
