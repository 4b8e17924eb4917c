"""The retry policy for every network call (metadata and bytes): what is worth retrying, how long
to wait (exponential backoff with jitter, or the server's `Retry-After` / `RateLimit` hint), and
when to give up; each retry is logged once."""

from __future__ import annotations

import contextlib
import email.utils
import functools
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import tenacity

from prefetch import settings
from prefetch.auth import redact
from prefetch.cancel import CancelToken
from prefetch.errors import (
    CertificateError,
    HubHttpError,
    ProxyRoutesFailed,
    StaleUrl,
    TransportError,
    TruncatedBody,
)
from prefetch.net.connection import Headers
from prefetch.settings import RetrySettings

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
    if isinstance(exc, HubHttpError):
        return exc.status in RETRYABLE_STATUS
    if isinstance(exc, ProxyRoutesFailed):
        return not exc.permanent
    if isinstance(exc, CertificateError):
        return False
    return isinstance(exc, TransportError | TruncatedBody | StaleUrl)


def describe(exc: BaseException) -> str:
    """A one-line reason for logs, free of secrets."""
    if isinstance(exc, HubHttpError | ProxyRoutesFailed | TruncatedBody | StaleUrl):
        return redact(str(exc))
    return redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class RetryPolicy:
    """Exponential backoff with jitter, capped per wait, bounded in attempts and total time.

    A server's `Retry-After` / `RateLimit` hint (429, 503) replaces the backoff; when the hint
    points past the total time budget there is no point in waiting, so the call fails at once.
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

    def backoff(self, attempt: int) -> float:
        """0.25 s doubling per attempt, capped at `max_wait`, with "equal jitter" (half fixed, half
        random) so that many clients failing together do not retry together."""
        base = min(self.settings.max_wait, 0.25 * 2 ** min(attempt - 1, 32))
        return base / 2 + random.uniform(0, base / 2)

    def _remaining(self, started: float) -> float:
        return self.settings.max_time - (time.monotonic() - started)

    @staticmethod
    def _hint(state: tenacity.RetryCallState) -> float | None:
        exc = state.outcome.exception() if state.outcome else None
        return getattr(exc, "retry_after", None)

    def _stop(self, started: float, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.settings.attempts or self._remaining(started) <= 0:
            return True
        exc = state.outcome.exception() if state.outcome else None
        if getattr(exc, "first_contact", False) and state.attempt_number >= settings.FIRST_CONTACT_ATTEMPTS:
            return True  # the host never answered this run: a wrong or down endpoint, say so now
        hint = self._hint(state)
        if hint is not None and hint > self._remaining(started):
            log.warning(
                "giving up: the server asked to wait %.0fs, beyond the retry time budget (retry.max_time %ss)",
                hint,
                self.settings.max_time,
            )
            return True
        return False

    def _wait(self, started: float, state: tenacity.RetryCallState) -> float:
        hint = self._hint(state)
        wait = hint if hint is not None else self.backoff(state.attempt_number)  # a server hint wins
        return max(0.0, min(wait, self._remaining(started)))

    def call(
        self,
        fn: Callable[[], T],
        what: str | Callable[[], str],
        cancel: CancelToken | None = None,
    ) -> T:
        """Run `fn` until it succeeds, fails for good, or the bounds are reached; log each retry once.

        `what` names the request in the log (a callable is asked at each retry, e.g. for the byte
        position a resumed download restarts from); `cancel` (by default the policy's token; a
        transfer passes its own child of it) ends the wait between attempts.
        """
        token = cancel or self.cancel
        started = time.monotonic()
        token.raise_if_cancelled()
        try:  # the first attempt without tenacity: most calls need no retry, and it cost ~35 µs a call
            return fn()
        except Exception as e:
            if not is_retryable(e):
                raise
            failed: list[Exception] = [e]  # tenacity's attempt 1 is this failure, told again

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

        def attempt() -> T:
            if failed:
                raise failed.pop()
            token.raise_if_cancelled()
            return fn()

        retrying = tenacity.Retrying(
            stop=functools.partial(self._stop, started),
            wait=functools.partial(self._wait, started),
            retry=tenacity.retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            sleep=token.sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Exception as e:
            if is_retryable(e):  # gave up on a transient failure: say how hard we tried
                with contextlib.suppress(AttributeError):
                    e.prefetch_attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
            raise
