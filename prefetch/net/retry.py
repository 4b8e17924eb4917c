"""The retry policy for every network call (metadata and bytes): what is worth retrying, how long
to wait (exponential backoff with jitter, or the server's `Retry-After` / `RateLimit` hint), and
when to give up; each retry is logged once."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import tenacity

from prefetch import settings
from prefetch.auth import mask_patterns
from prefetch.cancel import CancelToken
from prefetch.errors import (
    CertificateError,
    EgressLimitError,
    HubAccessError,
    HubHttpError,
    ProxyRoutesFailed,
    StaleUrl,
    TransportError,
    TruncatedBody,
)
from prefetch.net.connection import Headers
from prefetch.settings import RetrySettings
from prefetch.terminal import EVENT_ATTRIBUTE
from prefetch.urls import origin_of

log = logging.getLogger("prefetch")
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

HeaderLookup = Headers | Mapping[str, str]

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
    if isinstance(exc, HubAccessError | EgressLimitError):  # the Hub's final word, whatever the status
        return False
    if isinstance(exc, HubHttpError):
        return exc.status in RETRYABLE_STATUS
    if isinstance(exc, ProxyRoutesFailed):
        return not exc.permanent
    if isinstance(exc, CertificateError):
        return False
    return isinstance(exc, TransportError | TruncatedBody | StaleUrl)


def describe(exc: BaseException) -> str:
    """A one-line reason for logs, free of secrets (the run's outputs redact its own on top)."""
    if isinstance(exc, HubHttpError | ProxyRoutesFailed | TruncatedBody | StaleUrl):
        return mask_patterns(str(exc))
    return mask_patterns(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class _ServerHintOr(tenacity.wait.wait_base):
    """The wait a server asked for (`Retry-After` / `RateLimit` on a 429 or 503) when it gave one, else
    `backoff`'s."""

    def __init__(self, backoff: tenacity.wait.wait_base) -> None:
        self.backoff = backoff

    def __call__(self, state: tenacity.RetryCallState) -> float:
        hint = _server_hint(state)
        return hint if hint is not None else self.backoff(state)


class _FirstContact(tenacity.stop.stop_base):
    """Stop early when the host never answered this run (a wrong or down endpoint, not a blip)."""

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        return (
            getattr(exc, "first_contact", False) and state.attempt_number >= settings.FIRST_CONTACT_ATTEMPTS
        )


class _HintBeyond(tenacity.stop.stop_base):
    """Stop at once when the server asks to wait past the time left: waiting could not end in success.
    (Says so: a silent stop after a 429 would read as a network failure.)"""

    def __init__(self, max_time: float, since: float | None) -> None:
        self.max_time = max_time
        self.since = since

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        hint = _server_hint(state)
        if hint is None or hint <= self.max_time - _elapsed(state, self.since):
            return False
        log.warning(
            "giving up: the server asked to wait %.0fs, beyond the retry time budget (retry.max_time %ss)",
            hint,
            self.max_time,
        )
        return True


class _OutOfTime(tenacity.stop.stop_base):
    """Stop when the next wait would end past `max_time` after the request's first attempt: its
    `since`, when that attempt was made before this call (a small file's, by the lane)."""

    def __init__(self, max_time: float, since: float | None) -> None:
        self.max_time = max_time
        self.since = since

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        return _elapsed(state, self.since) + state.upcoming_sleep >= self.max_time


def _elapsed(state: tenacity.RetryCallState, since: float | None) -> float:
    """Seconds since the request's first attempt (this call's, or `since`, an earlier one's)."""
    if since is None:
        return state.seconds_since_start or 0.0
    return time.monotonic() - since


def _host_of(exc: BaseException | None) -> str | None:
    """The server (`scheme://host:port`) a failed request went to: the session names it on transport
    failures, and an error answer carries its URL."""
    origin = getattr(exc, "origin", "") or None
    if origin is None and isinstance(exc, HubHttpError):
        origin = origin_of(exc.url) or None
    return origin


def _server_hint(state: tenacity.RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome else None
    return getattr(exc, "retry_after", None)


class RetryPolicy:
    """tenacity's retrying, with prefetch's bounds: at most `attempts`, never past `max_time` (a wait that
    would end past it is not started), "equal jitter" exponential backoff (0.25 s doubling, half fixed and
    half random, so that many clients failing together do not retry together) capped at `max_wait`, or
    the server's own hint (429, 503); a host that never answered gets `FIRST_CONTACT_ATTEMPTS`.

    `cancel` is the run's token: cancelling it ends every wait of this policy with `Cancelled`.
    """

    def __init__(
        self,
        settings: RetrySettings,
        on_retry: Callable[[str], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.settings = settings
        self.on_retry = on_retry
        self.cancel = cancel or CancelToken()
        half = settings.max_wait / 2
        self._wait = _ServerHintOr(
            tenacity.wait_exponential(multiplier=0.125, max=half)
            + tenacity.wait_random_exponential(multiplier=0.125, max=half)
        )

    def retry_line(self, attempt: int, wait: float, label: str, exc: BaseException | None) -> str:
        """`retry 1/7 in 0.3s: GET /api/models/x (hub.example): 503 ...`: the retries left are counted
        against the bound that applies (a host that never answered gets FIRST_CONTACT_ATTEMPTS in all),
        and the host the request went to is named."""
        first_contact = getattr(exc, "first_contact", False)
        attempts = settings.FIRST_CONTACT_ATTEMPTS if first_contact else self.settings.attempts
        host = _host_of(exc)
        line = f"retry {attempt}/{attempts - 1} in {wait:.1f}s: {label}{f' ({host})' if host else ''}: "
        line += describe(exc) if exc else "?"
        if first_contact:
            line += f" (the host has not answered in this run: {attempts} attempts in all)"
        return line

    def call(
        self,
        fn: Callable[[], T],
        what: str | Callable[[], str],
        cancel: CancelToken | None = None,
        retryable: Callable[[BaseException], bool] = is_retryable,
        since: float | None = None,
    ) -> T:
        """Run `fn` until it succeeds, fails for good, or the bounds are reached; log each retry once.

        `what` names the request in the log (a callable is asked at each retry, e.g. for the byte
        position a resumed download restarts from); `cancel` (by default the policy's token; a
        transfer passes its own child of it) ends the wait between attempts; `retryable` says which
        failures are worth another attempt (by default the transient ones, `is_retryable`); `since`
        (`time.monotonic()`) is when the request's first attempt began, when it was made before this call:
        the time budget (`max_time`) counts from there, so a request has one budget however its attempts
        are shared out (a small file's first is the lane's, the rest the segment pool's).
        """
        token = cancel or self.cancel

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            label = what() if callable(what) else what
            message = self.retry_line(state.attempt_number, wait, label, exc)
            log.warning(message, extra={EVENT_ATTRIBUTE: "retry"} if self.on_retry else None)
            if self.on_retry:
                self.on_retry(message)

        stop = (  # (in this order: the first that says stop is the one that says why)
            _HintBeyond(self.settings.max_time, since)
            | _FirstContact()
            | tenacity.stop_after_attempt(self.settings.attempts)
            | _OutOfTime(self.settings.max_time, since)
        )
        retrying = tenacity.Retrying(
            stop=stop,
            wait=self._wait,
            retry=tenacity.retry_if_exception(retryable),
            before=lambda _: token.raise_if_cancelled(),
            before_sleep=before_sleep,
            sleep=token.sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except Exception as e:
            if retryable(e):  # gave up on a transient failure: say how hard we tried
                with contextlib.suppress(AttributeError):
                    e.prefetch_attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
            raise
