"""`/`: the browser player, one self-contained page under a strict Content-Security-Policy.

The page's only script and style are inline, so the policy allows exactly those two by their
SHA-256 hashes: nothing injected into the page, and no other file, can run or style it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from server.handlers.base import BaseHandler
from server.openapi import Header, Reply, operation

PAGE: Final = Path(__file__).resolve().parent.parent / "static" / "player.html"
# Attribute-less tags only: the hash must cover exactly the text the browser hashes.
NONE: Final = "'none'"
_INLINE: Final = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class PlayerPage:
    html: bytes
    csp: str


def _source_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


@functools.cache
def player_page() -> PlayerPage:
    """The page, read once, with the policy that admits its inline script and style."""
    html = PAGE.read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, source in _INLINE.findall(html):
        hashes[tag].append(_source_hash(source))
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(hashes['script']) or NONE}",
            f"style-src {' '.join(hashes['style']) or NONE}",
            "connect-src 'self'",
            "media-src 'self' blob:",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return PlayerPage(html=html.encode("utf-8"), csp=csp)


class PlayerHandler(BaseHandler):
    route = "/"

    @operation(
        operation_id="player",
        replies={
            200: Reply(
                "A self-contained page under a strict Content-Security-Policy",
                {"text/html": {"type": "string"}},
                {"Content-Security-Policy": Header("Hash-based policy", True)},
            )
        },
    )
    def get(self) -> None:
        """The browser player."""
        page = player_page()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", page.csp)
        self.finish(page.html)
