"""Issue 27: prefetch paces the Hub's rate-limit buckets: it waits for a window rather than meet 429s,
spends no retry attempt on such a wait, says how long the quota makes the sync, and fails clearly when
the quota needs a longer wait than the run allows.

Every test runs the real CLI against the test Hub, whose `RateLimiter` counts requests per bucket in
fixed windows and answers 429 with the Hub's `RateLimit` / `RateLimit-Policy` headers.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import PrefetchRunner
from tests.hubemu import HubEmulator
from tests.hubemu.ratelimit import LOCAL_ANONYMOUS, RateLimiter

WINDOW = 2.0  # seconds: the test Hub's windows (the real Hub's are 300 s)


def limit(hub: HubEmulator, headers: str, **quotas: int) -> RateLimiter:
    limiter = RateLimiter(window=WINDOW, headers=headers)
    limiter.set_quotas(LOCAL_ANONYMOUS, **quotas)
    hub.rate_limiter = limiter
    return limiter


def rejected(hub: HubEmulator) -> list[str]:
    return [r.path for r in hub.requests if r.status == 429]


@pytest.mark.soak
def test_a_paged_listing_beyond_the_api_quota_waits_for_the_window_once(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """25 API requests (revision info, 23 listing pages, the lock's) at 20 per window, the headers only on
    the 429: one 429 (the request that found the window closed), then the run waits and sends the rest
    in the next window."""
    hub.page_size = 100
    hub.create_repo("org/many").commit({f"data/{i:05d}.json": b"{}" for i in range(2_300)})
    prefetch.manifest([{"repo": "org/many"}])
    limiter = limit(hub, "on-429", api=20)
    started = time.monotonic()
    result = prefetch("plan", "--max-wait", "0.1")
    assert result.code == 0, result
    assert len(rejected(hub)) == 1, rejected(hub)
    assert limiter.count(LOCAL_ANONYMOUS, "api").requests >= 24
    assert time.monotonic() - started < 3 * WINDOW + 5
    assert "rate-limited by the Hub (api: 20 per 2 s): waiting" in result.stderr, result


@pytest.mark.soak
def test_with_the_headers_on_every_answer_no_request_meets_a_429(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    hub.page_size = 100
    hub.create_repo("org/many").commit({f"data/{i:05d}.json": b"{}" for i in range(2_300)})
    prefetch.manifest([{"repo": "org/many"}])
    limit(hub, "always", api=10)
    result = prefetch("lock")
    assert result.code == 0, result
    assert rejected(hub) == []


@pytest.mark.soak
def test_a_quota_wait_spends_no_retry_attempt(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """Three closed windows in a row for the revision call, with one attempt allowed: waiting for a window
    is not a failed attempt, so the run completes."""
    hub.create_repo("org/model").commit({"config.json": b"{}"})
    prefetch.manifest([{"repo": "org/model"}])
    limiter = limit(hub, "on-429", api=1)
    result = prefetch("plan", "--retries", "1", "--json")
    assert result.code == 0, result
    assert len(rejected(hub)) >= 1
    assert limiter.count(LOCAL_ANONYMOUS, "api").requests >= 3
    waits = [json.loads(line) for line in result.stdout.splitlines() if '"rate_limit"' in line]
    assert waits and waits[0]["bucket"] == "api" and waits[0]["quota"] == 1, result.stdout


def test_a_window_beyond_the_time_budget_fails_with_exit_10_saying_why(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    hub.create_repo("org/model").commit({"config.json": b"{}"})
    prefetch.manifest([{"repo": "org/model"}], retry={"max_time": 1})
    hub.rate_limiter = RateLimiter(window=30.0, headers="on-429")
    hub.rate_limiter.set_quotas(LOCAL_ANONYMOUS, api=1)
    started = time.monotonic()
    result = prefetch("lock")
    assert result.code == 10, result
    assert time.monotonic() - started < 10
    assert "rate-limited by the Hub (api: 1 per 30 s)" in result.stderr, result
    assert "beyond the longest wait this run allows (retry.max_time 1s)" in result.stderr, result


def test_plan_reports_the_requests_per_bucket_that_the_sync_then_makes(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """`plan --json` counts what resolving and the access check sent and adds one resolver call per file
    to fetch; a sync from the same state makes exactly those (the test Hub's own counts)."""
    files = {f"cfg/{i:02d}.json": b"{%d}" % i for i in range(30)}
    files |= {"a.safetensors": b"\1" * 4096, "b.safetensors": b"\2" * 4096}
    hub.create_repo("org/model").commit(files)
    hub.create_repo("org/data", repo_type="dataset").commit({"train.csv": b"a\n"})
    prefetch.manifest([{"repo": "org/model"}, {"repo": "org/data", "type": "dataset"}])
    limiter = limit(hub, "always", api=10_000, resolvers=10_000)
    planned = prefetch("plan", "--json")
    assert planned.code == 0, planned
    (summary,) = [json.loads(line) for line in planned.stdout.splitlines() if '"summary"' in line]
    assert summary["requests"]["resolvers"] == 33
    assert summary["quotas"]["api"] == {"quota": 10_000, "window_seconds": 2.0}  # (stated on every answer)
    limiter.reset()
    synced = prefetch("sync")
    assert synced.code == 0, synced
    made = {
        bucket: limiter.count(LOCAL_ANONYMOUS, bucket).requests for bucket in ("api", "resolvers", "pages")
    }
    assert made == summary["requests"], (made, summary["requests"])
    limiter.reset()
    assert prefetch("plan", "--json").code == 0  # warm: nothing to fetch, nothing asked
    assert limiter.count(LOCAL_ANONYMOUS, "resolvers").requests == 0


@pytest.mark.soak
def test_plan_says_how_long_the_quota_makes_the_sync(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    hub.create_repo("org/model").commit({f"cfg/{i:02d}.json": b"{%d}" % i for i in range(30)})
    prefetch.manifest([{"repo": "org/model"}])
    limit(hub, "always", api=2)
    result = prefetch("plan")
    assert result.code == 0, result
    assert "requests to the Hub: api 3, resolvers 30 (the CDN is not counted)" in result.stdout, result
    assert "the Hub's api quota (2 per 2 s) makes this sync take at least 2s" in result.stdout
    assert "use a token: anonymous limits are per IP address" in result.stdout


def many_small_files(hub: HubEmulator, count: int) -> None:
    hub.create_repo("org/many").commit({f"data/{i:05d}.json": b'{"i": %d}\n' % i for i in range(count)})


def sync_under_the_resolver_quota(
    prefetch: PrefetchRunner, hub: HubEmulator, files: int, quota: int, window: float, headers: str
) -> tuple[float, int]:
    """(seconds, 429 answers) of a cold sync of `files` small files with the resolvers bucket at `quota`
    per `window`; every file verified."""
    many_small_files(hub, files)
    prefetch.manifest([{"repo": "org/many"}])
    limiter = RateLimiter(window=window, headers=headers)
    limiter.set_quotas(LOCAL_ANONYMOUS, resolvers=quota)
    hub.rate_limiter = limiter
    started = time.monotonic()
    result = prefetch("sync", timeout=240)
    elapsed = time.monotonic() - started
    assert result.code == 0, result
    assert limiter.count(LOCAL_ANONYMOUS, "resolvers").requests >= files
    assert prefetch("verify").code == 0
    return elapsed, limiter.count(LOCAL_ANONYMOUS, "resolvers").rejected


@pytest.mark.soak
@pytest.mark.parametrize("headers", ["on-429", "always"])
def test_many_small_files_are_paced_to_the_resolver_quota(
    prefetch: PrefetchRunner, hub: HubEmulator, headers: str
) -> None:
    """300 small files at 100 resolver calls per 2 s window: the quota's floor is 4 s. With the headers only
    on 429s, only the requests in flight when the first window closed meet a 429 (at most the run's
    connections); with them on every answer, none."""
    elapsed, rejected_count = sync_under_the_resolver_quota(prefetch, hub, 300, 100, 2.0, headers)
    assert rejected_count <= (32 if headers == "on-429" else 0), rejected_count
    assert elapsed <= 4 + 2 + 3 + 2  # the floor, one window, the issue's 3 s, start-up on this 2-core VM


@pytest.mark.soak
@pytest.mark.parametrize("headers", ["on-429", "always"])
def test_the_issues_case_1500_small_files_at_250_per_3_s(
    prefetch: PrefetchRunner, hub: HubEmulator, headers: str
) -> None:
    """Issue 27's case: the quota's floor is 15 s; done within the floor + one window + 3 s."""
    elapsed, rejected_count = sync_under_the_resolver_quota(prefetch, hub, 1500, 250, 3.0, headers)
    assert rejected_count <= (32 if headers == "on-429" else 0), rejected_count
    assert elapsed <= 15 + 3 + 3, elapsed
