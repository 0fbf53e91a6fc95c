"""Who the client is and where it reached us: X-Forwarded-* believed only from trusted proxies."""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The first address, from the right, that is not a trusted proxy.

    Each proxy appends the address it received from; only the part of the chain added by our own
    proxies can be believed, so anything left of the first untrusted hop is ignored.
    """
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: fall back to the proxy itself
    return hops[0] if hops else peer


LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")


def default_allowed_hosts() -> frozenset[str]:
    """The loopback names and this machine's own names (no DNS: it may be slow or absent)."""
    name = socket.gethostname().lower()
    return frozenset({*LOOPBACK_NAMES, name, name.split(".")[0]})


def host_name(host: str) -> str:
    """The name part of a Host header: no port, no IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@functools.lru_cache(maxsize=1024)  # a pure function of its arguments, asked on every /tts
def request_origin(
    *,
    protocol: str,
    host: str,
    peer: str,
    forwarded_proto: str | None,
    forwarded_host: str | None,
    trusted: tuple[Network, ...],
    allowed: frozenset[str],
) -> str | None:
    """`scheme://host` for URLs built from the request, or None when the host is not allowed.

    X-Forwarded-Proto and -Host count only from a trusted proxy (a TLS-terminating ingress); the
    host must still be one we serve, so a forged Host never ends up in a URL we hand out.
    """
    if trusted and _trusted(peer, trusted):
        if forwarded_proto and forwarded_proto.split(",")[0].strip().lower() in ("http", "https"):
            protocol = forwarded_proto.split(",")[0].strip().lower()
        if forwarded_host:
            host = forwarded_host.split(",")[0].strip()
    if not host or host_name(host) not in allowed or any(c in host for c in "/\\@?# "):
        return None
    return f"{protocol}://{host}"
