"""The Hub's rate limits, paced: a request waits for its bucket's window rather than meet a 429.

The Hub counts requests in fixed windows (5 minutes), per bucket (`api`: `/api/...`; `resolvers`: every
`/resolve/` URL; `pages`: the rest of its origin) and per user (per IP when anonymous); the CDN a
redirect leads to is not counted. Past the quota it answers 429 with the IETF draft-09 headers
`RateLimit: "resolvers";r=0;t=<seconds to the reset>` and `RateLimit-Policy: "fixed window";
"resolvers";q=<quota>;w=<window seconds>` (read here with huggingface_hub's own parser); the real Hub
sends them on every answer, some deployments only on the 429.

Each bucket of the run's endpoint keeps what its answers said: the policy (`q` per `w` seconds), when
the current window ends, and how many requests the run may still send in it. A request takes a place
before it is sent (`RateGate.take`), waiting while the bucket is spent; an answer updates the bucket
(`RateGate.observe`). The first 429 (or an answer with `r=0`) closes the bucket for every request until
the reset, after which the run sends at most `q` per window; so the only 429s a run meets are those of the
requests already in flight when the window closed, and none once the policy is known. Such a 429 is not a
failure: the request is sent again when the window opens, spending none of its retry attempts.

Windows are inferred from `t`, which the Hub gives in whole seconds (rounded up): each answer bounds the
window's end from above (`now + t`) and from below (`now + t - 1`); a request waits for the upper bound,
so it is never early, and the requests sent after the lower bound may be counted in the next window, so
they are charged to it too.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prefetch.cancel import CancelToken
from prefetch.errors import QuotaWaitTooLong
from prefetch.net.connection import Headers

if TYPE_CHECKING:
    from huggingface_hub.utils import RateLimitInfo

BUCKETS = ("api", "resolvers", "pages")
EDGE = 1.0  # seconds: how far a window's end may be before `now + t` (the Hub's `t` is whole seconds)
POLL = 0.25  # seconds between two cancellation checks while a request waits for its window


def bucket_of(path: str) -> str:
    """The bucket a request to the Hub's own origin counts in, by its path."""
    if "/resolve/" in path or path.startswith("/api/resolve-cache/"):
        return "resolvers"
    return "api" if path == "/api" or path.startswith("/api/") else "pages"


@dataclass(frozen=True)
class Policy:
    """`quota` requests per `window` seconds, as the Hub's `RateLimit-Policy` states it."""

    quota: int
    window: float

    def describe(self, bucket: str) -> str:
        """`resolvers: 5,000 per 5 min`."""
        span = f"{self.window / 60:g} min" if self.window >= 60 else f"{self.window:g} s"
        return f"{bucket}: {self.quota:,} per {span}"


@dataclass(frozen=True)
class Wait:
    """A wait for a bucket's window, as progress displays tell it."""

    bucket: str
    seconds: float
    policy: Policy | None


@dataclass
class _Bucket:
    policy: Policy | None = None
    window_end: float | None = None  # monotonic: when the current window ends at the latest (None: not known)
    earliest_end: float = 0.0  # ... and at the earliest
    allowance: int | None = None  # requests the run may still send in this window (None: unlimited so far)
    sent: collections.deque[float] = field(default_factory=collections.deque)  # send times, this window
    others: int = 0  # requests of other clients sharing the quota (one NAT address...) seen this window
    counted: int = 0  # requests sent in all: each request's ticket is the count when it was sent


class RateGate:
    """Pacing for one endpoint's buckets, shared by every thread of the run.

    `max_wait`: the longest one wait may be (the run's `retry.max_time`): a quota that needs more is a
    `RateLimitedError` (exit 10) that says so. `on_wait` is told of each wait a request begins (for the
    progress display).
    """

    def __init__(
        self,
        endpoint: str,
        cancel: CancelToken,
        max_wait: float,
        on_wait: Callable[[Wait], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(endpoint)
        self._origin = (parts.scheme, parts.hostname, parts.port)
        self._prefix = f"{parts.scheme}://{parts.netloc}/"  # the URLs the run makes of the endpoint begin so
        self.cancel = cancel
        self.max_wait = max_wait
        self.on_wait = on_wait
        self._clock = clock
        self._buckets = {name: _Bucket() for name in BUCKETS}
        self._cond = threading.Condition()

    def bucket(self, url: str) -> str | None:
        """The bucket `url` counts in; None: another origin (the CDN), not counted. (Asked for every
        request: URLs made of the endpoint are told by their prefix, without parsing them.)"""
        if url.startswith(self._prefix):
            return bucket_of(url[len(self._prefix) - 1 :].partition("?")[0].partition("#")[0])
        parts = urlsplit(url)
        if (parts.scheme, parts.hostname, parts.port) != self._origin:
            return None
        return bucket_of(parts.path)

    def counts(self) -> dict[str, int]:
        """Requests sent per bucket so far."""
        with self._cond:
            return {name: b.counted for name, b in self._buckets.items()}

    def policy(self, bucket: str) -> Policy | None:
        """What the Hub stated of `bucket` (None: nothing yet: no answer of it carried the headers)."""
        with self._cond:
            return self._buckets[bucket].policy

    # -- before a request --------------------------------------------------------------------------------
    def take(self, url: str, *, block: bool = True, cancel: CancelToken | None = None) -> int | None:
        """A place for a request to `url` in its bucket's window, waiting until there is one (`cancel`, by
        default the run's, ends the wait). Returns the request's ticket, for `observe` (0: another origin,
        not counted); `block=False`: None instead of waiting."""
        name = self.bucket(url)
        if name is None:
            return 0
        told = False
        with self._cond:
            bucket = self._buckets[name]
            while True:
                now = self._clock()
                self._roll(bucket, now)
                if bucket.allowance is None or bucket.allowance > 0:
                    break
                if not block:
                    return None
                assert bucket.window_end is not None  # (a spent allowance always has its window's end)
                wait = bucket.window_end - now
                if wait > self.max_wait:
                    raise QuotaWaitTooLong(
                        f"rate-limited by the Hub ({_described(bucket.policy, name)}): its next window opens in "
                        f"{wait:.0f}s, beyond the longest wait this run allows (retry.max_time {self.max_wait:g}s); "
                        "run again later, raise retry.max_time, or use a token (anonymous limits are per IP "
                        "address, and lower)"
                    )
                if not told and self.on_wait is not None:
                    self.on_wait(Wait(name, wait, bucket.policy))
                    told = True
                self._cond.wait(min(POLL, wait))
                self._cond.release()
                try:
                    (cancel or self.cancel).raise_if_cancelled()
                finally:
                    self._cond.acquire()
            if bucket.allowance is not None:
                bucket.allowance -= 1
            bucket.counted += 1
            bucket.sent.append(now)
            return bucket.counted

    def _roll(self, bucket: _Bucket, now: float) -> None:
        """Open the next window once the current one ended: the policy's quota, less what was sent at its
        edge (those may count in this one)."""
        if bucket.window_end is None or now < bucket.window_end:
            return
        end = bucket.window_end
        at_edge = [t for t in bucket.sent if t >= bucket.earliest_end]  # may be counted in the next window
        bucket.sent.clear()
        bucket.others = 0
        if bucket.policy is None:
            bucket.window_end, bucket.allowance = None, None
            return
        windows = max(1, math.ceil((now - end) / bucket.policy.window)) if now > end else 1
        bucket.window_end = end + windows * bucket.policy.window
        bucket.earliest_end += windows * bucket.policy.window
        if windows == 1:
            bucket.sent.extend(at_edge)
        bucket.allowance = max(0, bucket.policy.quota - len(bucket.sent))

    # -- after its answer ----------------------------------------------------------------------------------
    def observe(self, url: str, ticket: int, status: int, headers: Headers) -> float | None:
        """Update `url`'s bucket from the answer to the request `ticket` names. A 429 of the quota closes
        the bucket until the reset; the returned seconds (not None) say the request must be sent again then."""
        if not ticket or headers.get("ratelimit") is None:  # (most answers: no bucket to tell)
            return None
        name = self.bucket(url)
        if name is None:
            return None
        info = _parse(headers)
        if info is None:
            return None
        with self._cond:
            bucket = self._buckets[name]
            now = self._clock()
            if info.limit is not None and info.window_seconds:
                bucket.policy = Policy(info.limit, float(info.window_seconds))
            end = now + info.reset_in_seconds
            if bucket.window_end is None or abs(end - bucket.window_end) > EDGE:
                bucket.window_end, bucket.earliest_end = end, end - EDGE  # a window it did not know of
            else:  # the same window: each reading narrows where it ends
                bucket.window_end = min(bucket.window_end, end)
                bucket.earliest_end = min(bucket.window_end, max(bucket.earliest_end, end - EDGE))
            if bucket.policy is not None:
                # The Hub counts this window's requests as it handles them, in whatever order: what it has
                # counted beyond all this run has sent are other clients' (sharing the quota).
                used = bucket.policy.quota - info.remaining
                bucket.others = max(bucket.others, used - len(bucket.sent))
                remaining = bucket.policy.quota - len(bucket.sent) - bucket.others
            else:  # no policy stated: `r` counted this request and those sent before it, not the later ones
                remaining = info.remaining - (bucket.counted - ticket)
            bucket.allowance = max(0, remaining)
            self._cond.notify_all()
            if status == 429 and info.remaining == 0:
                bucket.allowance = 0
                return max(0.0, bucket.window_end - now)
        return None


def _described(policy: Policy | None, bucket: str) -> str:
    return policy.describe(bucket) if policy else bucket


def _parse(headers: Headers) -> RateLimitInfo | None:
    """The `RateLimit` headers as huggingface_hub reads them (`parse_ratelimit_headers`), or None."""
    from huggingface_hub.utils import parse_ratelimit_headers

    return parse_ratelimit_headers(headers)  # type: ignore[arg-type]
