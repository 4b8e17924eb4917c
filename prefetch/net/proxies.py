"""Proxy routes: which proxies to use (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), which hosts bypass them,
and when a proxy itself failed (so the next one takes over) rather than relayed the origin's answer."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from prefetch.auth import redact_url
from prefetch.errors import BadProxyUrl, UsageError
from prefetch.net.connection import Pool, Response
from prefetch.urls import parse_proxy_url

log = logging.getLogger("prefetch")

PROXY_STATUS = frozenset({407, 502, 503, 504})
ORIGIN_MARKERS = ("x-request-id", "x-error-code", "x-repo-commit", "x-linked-etag", "etag", "content-range")


def checked_proxy_url(value: str, source: str) -> str:
    """`parse_proxy_url`, with a refusal as a usage error (exit 2) naming `source`, never the value."""
    try:
        return parse_proxy_url(value)
    except BadProxyUrl as e:
        raise UsageError(f"{source}: {e}") from None


@dataclass
class Route:
    proxy: str | None  # None: direct
    pool: Pool

    @property
    def label(self) -> str:
        return f"proxy {redact_url(self.proxy)}" if self.proxy else "direct"


def bypasses_proxy(host: str, no_proxy: str, port: int | None = None) -> bool:
    """Does NO_PROXY exempt `host`? Names match themselves and their subdomains (`.corp` or `corp`),
    `*` matches all, `host:port` only that port, and IP addresses also match CIDR blocks."""
    host = host.strip("[]").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for pattern in (p.strip().lower() for p in no_proxy.replace(" ", ",").split(",")):
        if not pattern:
            continue
        if pattern == "*":
            return True
        name, only_port = pattern, None
        match = re.fullmatch(r"(\[[^\]]+\]|[^:]+):(\d+)", pattern)
        if match:
            name, only_port = match.group(1), int(match.group(2))
        if only_port is not None and port is not None and only_port != port:
            continue
        name = name.strip("[]").lstrip(".")
        if address is not None and ("/" in name or ":" in name or name[:1].isdigit()):
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def credentials_hint(proxy: str | None) -> str:
    """Why a 407: the proxy wants credentials (none given) or refused the ones in its URL."""
    if proxy and urlsplit(proxy).username:
        return " (the proxy refused the credentials in its URL: check the user name and password)"
    return " (the proxy needs credentials: put them in the proxy URL, http://user:pass@host:port)"


def is_proxy_failure(response: Response) -> bool:
    """Did the proxy itself refuse (407, or a 5xx it generated rather than relayed)?"""
    if response.status_code == 407:
        return True
    if response.status_code not in PROXY_STATUS:
        return False
    headers = response.headers
    return "proxy-status" in headers or not any(h in headers for h in ORIGIN_MARKERS)


class Routes:
    """The run's routes in failover order, and the one in use: a failed proxy hands over to the
    next, and the run stays with the one that worked (sticky) instead of asking the dead one again."""

    def __init__(self, proxy_routes: list[Route], direct: Route, no_proxy: str) -> None:
        self.proxy_routes, self.direct, self.no_proxy = proxy_routes, direct, no_proxy
        self._current = 0
        self._lock = threading.Lock()

    def for_url(self, url: str) -> list[Route]:
        """The routes to try for `url`, in order: direct when NO_PROXY exempts its host."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        if not self.proxy_routes or bypasses_proxy(host, self.no_proxy, port):
            return [self.direct]
        with self._lock:
            start = self._current
        n = len(self.proxy_routes)
        return [self.proxy_routes[(start + i) % n] for i in range(n)]

    def stick_to(self, route: Route, failures: list[tuple[str, str]]) -> None:
        """`route` answered after `failures` of the routes before it: use it first from now on."""
        if route not in self.proxy_routes:
            return
        with self._lock:
            index = self.proxy_routes.index(route)
            if index != self._current:
                self._current = index
                reasons = "; ".join(f"{label}: {reason}" for label, reason in failures)
                log.warning("proxy failover: now using %s (%s)", route.label, reasons)

    def describe(self, endpoint: str) -> str:
        if not self.proxy_routes:
            return f"{endpoint} (direct)"
        return f"{endpoint} via " + ", ".join(r.label for r in self.proxy_routes)

    def close(self) -> None:
        for route in [*self.proxy_routes, self.direct]:
            route.pool.close()
