"""Rules about URLs that need no network: which hosts are this machine, and where a token may not go.

Pure string rules (nothing here resolves a name or opens a socket), so the pre-flight checks of a run
that makes no request do not load the network stack.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1, by the name as written: never resolved, so no DNS answer (or
    /etc/hosts entry) can make a remote host count as this machine."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_token_problem(url: str) -> str | None:
    """Why a token must not go to `url` (plain http to a host off this machine), or None."""
    parts = urlsplit(url)
    if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
        return None
    return f"refusing to send a token over plain http to {parts.hostname} (anyone on the path could read it)"
