"""Job webhooks: Standard Webhooks signatures, and no server-side request forgery.

A delivery POSTs the job as JSON with `webhook-id` (the same on every retry of one event),
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
keyed with TTS_WEBHOOK_SECRET (a `whsec_` prefix means the rest is the base64 key, as Standard
Webhooks' libraries expect). Only `https` URLs unless `jobs.allow_http_webhooks`; an address that
is loopback, link-local, private, multicast, reserved or unspecified is refused unless the host is
in `jobs.allowed_webhook_hosts`. The check runs on the addresses the name resolves to when the
connection is made (the HTTP client's resolver), so a name that changes its answer after the job
was accepted (DNS rebinding) still cannot reach an internal address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import DefaultLoopResolver, Resolver

from server.errors import InvalidRequest
from server.settings import JobsSettings

SECRET_PREFIX: Final = "whsec_"
USER_AGENT: Final = "tts-server-webhooks/1"


class WebhookRefused(InvalidRequest):
    """The URL may not be called: wrong scheme, or an address inside the network."""


def signing_key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    return secret.encode("utf-8")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    if secret:
        headers["webhook-signature"] = sign(secret, message_id, timestamp, body)
    return headers


def internal(address: str) -> bool:
    """Loopback, link-local, private, shared, multicast, reserved or unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


class WebhookPolicy:
    """Which webhook URLs and addresses may be called."""

    def __init__(self, settings: JobsSettings) -> None:
        self.allow_http = settings.allow_http_webhooks
        self.allowed_hosts = frozenset(host.lower().strip("[]") for host in settings.allowed_webhook_hosts)

    def check_url(self, url: str) -> str:
        """The URL's host, if its form may be called at all (scheme, host present); else WebhookRefused."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise WebhookRefused("webhook_url is not a valid URL", param="webhook_url") from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            raise WebhookRefused(f"webhook_url must use {' or '.join(schemes)}", param="webhook_url")
        if not parts.hostname:
            raise WebhookRefused("webhook_url has no host", param="webhook_url")
        if parts.username or parts.password:
            raise WebhookRefused("webhook_url may not carry credentials", param="webhook_url")
        return parts.hostname.lower()

    def check_addresses(self, host: str, addresses: Iterable[str]) -> None:
        if host.lower().strip("[]") in self.allowed_hosts:
            return
        for address in addresses:
            if internal(address):
                raise WebhookRefused(
                    f"webhook_url resolves to an internal address ({address}); "
                    "list the host in jobs.allowed_webhook_hosts to allow it",
                    param="webhook_url",
                )

    async def check(self, url: str, resolver: Resolver | None = None) -> None:
        """The whole check, resolving the name now (at submission; deliveries check again)."""
        host = self.check_url(url)
        port = urlsplit(url).port or (443 if url.startswith("https") else 80)
        try:
            found = await (resolver or DefaultLoopResolver()).resolve(host, port)
        except OSError:
            raise WebhookRefused(
                f"webhook_url's host {host!r} does not resolve", param="webhook_url"
            ) from None
        self.check_addresses(host, [str(address[0]) for _, address in found])


class GuardedResolver(Resolver):
    """Resolves like the default resolver, then refuses internal addresses for hosts not allowed."""

    def initialize(self, policy: WebhookPolicy) -> None:  # type: ignore[override]
        self._policy = policy
        self._resolver = DefaultLoopResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        found = await self._resolver.resolve(host, port, family)
        self._policy.check_addresses(host, [str(address[0]) for _, address in found])
        return found


class Sender:
    """POSTs signed webhook bodies through the guarded resolver."""

    def __init__(self, settings: JobsSettings, secret: str) -> None:
        self.policy = WebhookPolicy(settings)
        self._secret = secret
        self._timeout_s = settings.webhook_timeout_s
        self._client = AsyncHTTPClient(force_instance=True, resolver=GuardedResolver(policy=self.policy))

    async def send(self, url: str, message_id: str, body: bytes) -> int:
        """The receiver's status; raises WebhookRefused, or OSError/HTTPClientError on failure."""
        self.policy.check_url(url)
        request = HTTPRequest(
            url,
            method="POST",
            body=body,
            headers=signed_headers(self._secret, message_id, body),
            connect_timeout=self._timeout_s,
            request_timeout=self._timeout_s,
            follow_redirects=False,  # a redirect could point anywhere, past the address check
            validate_cert=True,
        )
        try:
            response = await self._client.fetch(request, raise_error=False)
        except HTTPClientError as exc:  # a timeout (599) among them
            raise OSError(f"webhook delivery failed: {exc}") from None
        return response.code

    def close(self) -> None:
        self._client.close()
