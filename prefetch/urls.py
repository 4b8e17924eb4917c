"""Rules about URLs that need no network: proxy URLs as users write them (HTTPS_PROXY & co, `--proxy`,
a manifest's `proxies:`), which hosts are this machine, and where a token may not go.

Pure string rules (nothing here resolves a name or opens a socket), so the manifest can check its
`proxies:` and a run that makes no request can do its pre-flight checks without loading the network stack.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from prefetch.errors import BadProxyUrl

ENDPOINT_EXAMPLE = "https://huggingface.co"


def endpoint_problem(value: str) -> str | None:
    """Why `value` cannot be a Hub endpoint (an http(s) URL with a host, no query or fragment); None if
    it can. The message never quotes the value: it may carry credentials."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"expected an http(s) URL such as {ENDPOINT_EXAMPLE}"
    if parts.scheme not in ("http", "https"):
        return f"expected an http(s) URL such as {ENDPOINT_EXAMPLE}: start it with http:// or https://"
    if not parts.hostname or parts.query or parts.fragment or any(c.isspace() for c in value):
        return f"expected an http(s) URL such as {ENDPOINT_EXAMPLE}"
    return None


def loggable_url(url: str) -> str:
    """`url` as a log may show it: without its user info and query (`?…`): a CDN's signed URL carries its
    signature in the query, a proxy or mirror URL its password in the user info."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


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


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
_NAMED_SCHEMES = ("https", "socks4", "socks4a", "socks5", "socks5h", "ftp")  # safe to name back
PROXY_EXAMPLE = "http://[user:password@]proxy.example:3128"


def parse_proxy_url(value: str) -> str:
    """The proxy URL to use for `value` (from HTTPS_PROXY & co, `--proxy`, a manifest's `proxies:`).

    A scheme-less value means http://, as in curl and httpx. The one parser for every source, so a
    value is accepted, normalized and refused the same way wherever it comes from.
    """
    text = value.strip()
    if any(c.isspace() or not c.isprintable() for c in text):
        raise BadProxyUrl(f"the proxy URL contains spaces or control characters (expected {PROXY_EXAMPLE})")
    if "://" not in text:
        text = "http://" + text
    scheme, _, rest = text.partition("://")
    if scheme.lower() != "http":
        named = scheme.lower() if _SCHEME.fullmatch(scheme) and scheme.lower() in _NAMED_SCHEMES else None
        reason = f"expected an http URL such as {PROXY_EXAMPLE}" + (f", not {named}://" if named else "")
        if named == "https":
            reason += " (prefetch talks plain HTTP to proxies; https:// traffic still crosses them encrypted)"
        raise BadProxyUrl(reason)
    authority, remainder = re.fullmatch(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()  # type: ignore[union-attr]
    if "@" in remainder:
        raise BadProxyUrl(
            "the proxy user name or password contains an unescaped '/', '?' or '#': percent-encode it "
            "(%2F, %3F, %23)"
        )
    if remainder not in ("", "/"):
        raise BadProxyUrl(f"a proxy URL has no path, query or fragment (expected {PROXY_EXAMPLE})")
    host_port = authority.rpartition("@")[2]
    host, port = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(.*))?", host_port, re.DOTALL).groups()  # type: ignore[union-attr]
    if not host or not _HOST.fullmatch(host):
        raise BadProxyUrl(f"the proxy URL has no valid host name (expected {PROXY_EXAMPLE})")
    if port is not None and not (port.isdigit() and port.isascii() and 0 < int(port) <= 65535):
        raise BadProxyUrl("the proxy port must be a number from 1 to 65535")
    try:  # what every later reader of the URL will do with it (a stray '[' in a password breaks it)
        urlsplit(f"http://{authority}").port  # noqa: B018
    except ValueError:
        raise BadProxyUrl(
            "the proxy user name or password contains '[' or ']': percent-encode it (%5B, %5D)"
        ) from None
    return f"http://{authority}"


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of `url`, for messages: which server; never a password or a path."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}" + (f":{port}" if port else "")


def origin_key(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `url`, its port made explicit: two URLs are one origin (a credential's
    scope, a server that answered) when their keys are equal."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def same_origin(url: str, other: str) -> bool:
    return origin_key(url) == origin_key(other)
