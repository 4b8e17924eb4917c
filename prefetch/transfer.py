"""The transfer engine: owns HTTP, retries, proxies and the byte pipeline into the cache.

- `RetryPolicy`: one tenacity policy for every network call (metadata and bytes), honouring
  `Retry-After` / `RateLimit`, logging each retry once.
- `Http`: one connection pool per route (a proxy, or direct; `prefetch.httpclient`), sticky
  failover across proxies, manual redirects so the `Authorization` header never leaves the Hub's origin.
- `Transfer`: a bounded pool fetching files as parallel Range segments into one partial file
  per blob, with resumable on-disk state, streaming hash verification and atomic install; files
  under `SMALL_FILE` are fetched into memory and written once, verified.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import email.utils
import ipaddress
import itertools
import logging
import math
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import tenacity

from prefetch import __version__, settings
from prefetch.auth import Token, redact, redact_url
from prefetch.cache import BlobIndex, RepoCache, blob_hasher, hash_file
from prefetch.errors import (
    AccessError,
    DiskSpaceError,
    IntegrityError,
    NetworkError,
    PrefetchError,
    UsageError,
)
from prefetch.files import file_mode, fsync_dir, is_disk_full, start_writeback
from prefetch.httpclient import CertificateError, Headers, Pool, ProxyError, Response, TransportError
from prefetch.manifest import RetrySettings

log = logging.getLogger("prefetch")
T = TypeVar("T")

CHUNK = 1024 * 1024  # bytes read per pwrite at most; a kill -9 loses at most this much per connection
FLUSH_AFTER = 0.5  # seconds: a slow connection's bytes are written (and reported) at least this often
SAVE_STATE_EVERY = CHUNK  # resume state is saved after every chunk: a rerun re-fetches at most one chunk
SYNC_EVERY = 64 * CHUNK  # partial data is fdatasync'ed this often, so resume also survives a reboot
SMALL_FILE = CHUNK  # files below this size are fetched into memory and written once, without resume state
FILE_HEADERS = {"accept-encoding": "identity"}  # byte offsets and hashes are of the stored bytes
MAX_URL_REFRESHES = 5  # signed CDN URLs that expire mid-download are asked for again at most this often
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
PROXY_STATUS = frozenset({407, 502, 503, 504})
ORIGIN_MARKERS = ("x-request-id", "x-error-code", "x-repo-commit", "x-linked-etag", "etag", "content-range")
CONNECT_TIMEOUT = 10.0  # seconds to connect (TLS handshake and proxy tunnel included)
READ_TIMEOUT = 60.0  # seconds without a byte from the server

HeaderLookup = Headers | Mapping[str, str]

_SHUTDOWN = threading.Event()


def interrupt() -> None:
    """Make every retry wait, lock wait and transfer of this process stop at its next check.

    For process shutdown (Ctrl-C, SIGTERM): only the main thread sees KeyboardInterrupt, and a
    worker thread waiting out a backoff would otherwise keep the process alive until its retries
    run out. Call it from the signal handler, before raising KeyboardInterrupt.
    """
    _SHUTDOWN.set()


def interrupted() -> bool:
    return _SHUTDOWN.is_set()


# ---------------------------------------------------------------------------------------------- errors
class HttpStatusError(Exception):
    """A non-success answer from the Hub or CDN, with the Hub's `X-Error-Code` when it sent one."""

    def __init__(self, url: str, status: int, error_code: str | None, message: str, headers: HeaderLookup):
        self.url, self.status, self.error_code, self.message = url, status, error_code, message
        self.retry_after = retry_after_seconds(headers) if status in (429, 503) else None
        super().__init__(f"{status} from {urlsplit(url).path}" + (f": {message}" if message else ""))


class ProxyRoutesFailed(Exception):
    """Every route (proxy) failed for one request; each failure is kept for the final message.

    `permanent` when every proxy refused our credentials (407): retrying cannot help, so fail fast.
    """

    def __init__(self, failures: list[tuple[str, str]], permanent: bool = False):
        self.failures = failures
        self.permanent = permanent
        super().__init__("; ".join(f"{route}: {reason}" for route, reason in failures))


class TruncatedBody(Exception):
    """The connection ended before the promised bytes arrived (retryable; resumes where it stopped)."""


class RangeIgnored(Exception):
    """The server answered 200 to a Range request: the file must start over as a single stream."""


class Cancelled(Exception):
    """Another task failed fatally or the user interrupted: stop at the next chunk."""


class StaleUrl(Exception):
    """A signed CDN URL was refused (expired): it was asked for again, so the request is retried."""


class BadBytes(Exception):
    """The server sent bytes that cannot be this file (too many, wrong total): treated as a mismatch."""


_RATELIMIT_RESET = (
    re.compile(r"(?:^|[;,])\s*t\s*=\s*(\d+(?:\.\d+)?)"),  # RateLimit: "api";r=0;t=55 (IETF draft 08+)
    re.compile(r"(?:^|[;,])\s*reset\s*=\s*(\d+(?:\.\d+)?)"),  # RateLimit: limit=10, remaining=0, reset=5
)


def retry_after_seconds(headers: HeaderLookup) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date) or `RateLimit` / `RateLimit-Reset`."""
    value = (headers.get("retry-after") or "").strip()
    if value:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    value = headers.get("ratelimit") or ""
    for pattern in _RATELIMIT_RESET:
        match = pattern.search(value)
        if match:
            return float(match.group(1))
    match = re.match(r"\s*(\d+(?:\.\d+)?)\s*$", headers.get("ratelimit-reset") or "")
    return float(match.group(1)) if match else None


def is_retryable(exc: BaseException) -> bool:
    """Transient failures: connection errors, timeouts, resets mid-body, 408/429/5xx, expired CDN URLs.

    Not a TLS certificate that does not verify: that needs a fix (SSL_CERT_FILE), not a retry.
    """
    if isinstance(exc, HttpStatusError):
        return exc.status in RETRYABLE_STATUS
    if isinstance(exc, ProxyRoutesFailed):
        return not exc.permanent
    if isinstance(exc, CertificateError):
        return False
    return isinstance(exc, TransportError | TruncatedBody | StaleUrl)


def describe(exc: BaseException) -> str:
    """A one-line reason for logs, free of secrets."""
    if isinstance(exc, HttpStatusError | ProxyRoutesFailed | TruncatedBody | StaleUrl):
        return redact(str(exc))
    return redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


# ---------------------------------------------------------------------------------------------- retries
class RetryPolicy:
    """Exponential backoff with jitter, capped per wait, bounded in attempts and total time.

    A server's `Retry-After` / `RateLimit` hint (429, 503) replaces the backoff; when the hint
    points past the total time budget there is no point in waiting, so the call fails at once.
    """

    def __init__(self, settings: RetrySettings, on_retry: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_retry = on_retry

    def backoff(self, attempt: int) -> float:
        """0.25 s doubling per attempt, capped at `max_wait`, with "equal jitter" (half fixed, half
        random) so that many clients failing together do not retry together."""
        base = min(self.settings.max_wait, 0.25 * 2 ** min(attempt - 1, 32))
        return base / 2 + random.uniform(0, base / 2)

    def _remaining(self, state: tenacity.RetryCallState) -> float:
        return self.settings.max_time - (state.seconds_since_start or 0.0)

    @staticmethod
    def _hint(state: tenacity.RetryCallState) -> float | None:
        exc = state.outcome.exception() if state.outcome else None
        return getattr(exc, "retry_after", None)

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.settings.attempts or self._remaining(state) <= 0:
            return True
        hint = self._hint(state)
        if hint is not None and hint > self._remaining(state):
            log.warning(
                "giving up: the server asked to wait %.0fs, beyond the retry time budget (retry.max_time %ss)",
                hint,
                self.settings.max_time,
            )
            return True
        return False

    def _wait(self, state: tenacity.RetryCallState) -> float:
        hint = self._hint(state)
        wait = hint if hint is not None else self.backoff(state.attempt_number)  # a server hint wins
        return max(0.0, min(wait, self._remaining(state)))

    def call(
        self,
        fn: Callable[[], T],
        what: str | Callable[[], str],
        cancel: threading.Event | None = None,
    ) -> T:
        """Run `fn` until it succeeds, fails for good, or the bounds are reached; log each retry once.

        `what` names the request in the log (a callable is asked at each retry, e.g. for the byte
        position a resumed download restarts from); a set `cancel` ends the wait between attempts.
        """

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            label = what() if callable(what) else what
            message = (
                f"retry {state.attempt_number}/{self.settings.attempts - 1} in {wait:.1f}s: "
                f"{label}: {describe(exc) if exc else '?'}"
            )
            log.warning(message)
            if self.on_retry:
                self.on_retry(message)

        def sleep(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while True:
                if _SHUTDOWN.is_set() or (cancel is not None and cancel.is_set()):
                    raise Cancelled()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if cancel is None:
                    _SHUTDOWN.wait(remaining)
                else:  # two events to watch: wait on the run's, look at the process's often
                    cancel.wait(min(remaining, 0.1))

        def attempt() -> T:
            if _SHUTDOWN.is_set():
                raise Cancelled()
            return fn()

        retrying = tenacity.Retrying(
            stop=self._stop,
            wait=self._wait,
            retry=tenacity.retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Exception as e:
            if is_retryable(e):  # gave up on a transient failure: say how hard we tried
                with contextlib.suppress(AttributeError):
                    e.prefetch_attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
            raise


# ---------------------------------------------------------------------------------------------- http
@dataclass
class Route:
    proxy: str | None  # None: direct
    pool: Pool

    @property
    def label(self) -> str:
        return f"proxy {redact_url(self.proxy)}" if self.proxy else "direct"


def proxies_from_env(env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """Moved to `prefetch.settings.proxies` (kept only until the coordinator's merge)."""
    return settings.proxies(env)


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


class Http:
    """HTTP for the whole run: routes, retries, and the rule that tokens stay on the Hub's origin."""

    def __init__(
        self,
        endpoint: str,
        proxies: list[str],
        retry: RetryPolicy,
        *,
        no_proxy: str = "",
        pool_size: int = 16,
        offline: bool = False,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.retry = retry
        self.no_proxy = no_proxy
        self.offline = offline

        def pool(proxy: str | None) -> Pool:
            try:
                return Pool(
                    proxy,
                    user_agent=f"prefetch/{__version__}",
                    max_idle=pool_size,
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                )
            except ValueError as e:
                raise UsageError(f"proxy {redact_url(proxy or '')}: {e}") from None

        for proxy in proxies:
            redact_url(proxy)  # registers its password as a secret
        self.proxy_routes = [Route(p, pool(p)) for p in proxies]
        self.direct = Route(None, pool(None))
        self._current = 0
        self._lock = threading.Lock()
        self.requests = 0

    def close(self) -> None:
        for route in [*self.proxy_routes, self.direct]:
            route.pool.close()

    def describe_routes(self) -> str:
        if not self.proxy_routes:
            return f"{self.endpoint} (direct)"
        return f"{self.endpoint} via " + ", ".join(r.label for r in self.proxy_routes)

    def _routes_for(self, url: str) -> list[Route]:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        if not self.proxy_routes or bypasses_proxy(host, self.no_proxy, port):
            return [self.direct]
        with self._lock:
            start = self._current
        n = len(self.proxy_routes)
        return [self.proxy_routes[(start + i) % n] for i in range(n)]

    def _stick_to(self, route: Route, failures: list[tuple[str, str]]) -> None:
        if route not in self.proxy_routes:
            return
        with self._lock:
            index = self.proxy_routes.index(route)
            if index != self._current:
                self._current = index
                reasons = "; ".join(f"{label}: {reason}" for label, reason in failures)
                log.warning("proxy failover: now using %s (%s)", route.label, reasons)

    def _send_once(self, method: str, url: str, headers: dict[str, str]) -> Response:
        """One attempt over the routes: a failing proxy hands over to the next one.

        A proxy fails when it cannot be reached, breaks the connection or tunnel before an answer,
        or answers 407 / a 502-504 of its own; an answer relayed from the origin is not its failure.
        """
        if self.offline:
            raise PrefetchError(f"internal: network request attempted in offline mode: {method} {url}")
        failures: list[tuple[str, str]] = []
        needs_credentials = 0
        for route in self._routes_for(url):
            try:
                with self._lock:
                    self.requests += 1
                response = route.pool.request(method, url, headers)
            except TransportError as e:
                # Not a proxy's failure: no route left to try, or a certificate no other proxy verifies either.
                if route.proxy is None or isinstance(e, CertificateError):
                    raise
                reason = describe(e)
                if isinstance(e, ProxyError) and e.status == 407:  # CONNECT refused (https)
                    needs_credentials += 1
                    reason += _credentials_hint(route.proxy)
                failures.append((route.label, reason))
                continue
            if route.proxy is not None and _is_proxy_failure(response):
                reason = f"answered {response.status_code} {response.reason_phrase}"
                if response.status_code == 407:
                    needs_credentials += 1
                    reason += _credentials_hint(route.proxy)
                response.close()
                failures.append((route.label, reason))
                continue
            self._stick_to(route, failures)
            return response
        raise ProxyRoutesFailed(failures, permanent=needs_credentials == len(failures))

    def open(self, url: str, token: Token | None, headers: dict[str, str] | None = None) -> Response:
        """GET `url` (one attempt), following redirects by hand; the token only goes to the Hub's origin.

        Returns a streaming response with a 2xx status; raises HttpStatusError otherwise.
        """
        for _ in range(5):
            response = self._send_once("GET", url, {**(headers or {}), **self._auth(url, token)})
            if response.is_redirect:
                location = response.headers.get("location", "")
                response.close()
                url = urljoin(url, location)
                continue
            if response.status_code >= 400:
                raise _status_error(url, response)
            return response
        raise HttpStatusError(url, 310, None, "too many redirects", {})

    def locate(self, url: str, token: Token | None) -> str:
        """Where the bytes of `url` are served: the CDN URL a Hub 302 points to, or `url` itself."""

        def attempt() -> str:
            response = self._send_once("GET", url, {**FILE_HEADERS, **self._auth(url, token)})
            try:
                if response.is_redirect:
                    return urljoin(url, response.headers.get("location", ""))
                if response.status_code >= 400:
                    raise _status_error(url, response)
                return url
            finally:
                response.close()

        return self.retry.call(attempt, f"GET {urlsplit(url).path}")

    def head(self, url: str, token: Token | None) -> Headers:
        """HEAD `url` with retries, redirects not followed (a 3xx is an answer); HttpStatusError if >= 400."""

        def attempt() -> Headers:
            response = self._send_once("HEAD", url, self._auth(url, token))
            if response.status_code >= 400:
                raise _status_error(url, response)
            response.close()
            return response.headers

        return self.retry.call(attempt, f"HEAD {urlsplit(url).path}")

    def _auth(self, url: str, token: Token | None) -> dict[str, str]:
        """The Authorization header, for the Hub's own origin only (never a CDN or another host)."""
        if token is None or not _same_origin(url, self.endpoint):
            return {}
        return {"authorization": f"Bearer {token.value}"}

    def get_json(self, url: str, token: Token | None) -> tuple[Any, Headers]:
        """GET a Hub API URL and parse its JSON, with retries."""

        def attempt() -> tuple[Any, Headers]:
            with contextlib.closing(self.open(url, token)) as response:
                return response.json(), response.headers

        return self.retry.call(attempt, f"GET {urlsplit(url).path}")


def _credentials_hint(proxy: str | None) -> str:
    """Why a 407: the proxy wants credentials (none given) or refused the ones in its URL."""
    if proxy and urlsplit(proxy).username:
        return " (the proxy refused the credentials in its URL: check the user name and password)"
    return " (the proxy needs credentials: put them in the proxy URL, http://user:pass@host:port)"


def _same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _is_proxy_failure(response: Response) -> bool:
    """Did the proxy itself refuse (407, or a 5xx it generated rather than relayed)?"""
    if response.status_code == 407:
        return True
    if response.status_code not in PROXY_STATUS:
        return False
    headers = response.headers
    return "proxy-status" in headers or not any(h in headers for h in ORIGIN_MARKERS)


def _status_error(url: str, response: Response) -> HttpStatusError:
    try:
        body = response.json()
        message = body.get("error", "") if isinstance(body, dict) else ""
    except (ValueError, TransportError):
        message = ""
    finally:
        response.close()
    message = response.headers.get("x-error-message") or message or response.reason_phrase
    return HttpStatusError(
        url, response.status_code, response.headers.get("x-error-code"), str(message), response.headers
    )


def network_error(exc: BaseException, http: Http, what: str) -> PrefetchError:
    """The typed error for a network call that failed for good."""
    if isinstance(exc, HttpStatusError) and exc.status in (401, 403, 404):
        return AccessError(f"{what}: {exc}")
    if isinstance(exc, ProxyRoutesFailed):
        lines = "\n".join(f"  - {route}: {reason}" for route, reason in exc.failures)
        return NetworkError(f"{what}: every proxy failed (endpoint {http.endpoint}):\n{lines}")
    attempts = getattr(exc, "prefetch_attempts", None)
    gave_up = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}; " if attempts else ""
    return NetworkError(f"{what}: {describe(exc)} ({gave_up}tried {http.describe_routes()})")


# ---------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class FileJob:
    """One blob to bring into the cache."""

    cache: RepoCache
    url: str  # /resolve/{commit}/{path} on the Hub
    token: Token | None
    etag: str
    size: int
    lfs: bool  # etag is a sha256 of the content (else a git blob sha1)
    label: str  # `org/name:path`, for messages

    def new_hash(self) -> Any:
        return blob_hasher(self.lfs, self.size)


class RangeSet:
    """Sorted, merged [start, end) byte ranges."""

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self.ranges: list[tuple[int, int]] = []
        for a, b in ranges or []:
            self.add(a, b)

    def add(self, start: int, end: int) -> None:
        merged = []
        for a, b in self.ranges:
            if b < start or a > end:
                merged.append((a, b))
            else:
                start, end = min(a, start), max(b, end)
        merged.append((start, end))
        self.ranges = sorted(merged)

    def covered_from(self, offset: int) -> int:
        """End of the contiguous covered run that starts at `offset` (== offset when none)."""
        for a, b in self.ranges:
            if a <= offset < b:
                return b
        return offset

    def missing(self, size: int) -> list[tuple[int, int]]:
        gaps, pos = [], 0
        for a, b in self.ranges:
            if a > pos:
                gaps.append((pos, a))
            pos = max(pos, b)
        if pos < size:
            gaps.append((pos, size))
        return gaps

    def total(self) -> int:
        return sum(b - a for a, b in self.ranges)


class PartialFile:
    """The partial file of one blob: positional writes from many segments, resume state, running hash.

    The hash advances over the contiguous prefix as soon as it is written (from memory when the
    chunk is next in line, else by reading back what other segments wrote), so a file is verified
    as it streams and a resumed file re-hashes only its kept prefix.

    The state file is saved after every chunk (a killed process loses at most one chunk per
    connection); every `SYNC_EVERY` bytes the data is fdatasync'ed and the ranges covered so far are
    recorded as `synced`, which is what a run after a reboot trusts.
    """

    def __init__(self, job: FileJob, done: list[tuple[int, int]]) -> None:
        self.job = job
        path = job.cache.partial_path(job.etag)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Group-writable where the umask allows it, so another user of a shared cache can resume it.
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        except PermissionError:  # left by a user whose umask kept it private: start it over
            log.warning("%s: cannot reopen the partial file of another user; starting it over", job.label)
            job.cache.discard_partial(job.etag)
            done = []
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            os.ftruncate(self.fd, job.size)
        except OSError:
            os.close(self.fd)
            raise
        self.done = RangeSet(done)
        self._synced: list[tuple[int, int]] = []
        self._hash = job.new_hash()
        self._hashed = 0
        self._unsaved = 0
        self._unsynced = 0
        self._version = 0  # bumped by every change of `done` or `_synced`
        self._saved_version = 0  # the change the state file on disk includes
        self._readback: bytearray | None = None
        self._lock = threading.Lock()
        self._hash_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._state_lock = threading.Lock()

    def write(self, offset: int, data: memoryview) -> None:
        """Write `data` at `offset` and record it as done; hash it while it is in memory if next in line.

        A short write (nearly full disk) is continued from where it stopped.
        """
        size = len(data)
        try:
            written = 0
            while written < size:
                written += os.pwrite(self.fd, data[written:], offset + written)
            start_writeback(self.fd, offset, size)
        except OSError as e:
            if is_disk_full(e):
                raise self._disk_full() from e
            raise
        with self._lock:
            self.done.add(offset, offset + size)
            self._version += 1
            version = self._version
            self._unsaved += size
            self._unsynced += size
            must_save = self._unsaved >= SAVE_STATE_EVERY
            must_sync = self._unsynced >= SYNC_EVERY
        if must_sync:
            self._sync()
        if must_save:
            self._save_state(version)
        if self._hash_lock.acquire(blocking=False):
            try:
                self._advance_hash(offset, data)
            finally:
                self._hash_lock.release()

    def _sync(self) -> None:
        """fdatasync the data, then record what it covered as `synced` (one thread at a time)."""
        if not self._sync_lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                covered = list(self.done.ranges)
                self._unsynced = 0
            os.fdatasync(self.fd)
            with self._lock:
                self._synced = covered
                self._version += 1
                version = self._version
            self._save_state(version)
        except OSError as e:
            if is_disk_full(e):
                raise self._disk_full() from e
            raise
        finally:
            self._sync_lock.release()

    def _disk_full(self) -> DiskSpaceError:
        return DiskSpaceError(
            f"disk full while writing {self.job.label} into {self.job.cache.root}; the partial download "
            "is kept: free some space and run again to resume it"
        )

    def _save_state(self, version: int) -> None:
        """Save a state that includes change `version`, unless a save since then already did.

        The file I/O runs outside `_lock`, so other segments keep writing meanwhile; saves are
        serialized, and one that waited finds its change saved by the one before it, often.
        """
        with self._state_lock:
            with self._lock:
                if self._saved_version >= version:
                    return
                version, done, synced = self._version, list(self.done.ranges), list(self._synced)
                self._unsaved = 0
            try:
                self.job.cache.write_partial_state(self.job.etag, self.job.size, done, synced)
            except DiskSpaceError as e:
                raise self._disk_full() from e
            self._saved_version = version

    def _advance_hash(self, offset: int = -1, data: memoryview | None = None) -> None:
        if offset == self._hashed and data is not None:
            self._hash.update(data)
            self._hashed += len(data)
        while True:
            with self._lock:
                end = self.done.covered_from(self._hashed)
            if end <= self._hashed:
                return
            if self._readback is None:  # one buffer, reused: fresh pages cost more than the read
                self._readback = bytearray(min(8 * CHUNK, self.job.size))
            view = memoryview(self._readback)[: min(end - self._hashed, len(self._readback))]
            n = os.preadv(self.fd, [view], self._hashed)
            if n <= 0:
                raise TruncatedBody(f"{self.job.label}: the partial file is shorter than recorded")
            self._hash.update(view[:n])
            self._hashed += n

    def digest(self) -> str:
        with self._hash_lock:
            self._advance_hash()
            if self._hashed != self.job.size:
                raise TruncatedBody(f"{self.job.label}: only {self._hashed} of {self.job.size} bytes written")
            return self._hash.hexdigest()

    def close(self, keep_state: bool = True) -> None:
        """Close the file; with `keep_state`, make the data durable and save the final state for resume."""
        try:
            if keep_state and (self._unsaved or self._unsynced):
                with self._lock:
                    covered = list(self.done.ranges)
                try:
                    os.fdatasync(self.fd)
                except OSError:  # the state still holds for a rerun in this boot; not after a reboot
                    covered = self._synced
                with self._lock:
                    self._synced = covered
                    self._unsynced = 0
                    self._version += 1
                    version = self._version
                self._save_state(version)
        finally:
            os.close(self.fd)


@dataclass
class TransferStats:
    files_fetched: int = 0
    files_linked: int = 0
    files_cached: int = 0
    bytes_fetched: int = 0
    errors: list[PrefetchError] = field(default_factory=list)


class Reporter:
    """What the engine tells the outside world; `prefetch.progress` implements the displays."""

    def file_started(self, job: FileJob) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self, job: FileJob, how: str) -> None: ...
    def retry(self, message: str) -> None: ...


class Transfer:
    """Fetch many blobs with `jobs` concurrent connections; big ones as parallel Range segments."""

    def __init__(
        self,
        http: Http,
        *,
        jobs: int = settings.DEFAULT_JOBS,
        segment_threshold: int = settings.DEFAULT_SEGMENT_THRESHOLD,
        segment_size: int = settings.DEFAULT_SEGMENT_SIZE,
        reporter: Reporter | None = None,
    ) -> None:
        self.http = http
        self.jobs = max(1, jobs)
        self.segment_threshold = segment_threshold
        self.segment_size = segment_size
        self.reporter = reporter or Reporter()
        self.cancel = threading.Event()
        self.stats = TransferStats()
        self._slots = threading.BoundedSemaphore(self.jobs)
        self._buffers = _Buffers(CHUNK)
        self._blob_index = BlobIndex()
        self._stats_lock = threading.Lock()
        self._blob_folders: set[Path] = set()  # renamed blobs into these: fsync them before `run` returns

    # -- the pool ---------------------------------------------------------------------------------
    def run(self, jobs: list[FileJob]) -> TransferStats:
        """Fetch every job; raises the most severe error after the others finished or stopped."""
        ordered = sorted(jobs, key=lambda j: -j.size)  # big files first: their segments fill the pool
        files = cf.ThreadPoolExecutor(max_workers=self.jobs * 2, thread_name_prefix="prefetch-file")
        self._segments = _SegmentPool(self.jobs)
        try:
            futures = {files.submit(self._fetch_file, job): job for job in ordered}
            # as_completed waits on all futures at once; cf.wait in a loop would re-register a
            # waiter on every pending future per completion: quadratic in the number of files.
            for future in cf.as_completed(futures):
                exc = future.exception()
                if exc is not None:
                    self._failed(exc, futures[future])
        except BaseException:
            self.cancel.set()
            raise
        finally:
            files.shutdown(wait=True, cancel_futures=True)
            self._segments.shutdown()
            self._sync_blob_folders()
        if self.stats.errors:
            raise _most_severe(self.stats.errors)
        return self.stats

    def _installed(self, job: FileJob) -> None:
        self._blob_index.add(job.cache, job.etag)
        with self._stats_lock:
            self._blob_folders.add(job.cache.blobs)

    def _sync_blob_folders(self) -> None:
        """Make this run's blob renames durable: once per folder, not once per blob, and before the
        caller writes snapshot links to them (a link must never outlive its blob's rename)."""
        with self._stats_lock:
            folders, self._blob_folders = self._blob_folders, set()
        for folder in sorted(folders):
            fsync_dir(folder)

    def _failed(self, exc: BaseException, job: FileJob) -> None:
        if isinstance(exc, Cancelled):
            return
        if not isinstance(exc, PrefetchError):
            if is_disk_full(exc):  # a full disk anywhere in the pipeline (state, fsync, rename) is exit 8
                exc = DiskSpaceError(f"disk full while downloading {job.label} into {job.cache.root}: {exc}")
            elif is_retryable(exc) or isinstance(exc, HttpStatusError | TransportError):
                exc = network_error(exc, self.http, f"downloading {job.label}")
            else:
                exc = PrefetchError(f"downloading {job.label}: {describe(exc)}")
        self.stats.errors.append(exc)
        if not isinstance(exc, IntegrityError):  # network/access/disk problems stop everything else
            self.cancel.set()

    # -- one file ---------------------------------------------------------------------------------
    def _check_cancel(self) -> None:
        if self.cancel.is_set() or _SHUTDOWN.is_set():
            raise Cancelled()

    def _fetch_file(self, job: FileJob) -> None:
        cache = job.cache
        self._check_cancel()
        if cache.has_blob(job.etag, job.size) and not cache.has_partial(job.etag):
            return self._done(job, "cached")
        with cache.blob_lock(job.etag, interrupt=self._check_cancel):
            if cache.has_blob(job.etag, job.size):  # another process fetched it while we waited
                cache.discard_partial(job.etag)  # our own earlier partial of it is garbage now
                return self._done(job, "cached")
            if self._link_from_other_repo(job):
                return self._done(job, "linked")
            self.reporter.file_started(job)
            small = job.size < SMALL_FILE and not cache.has_partial(job.etag)
            for attempt in (1, 2):
                if (self._download_small(job) if small else self._download(job)) == job.etag:
                    self._installed(job)
                    return self._done(job, "fetched")
                cache.discard_partial(job.etag)  # never resume from bytes that failed their hash
                if attempt == 1:
                    message = f"hash mismatch for {job.label}: discarded, fetching it again"
                    log.warning(message)
                    self.reporter.retry(message)
            raise IntegrityError(
                f"{job.label}: downloaded bytes do not match the expected hash {job.etag} twice; nothing was "
                "stored. The server or a proxy is corrupting data."
            )

    def _done(self, job: FileJob, how: str) -> None:
        with self._stats_lock:
            if how == "fetched":
                self.stats.files_fetched += 1
            elif how == "linked":
                self.stats.files_linked += 1
            else:
                self.stats.files_cached += 1
        self.reporter.file_done(job, how)

    def _link_from_other_repo(self, job: FileJob) -> bool:
        """Hard-link a verified identical blob from another repo instead of downloading it again."""
        source = self._blob_index.find_elsewhere(job.cache, job.etag, job.size)
        if source is None:
            return False
        if hash_file(source, job.lfs, job.size)[1] != job.etag:
            return False
        partial = job.cache.partial_path(job.etag)
        job.cache.discard_partial(job.etag)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, partial)
        except OSError:
            return False
        os.replace(partial, job.cache.blob_path(job.etag))
        self._installed(job)
        return True

    def _download(self, job: FileJob) -> str | None:
        """Bring the partial file to full size and install it as the blob if its hash matches.

        Returns the hash (None: the server sent bytes that cannot be this file).
        """
        done = job.cache.read_partial_state(job.etag, job.size)
        partial = PartialFile(job, done)
        digest: str | None = None
        try:
            source = _Source(self.http, job)
            done = partial.done.ranges
            missing = partial.done.missing(job.size)
            if done:
                log.info(
                    "resuming %s: %d of %d bytes already on disk", job.label, partial.done.total(), job.size
                )
                self.reporter.advance(partial.done.total())
            try:
                self._run_segments(job, partial, source, self._split(missing, job.size), use_range=True)
            except RangeIgnored:
                log.warning("%s: server ignored the Range request; starting the file over", job.label)
                partial.close(keep_state=False)
                job.cache.discard_partial(job.etag)
                partial = PartialFile(job, [])
                self._run_segments(job, partial, source, [(0, job.size)], use_range=False)
            digest = partial.digest()
        except BadBytes as e:
            log.warning("%s", e)
            return None
        finally:
            # Resume state only for a rerun's sake: a hashed file is either installed (its fsync
            # makes it durable) or discarded.
            partial.close(keep_state=digest is None)
        if digest == job.etag:
            job.cache.install_blob(job.etag, sync_folder=False)
        return digest

    def _download_small(self, job: FileJob) -> str | None:
        """Fetch a small file into memory; install it as the blob once its hash matched.

        Per file this saves the resume state, the per-chunk bookkeeping and the read-back: for
        thousands of small files, the filesystem work was most of the time.
        """
        memory = _MemoryFile(job.size)
        try:
            self._fetch_segment(job, memory, _Source(self.http, job), 0, job.size, use_range=False)
        except BadBytes as e:
            log.warning("%s", e)
            return None
        h = job.new_hash()
        h.update(memory.data)
        digest = h.hexdigest()
        if digest == job.etag:
            job.cache.install_bytes(job.etag, memory.data)
        return digest

    def _split(self, missing: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
        if size < self.segment_threshold:
            return missing
        step = max(self.segment_size, 1)
        return [(a, min(a + step, b)) for start, b in missing for a in range(start, b, step)]

    def _run_segments(
        self,
        job: FileJob,
        partial: PartialFile,
        source: _Source,
        pieces: list[tuple[int, int]],
        use_range: bool,
    ) -> None:
        if len(pieces) == 1:
            self._fetch_segment(job, partial, source, *pieces[0], use_range)
            return
        futures = [
            self._segments.submit(a, self._fetch_segment, job, partial, source, a, b, True) for a, b in pieces
        ]
        errors = [f.exception() for f in futures]
        for kind in (DiskSpaceError, RangeIgnored, BadBytes):  # the most telling failure first
            for exc in errors:
                if isinstance(exc, kind):
                    raise exc
        for exc in errors:
            if exc is not None and not isinstance(exc, Cancelled):
                raise exc
        for exc in errors:
            if exc is not None:
                raise exc

    def _fetch_segment(
        self,
        job: FileJob,
        partial: PartialFile | _MemoryFile,
        source: _Source,
        start: int,
        end: int,
        use_range: bool,
    ) -> None:
        """Fetch [start, end) into the partial file; a retry resumes at the first byte not yet written."""
        cursor = _Cursor(start)

        def attempt() -> None:
            self._check_cancel()
            ranged = use_range or cursor.position > 0
            headers = dict(FILE_HEADERS)
            if ranged:
                headers["range"] = f"bytes={cursor.position}-{end - 1}"
            url, generation = source.current()
            try:
                with self._slots, contextlib.closing(self.http.open(url, job.token, headers)) as response:
                    if response.status_code == 200 and ranged:
                        if start != 0 or end != job.size:
                            raise RangeIgnored()
                        if cursor.position > 0:  # a whole-file stream: take it from byte 0 again
                            log.warning(
                                "%s: server ignored the Range request; restarting the file from byte 0",
                                job.label,
                            )
                            cursor.position = 0
                    elif response.status_code == 206:
                        _check_content_range(response, cursor.position, job)
                    elif response.status_code != 200:
                        raise TruncatedBody(f"{job.label}: unexpected answer {response.status_code}")
                    self._stream(job, partial, response, cursor, end)
            except HttpStatusError as e:
                if e.status in (401, 403, 410) and source.refresh(generation):
                    raise StaleUrl(
                        f"{job.label}: the download URL was refused ({e.status}); got a new one"
                    ) from e
                raise
            if cursor.position < end:
                raise TruncatedBody(f"{job.label}: connection ended at byte {cursor.position} of {end}")

        self.http.retry.call(
            attempt, lambda: f"GET {job.label} bytes {cursor.position}-{end - 1}", cancel=self.cancel
        )

    def _stream(
        self,
        job: FileJob,
        partial: PartialFile | _MemoryFile,
        response: Response,
        cursor: _Cursor,
        end: int,
    ) -> None:
        """Read the body into the partial file, advancing `cursor` with every write.

        Socket reads land in one reused buffer, written out when full (or every FLUSH_AFTER seconds
        on a slow connection). Bytes received before a failure (reset, timeout, cancel) are still
        written, so the retry or the next run resumes exactly where the connection stopped.
        """
        with self._buffers.lease() as buffer:
            filled = 0
            last_flush = time.monotonic()

            def flush() -> None:
                nonlocal filled, last_flush
                if filled:
                    partial.write(cursor.position, buffer[:filled])
                    cursor.position += filled
                    with self._stats_lock:
                        self.stats.bytes_fetched += filled
                    self.reporter.advance(filled)
                    filled = 0
                last_flush = time.monotonic()

            try:
                while n := response.readinto(buffer[filled:]):
                    if cursor.position + filled + n > end:
                        raise BadBytes(
                            f"{job.label}: the server sent more bytes than the file has; discarded"
                        )
                    filled += n
                    if filled == len(buffer) or time.monotonic() - last_flush >= FLUSH_AFTER:
                        flush()
                    self._check_cancel()
            finally:
                flush()


class _SegmentPool:
    """Worker threads that fetch segments lowest file offset first, across all files.

    Every file's contiguous prefix, which is what its hash can take, then grows while the rest is
    still downloading; in submission order, each file's segments would finish together at the end
    and all the hashing would be left for after the last byte.
    """

    def __init__(self, workers: int) -> None:
        self._queue: queue.PriorityQueue[tuple[float, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, name=f"prefetch-seg-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, offset: int, fn: Callable[..., None], *args: Any) -> cf.Future[None]:
        future: cf.Future[None] = cf.Future()
        self._queue.put((offset, next(self._order), (future, fn, args)))
        return future

    def _work(self) -> None:
        while True:
            _, _, task = self._queue.get()
            if task is None:
                return
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the waiting file thread, as an executor does
                future.set_exception(e)

    def shutdown(self) -> None:
        """Cancel what has not started, wait for what has."""
        while True:
            try:
                _, _, task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self._threads:
            self._queue.put((math.inf, next(self._order), None))
        for thread in self._threads:
            thread.join()


class _Buffers:
    """Read buffers, reused: one per active connection (fresh pages cost more than the bytes' copy)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[memoryview] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[memoryview]:
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = memoryview(bytearray(self.size))
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)


class _MemoryFile:
    """A small file's bytes, collected in memory (the partial file's stand-in in `_stream`).

    Nothing of it is on disk until it is complete and verified: a kill loses less than one CHUNK,
    which is what a partial file's resume state would have saved.
    """

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def write(self, offset: int, data: memoryview) -> None:
        self.data[offset : offset + len(data)] = data


@dataclass
class _Cursor:
    """The next byte a segment will write (shared by its attempts)."""

    position: int


class _Source:
    """Where one file's bytes come from, shared by its segments: a signed CDN URL expires, so a
    refused one (401/403/410 from the CDN) is asked for again from the Hub, a bounded number of times."""

    def __init__(self, http: Http, job: FileJob) -> None:
        self.http, self.job = http, job
        self.url = http.locate(job.url, job.token) if job.lfs else job.url
        self.generation = 0
        self._lock = threading.Lock()

    def current(self) -> tuple[str, int]:
        with self._lock:
            return self.url, self.generation

    def refresh(self, seen: int) -> bool:
        """Ask the Hub for a fresh URL (unless another segment already did); False when pointless."""
        with self._lock:
            if seen != self.generation:
                return True
            if self.url == self.job.url or self.generation >= MAX_URL_REFRESHES:
                return False
            self.url = self.http.locate(self.job.url, self.job.token)
            self.generation += 1
            return True


def _check_content_range(response: Response, position: int, job: FileJob) -> None:
    match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("content-range", ""))
    if not match or int(match.group(1)) != position:
        raise TruncatedBody(
            f"{job.label}: unexpected Content-Range {response.headers.get('content-range')!r}"
        )
    if match.group(3) != "*" and int(match.group(3)) != job.size:
        raise BadBytes(
            f"{job.label}: the server's file is {match.group(3)} bytes, the lockfile says {job.size}; discarded"
        )


_SEVERITY = (DiskSpaceError, AccessError, NetworkError, IntegrityError)


def _most_severe(errors: list[PrefetchError]) -> PrefetchError:
    for kind in _SEVERITY:
        same = [e for e in errors if isinstance(e, kind)]
        if same:
            if len(same) == 1:
                return same[0]
            return type(same[0])("\n".join(str(e) for e in same))
    return errors[0]
