"""Admin API keys, checked in constant time.

Keys are compared as sha256 digests with `hmac.compare_digest`, so neither the content nor the
length of a configured key leaks through timing; every configured key is compared, always.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, candidate: str | None) -> bool:
        given = _digest(candidate or "")
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(given, digest)
        return found and candidate is not None

    @staticmethod
    def fingerprint(key: str) -> str:
        """A short, non-reversible name for a key (for rate-limit buckets and logs)."""
        return _digest(key).hex()[:16]
