"""The Hub's rate limits, as hub-docs `docs/hub/rate-limits.md` describes them (tiers of September 2025).

Why: a sync of many files meets these limits on the real Hub (issue 27), and huggingface_hub (>= 1.2) reacts to
them by waiting until the window resets. Tests can only prove a client copes if the test Hub limits like the
real one: the same buckets, fixed windows, quotas per identity and the same 429 answer and headers.

- **Buckets.** `api` (`/api/...`: listings, revision info, auth-check, whoami, the Xet token route),
  `resolvers` (every URL with a `/resolve/` segment, and the OpenAPI "Resolve a file" route
  `/api/resolve-cache/...`), `pages` (anything else on the Hub's origin: web pages). Only the Hub's own
  origin is counted: the CDN (and any other data host a redirect leads to) is not.
- **Fixed windows**, shared by every identity and bucket: they start at the first counted request after
  construction or `reset()` (so a test's first request opens a full window) and last `window` seconds
  (fractional allowed; the headers carry whole seconds, as draft-09 requires integers).
- **Identity.** A request with a known token counts for its user; any other request (no token, an unknown or
  revoked token: the Hub cannot attribute it to anyone) counts for the client IP, under the anonymous tier.
  Since every client is 127.0.0.1 here, all anonymous requests share one counter.
- **Every request counts**, rejected ones included. The docs do not say; it is invisible to clients anyway:
  once a window's quota is used, `r` stays 0 and the reset time stays put whatever else arrives.
- **Past the quota**: 429, the Hub's error shape (X-Error-Message and a JSON `{"error": ...}` body carrying
  the sentences the real Hub was seen to send) and the IETF draft-09 headers
  `RateLimit: "<bucket>";r=0;t=<seconds to reset>` and
  `RateLimit-Policy: "fixed window";"<bucket>";q=<quota>;w=<window seconds>`. No `Retry-After`: the docs
  and the observed answers name none, and huggingface_hub reads `RateLimit` first.
- **Header profiles**: "always" (the real Hub: the headers are on every answer of a counted request, `r`
  counting down; huggingface_hub's own code says so) or "on-429" (only on rejections).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

BUCKETS = ("api", "resolvers", "pages")
HEADER_PROFILES = ("always", "on-429")
HUB_WINDOW = 300.0  # seconds: "All quotas are calculated over 5-minute fixed windows"
# Requests per 5-minute window (API, resolvers, pages) by plan, from hub-docs rate-limits.md (September 2025).
# Team, Enterprise and Academia are organisation plans: their quotas apply to each member separately.
TIER_QUOTAS: dict[str, dict[str, int]] = {
    "anonymous": {"api": 500, "resolvers": 3_000, "pages": 100},
    "free": {"api": 1_000, "resolvers": 5_000, "pages": 200},
    "pro": {"api": 2_500, "resolvers": 12_000, "pages": 400},
    "team": {"api": 3_000, "resolvers": 20_000, "pages": 400},
    "enterprise": {"api": 6_000, "resolvers": 50_000, "pages": 600},
    "enterprise-plus": {"api": 10_000, "resolvers": 100_000, "pages": 1_000},
    "enterprise-plus-ip-ranges": {"api": 100_000, "resolvers": 500_000, "pages": 10_000},
    "academia": {"api": 2_500, "resolvers": 12_000, "pages": 400},
}
ANONYMOUS_PREFIX = "ip:"  # anonymous identities are "ip:<address>" (Hub user names cannot hold a colon)
LOCAL_ANONYMOUS = ANONYMOUS_PREFIX + "127.0.0.1"


def bucket_of(origin: str, path: str) -> str | None:
    """The bucket a request on `origin` ("api": the Hub's own origin) for raw `path` counts in; None: not counted."""
    if origin != "api":
        return None
    if "/resolve/" in path or path.startswith("/api/resolve-cache/"):
        return "resolvers"
    return "api" if path == "/api" or path.startswith("/api/") else "pages"


@dataclass
class BucketCount:
    """Requests one identity made in one bucket since the last `reset()`, and how many of them got a 429."""

    requests: int = 0
    rejected: int = 0


@dataclass
class Verdict:
    """The limiter's answer for one counted request: the headers it adds, and the 429's message if rejected."""

    rejected: bool
    headers: dict[str, str]
    message: str = ""


@dataclass
class _Usage:
    window: int = -1  # index of the window `used` belongs to
    used: int = 0
    total: BucketCount = field(default_factory=BucketCount)


class RateLimiter:
    """Counts the Hub's requests per bucket and identity in fixed windows and rejects those past the quota.

    Turn it on with `hub.rate_limiter = RateLimiter(...)` (None, the default, turns it off).

    `window`: window length in seconds (the Hub: 300). `scale`: multiplies every documented quota (rounded
    up, at least 1) so a test needs few requests and the tiers keep their ratios (`scale=0.001`: anonymous
    3 resolver requests a window, free 5, PRO 12). `headers`: "always" or "on-429" (see the module doc).
    `set_tier(user, tier)` and `set_quotas(identity, ...)` choose an identity's quotas; users default to
    "free". `count(identity, bucket)` / `counts()` read the totals, `reset()` clears them.
    """

    def __init__(self, window: float = HUB_WINDOW, *, scale: float = 1.0, headers: str = "always") -> None:
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if headers not in HEADER_PROFILES:
            raise ValueError(f"headers must be one of {HEADER_PROFILES}, got {headers!r}")
        self.window = float(window)
        self.scale = scale
        self.headers = headers
        self._lock = threading.Lock()
        self._tiers: dict[str, str] = {}  # user -> tier
        self._quotas: dict[str, dict[str, int]] = {}  # identity -> bucket -> explicit quota
        self._usage: dict[tuple[str, str], _Usage] = {}  # (identity, bucket)
        self._origin: float | None = None  # monotonic start of window 0; None until the first request

    # ---------------------------------------------------------------------------------------- settings
    def set_tier(self, user: str, tier: str) -> None:
        """Give a token's user one of the documented plans (`TIER_QUOTAS`; "anonymous" included)."""
        if tier not in TIER_QUOTAS:
            raise ValueError(f"tier must be one of {sorted(TIER_QUOTAS)}, got {tier!r}")
        with self._lock:
            self._tiers[user] = tier

    def set_quotas(self, identity: str, **quotas: int) -> None:
        """Explicit quotas per window for a user name or an "ip:<address>" identity, e.g. `resolvers=3`.

        They win over the tier (and are not scaled); buckets left out keep the tier's quota.
        """
        unknown = set(quotas) - set(BUCKETS)
        if unknown:
            raise ValueError(f"unknown buckets {sorted(unknown)}; buckets are {BUCKETS}")
        if any(q < 0 for q in quotas.values()):
            raise ValueError("quotas cannot be negative")
        with self._lock:
            self._quotas.setdefault(identity, {}).update(quotas)

    def quota(self, identity: str, bucket: str) -> int:
        """Requests `identity` may make in `bucket` per window."""
        with self._lock:
            return self._quota(identity, bucket)

    def _quota(self, identity: str, bucket: str) -> int:
        explicit = self._quotas.get(identity, {}).get(bucket)
        if explicit is not None:
            return explicit
        anonymous = identity.startswith(ANONYMOUS_PREFIX)
        tier = "anonymous" if anonymous else self._tiers.get(identity, "free")
        return max(1, math.ceil(TIER_QUOTAS[tier][bucket] * self.scale))

    # ---------------------------------------------------------------------------------------- counters
    def count(self, identity: str, bucket: str) -> BucketCount:
        """Totals of `identity` (a user name, or e.g. `LOCAL_ANONYMOUS`) in `bucket` since the last reset."""
        with self._lock:
            usage = self._usage.get((identity, bucket))
            return BucketCount(usage.total.requests, usage.total.rejected) if usage else BucketCount()

    def counts(self) -> dict[tuple[str, str], BucketCount]:
        """Every (identity, bucket) that was counted since the last reset, with its totals."""
        with self._lock:
            return {key: BucketCount(u.total.requests, u.total.rejected) for key, u in self._usage.items()}

    def reset(self) -> None:
        """Forget every count; the next counted request opens window 0 (settings are kept)."""
        with self._lock:
            self._usage.clear()
            self._origin = None

    # ----------------------------------------------------------------------------------------- verdict
    def admit(self, origin: str, path: str, user: str | None, client_ip: str) -> Verdict | None:
        """Count one request; None if its origin/path is not counted (the CDN, other data hosts).

        `user`: the authenticated user (None: anonymous, including an unknown or revoked token).
        """
        bucket = bucket_of(origin, path)
        if bucket is None:
            return None
        identity = user if user is not None else ANONYMOUS_PREFIX + client_ip
        now = time.monotonic()
        with self._lock:
            if self._origin is None:
                self._origin = now
            elapsed = now - self._origin
            index = int(elapsed // self.window)
            # Whole seconds (draft-09's t is an integer), rounded up so a client never comes back too early;
            # rounding to microseconds first keeps float noise from turning an exact 1.0 into 2.
            reset_in = math.ceil(round((index + 1) * self.window - elapsed, 6))
            usage = self._usage.setdefault((identity, bucket), _Usage())
            if usage.window != index:
                usage.window, usage.used = index, 0
            quota = self._quota(identity, bucket)
            usage.used += 1
            rejected = usage.used > quota
            remaining = max(0, quota - usage.used)
            usage.total.requests += 1
            usage.total.rejected += int(rejected)
        headers: dict[str, str] = {}
        if rejected or self.headers == "always":
            headers = {
                "RateLimit": f'"{bucket}";r={remaining};t={reset_in}',
                "RateLimit-Policy": f'"fixed window";"{bucket}";q={quota};w={math.ceil(self.window)}',
            }
        message = self._message(identity, bucket, quota, client_ip) if rejected else ""
        return Verdict(rejected, headers, message)

    def _message(self, identity: str, bucket: str, quota: int, client_ip: str) -> str:
        """The sentences the real Hub's 429s were seen to carry (anonymous, then authenticated)."""
        if identity.startswith(ANONYMOUS_PREFIX):
            return (
                f"We had to rate limit your IP ({client_ip}). To continue using our service, create a HF account "
                "or login to your existing account, and make sure you pass a HF_TOKEN if you're using the API."
            )
        minutes, seconds = divmod(self.window, 60)
        period = f"{int(minutes)} minutes" if not seconds else f"{self.window:g} seconds"
        return (
            f"We had to rate limit you, you hit the quota of {quota} {bucket} requests per {period} period. "
            "Upgrade to a PRO user or Team/Enterprise organization account (https://hf.co/pricing) to get "
            "higher limits. See https://huggingface.co/docs/hub/rate-limits"
        )
