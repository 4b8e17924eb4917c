# ruff: noqa: F811  (the pytest fixture `hub` is imported below and used as an argument)
"""The test Hub's rate limits (tests/hubemu/ratelimit.py) behave as hub-docs `rate-limits.md` documents.

Real sockets only; windows of 1 s so the file stays fast. The real client (huggingface_hub, run in a child
process configured by environment like a user's) proves the emulator: it must read our 429 headers, wait
until the reset and finish, exactly as it does against huggingface.co.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.utils import parse_ratelimit_headers

from tests.hubemu import HubEmulator
from tests.hubemu.fixtures import hub  # noqa: F401
from tests.hubemu.ratelimit import LOCAL_ANONYMOUS, BucketCount, RateLimiter

ALICE = "hf_alice_ratelimit_token"
BOB = "hf_bob_ratelimit_token"
CONFIG = b'{"model_type": "demo"}\n'
WEIGHTS = bytes(range(256)) * 40  # LFS by suffix: its bytes come from the CDN


def model(hub: HubEmulator, **files: bytes) -> None:
    hub.create_repo("org/model").commit(files or {"config.json": CONFIG, "model.safetensors": WEIGHTS})


def statuses(client: httpx2.Client, method: str, url: str, n: int, **kw: object) -> list[int]:
    return [client.request(method, url, **kw).status_code for _ in range(n)]  # type: ignore[arg-type]


def test_off_by_default(hub: HubEmulator) -> None:
    model(hub)
    with httpx2.Client() as c:
        answers = [c.get(f"{hub.url}/api/models/org/model") for _ in range(20)]
    assert {r.status_code for r in answers} == {200}
    assert not any("ratelimit" in r.headers or "ratelimit-policy" in r.headers for r in answers)


def test_buckets_count_api_resolvers_and_pages_never_the_cdn(hub: HubEmulator) -> None:
    model(hub)
    hub.create_repo("org/data", repo_type="dataset").commit({"a.csv": b"x\n"})
    hub.add_user("alice", token=ALICE)
    hub.rate_limiter = limiter = RateLimiter(window=60)
    with httpx2.Client() as c:
        api = [
            c.get(f"{hub.url}/api/models/org/model"),
            c.get(f"{hub.url}/api/models/org/model/tree/main", params={"recursive": "1"}),
            c.get(f"{hub.url}/api/models/org/model/auth-check"),
            c.get(f"{hub.url}/api/whoami-v2"),  # a 401 without a token, counted all the same
        ]
        resolvers = [
            c.head(hub.file_url("org/model", "config.json")),
            c.get(hub.file_url("org/model", "config.json")),
            c.head(hub.file_url("org/data", "a.csv", repo_type="dataset")),
            c.get(hub.file_url("org/model", "model.safetensors")),  # a 302 to the CDN
        ]
        cdn = c.get(resolvers[-1].headers["location"])  # the redirect's target: not counted
        page = c.get(f"{hub.url}/org/model")  # a web page (the emulator has none: 404, still a page view)
        alice = c.get(hub.file_url("org/model", "config.json"), headers={"Authorization": f"Bearer {ALICE}"})
    assert [r.status_code for r in api] == [200, 200, 200, 401]
    assert [r.status_code for r in resolvers] == [200, 200, 200, 302]
    assert (cdn.status_code, cdn.content, page.status_code, alice.status_code) == (200, WEIGHTS, 404, 200)
    assert limiter.counts() == {
        (LOCAL_ANONYMOUS, "api"): BucketCount(4, 0),
        (LOCAL_ANONYMOUS, "resolvers"): BucketCount(4, 0),
        (LOCAL_ANONYMOUS, "pages"): BucketCount(1, 0),
        ("alice", "resolvers"): BucketCount(1, 0),
    }
    # Every counted answer names its bucket and counts down; the CDN's answers carry no rate-limit header.
    assert [r.headers["ratelimit"].split(";")[:2] for r in api] == [
        ['"api"', f"r={500 - n}"] for n in range(1, 5)
    ]
    assert [r.headers["ratelimit"].split(";")[:2] for r in resolvers] == [
        ['"resolvers"', f"r={3000 - n}"] for n in range(1, 5)
    ]
    assert page.headers["ratelimit-policy"] == '"fixed window";"pages";q=100;w=60'
    assert alice.headers["ratelimit-policy"] == '"fixed window";"resolvers";q=5000;w=60'  # free tier
    assert "ratelimit" not in cdn.headers and "ratelimit-policy" not in cdn.headers
    # The request log holds every request, CDN included, as before.
    assert [r.origin for r in hub.requests].count("cdn") == 1 and len(hub.requests) == 11


def test_a_closed_window_answers_429_until_it_resets(hub: HubEmulator) -> None:
    model(hub)
    hub.rate_limiter = limiter = RateLimiter(window=1)
    limiter.set_quotas(LOCAL_ANONYMOUS, resolvers=2)
    url = hub.file_url("org/model", "config.json")
    with httpx2.Client() as c:
        answers = [c.get(url) for _ in range(4)]
        other_bucket = c.get(f"{hub.url}/api/models/org/model")
        closed = answers[-1]
        info = parse_ratelimit_headers(closed.headers)  # huggingface_hub's own reading of our headers
        assert info is not None and 0 < info.reset_in_seconds <= 1
        time.sleep(info.reset_in_seconds)
        reopened = [c.get(url) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429, 429]
    assert [r.headers["ratelimit"].split(";")[1] for r in answers] == ["r=1", "r=0", "r=0", "r=0"]
    assert (info.resource_type, info.remaining, info.limit, info.window_seconds) == ("resolvers", 0, 2, 1)
    assert other_bucket.status_code == 200  # a closed bucket leaves the others open
    # The 429 is the Hub's error shape: JSON {"error"}, the same text in X-Error-Message, no Retry-After.
    assert closed.json() == {"error": closed.headers["x-error-message"]}
    assert closed.json()["error"].startswith("We had to rate limit your IP (127.0.0.1).")
    assert "retry-after" not in closed.headers and closed.content != CONFIG
    assert [r.status_code for r in reopened] == [200, 200, 429]
    assert limiter.count(LOCAL_ANONYMOUS, "resolvers") == BucketCount(requests=7, rejected=3)
    assert [r.status for r in hub.requests if "/resolve/" in r.path] == [200, 200, 429, 429, 200, 200, 429]
    limiter.reset()
    assert limiter.counts() == {}


def test_the_on_429_profile_sends_the_headers_only_when_it_rejects(hub: HubEmulator) -> None:
    model(hub)
    hub.rate_limiter = RateLimiter(window=1, headers="on-429")
    hub.rate_limiter.set_quotas(LOCAL_ANONYMOUS, api=1)
    with httpx2.Client() as c:
        admitted, rejected = (c.get(f"{hub.url}/api/models/org/model") for _ in range(2))
    assert admitted.status_code == 200 and "ratelimit" not in admitted.headers
    assert rejected.status_code == 429
    assert re.fullmatch(r'"api";r=0;t=1', rejected.headers["ratelimit"])
    assert rejected.headers["ratelimit-policy"] == '"fixed window";"api";q=1;w=1'


def test_a_token_counts_for_its_user_and_its_tier_sets_the_quota(hub: HubEmulator) -> None:
    model(hub)
    hub.add_user("alice", token=ALICE)
    hub.add_user("bob", token=BOB)
    hub.revoke_token(BOB)
    hub.add_user("carol", token="hf_carol_ratelimit_token")
    hub.rate_limiter = limiter = RateLimiter(window=60, scale=0.001)  # anonymous 3, free 5, PRO 12 resolvers
    limiter.set_tier("carol", "pro")
    url = hub.file_url("org/model", "config.json")

    def admitted(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx2.Client(headers=headers) as c:
            codes = statuses(c, "HEAD", url, 15)
        return codes.index(429) if 429 in codes else len(codes)

    assert admitted(None) == 3
    assert admitted(ALICE) == 5  # a free user is not held back by the closed anonymous window
    assert admitted("hf_carol_ratelimit_token") == 12
    assert [limiter.quota(who, "resolvers") for who in (LOCAL_ANONYMOUS, "alice", "carol")] == [3, 5, 12]
    # An unknown or revoked token identifies nobody: a 401, counted against the IP like anonymous requests,
    # so the anonymous request after them finds the window closed.
    limiter.set_quotas(LOCAL_ANONYMOUS, api=2)
    with httpx2.Client() as c:
        answers = [
            c.get(f"{hub.url}/api/models/org/model", headers={"Authorization": f"Bearer {token}"})
            for token in ("hf_not_a_token", BOB)
        ] + [c.get(f"{hub.url}/api/models/org/model")]
    assert [(r.status_code, r.headers["ratelimit"].split(";")[1]) for r in answers] == [
        (401, "r=1"),
        (401, "r=0"),
        (429, "r=0"),
    ]
    assert limiter.count(LOCAL_ANONYMOUS, "api") == BucketCount(3, 1)
    assert limiter.count("bob", "api") == BucketCount()
    # Explicit quotas win over the tier; a user's 429 names the quota like the Hub's does.
    limiter.set_quotas("alice", api=1)
    with httpx2.Client(headers={"Authorization": f"Bearer {ALICE}"}) as c:
        answers = [c.get(f"{hub.url}/api/models/org/model") for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 429]
    error = answers[1].json()["error"]
    assert error.startswith(
        "We had to rate limit you, you hit the quota of 1 api requests per 1 minutes period."
    )
    assert limiter.count("alice", "resolvers") == BucketCount(15, 10)


def test_curl_shows_the_documented_headers(hub: HubEmulator) -> None:
    model(hub)
    hub.rate_limiter = RateLimiter(window=300)
    hub.rate_limiter.set_quotas(LOCAL_ANONYMOUS, api=2)
    url = f"{hub.url}/api/models/org/model"
    outputs = [
        # bytes, not text=True: universal newlines would hide whether header lines end in CRLF
        subprocess.run(["curl", "-sS", "-i", url], capture_output=True, timeout=30).stdout.decode()
        for _ in range(3)
    ]
    lines = [out.split("\r\n\r\n", 1)[0].split("\r\n") for out in outputs]
    assert [head[0] for head in lines] == ["HTTP/1.1 200 OK"] * 2 + ["HTTP/1.1 429 Too Many Requests"]
    # hub-docs: RateLimit `"api|pages|resolvers";r=[remaining];t=[seconds remaining until reset]` and
    # RateLimit-Policy `"fixed window";"api|pages|resolvers";q=[total allowed for window];w=[window seconds]`.
    for head, remaining in zip(lines, (1, 0, 0), strict=True):
        limit = [line for line in head if line.startswith("RateLimit:")]
        assert len(limit) == 1 and re.fullmatch(rf'RateLimit: "api";r={remaining};t=(\d+)', limit[0])
        assert 0 < int(limit[0].rsplit("=", 1)[1]) <= 300
        assert 'RateLimit-Policy: "fixed window";"api";q=2;w=300' in head
    body = json.loads(outputs[2].split("\r\n\r\n", 1)[1])
    assert body["error"].startswith("We had to rate limit your IP (127.0.0.1).")


# --------------------------------------------------------------------------------------------- real client
CLIENT = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
kind, repo, *files = sys.argv[1:]
if kind == "files":
    out = {f: open(hf_hub_download(repo, f), "rb").read().hex() for f in files}
else:
    root = snapshot_download(repo)
    import pathlib
    out = {p.name: p.read_bytes().hex() for p in sorted(pathlib.Path(root).iterdir())}
print(json.dumps(out))
"""


def run_client(hub: HubEmulator, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """huggingface_hub in a child process, configured like a user's: HF_ENDPOINT and an empty HF_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", CLIENT, *args], env=env, capture_output=True, text=True, timeout=60
    )


def downloaded(proc: subprocess.CompletedProcess[str]) -> dict[str, bytes]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: bytes.fromhex(data) for name, data in json.loads(proc.stdout).items()}


@pytest.mark.soak
def test_real_client_hf_hub_download_waits_for_the_reset(hub: HubEmulator, tmp_path: Path) -> None:
    model(hub)
    hub.rate_limiter = limiter = RateLimiter(window=1)
    limiter.set_quotas(LOCAL_ANONYMOUS, resolvers=2)
    # The LFS file costs one resolver call (HEAD, a 302) and a CDN GET (free); config.json's HEAD uses the
    # last call of the window, so its GET gets the 429 and the client must sleep until the reset.
    proc = run_client(hub, tmp_path, "files", "org/model", "model.safetensors", "config.json")
    assert downloaded(proc) == {"model.safetensors": WEIGHTS, "config.json": CONFIG}
    assert limiter.count(LOCAL_ANONYMOUS, "resolvers") == BucketCount(requests=4, rejected=1)
    log = [(r.origin, r.method, r.path.rsplit("/", 1)[-1], r.status) for r in hub.requests]
    assert [entry[1:] for entry in log if entry[0] == "api"] == [
        ("HEAD", "model.safetensors", 302),
        ("HEAD", "config.json", 200),
        ("GET", "config.json", 429),
        ("GET", "config.json", 200),
    ]
    assert [entry[3] for entry in log if entry[0] == "cdn"] == [200]
    # It read t=1 and slept t + 1 s: the retry lands after the reset, not after a blind backoff.
    rejected, retry = (r for r in hub.requests if r.method == "GET" and r.path.endswith("config.json"))
    assert retry.time - rejected.time >= 2.0
    assert "Rate limited. Waiting 2.0s before retry" in proc.stderr


@pytest.mark.soak
def test_real_client_snapshot_download_waits_in_a_paginated_listing(hub: HubEmulator, tmp_path: Path) -> None:
    files = {f"part{i}.txt": f"part {i}\n".encode() for i in range(4)}
    model(hub, **files)
    hub.page_size = 2  # the tree listing takes two pages
    hub.rate_limiter = limiter = RateLimiter(window=1)
    limiter.set_quotas(LOCAL_ANONYMOUS, api=2)  # revision info + the first page; the second waits
    proc = run_client(hub, tmp_path, "snapshot", "org/model")
    assert downloaded(proc) == files
    assert limiter.counts() == {
        (LOCAL_ANONYMOUS, "api"): BucketCount(requests=4, rejected=1),
        (LOCAL_ANONYMOUS, "resolvers"): BucketCount(requests=8, rejected=0),
    }
    api = [(r.path.rsplit("/", 2)[-2], r.query.get("cursor") is not None, r.status) for r in hub.requests]
    assert api[:4] == [
        ("revision", False, 200),
        ("tree", False, 200),
        ("tree", True, 429),
        ("tree", True, 200),
    ]
    rejected, retry = hub.requests[2:4]
    assert retry.time - rejected.time >= 2.0


def test_real_client_does_not_wait_on_a_closed_window_for_revision_info(
    hub: HubEmulator, tmp_path: Path
) -> None:
    """huggingface_hub 2.5's `repo_info` does not retry a 429: snapshot_download gives up at once.

    What a tool built on it meets when its API window is used up (issue 27): the Hub's headers say when to
    come back, but only the backoff paths (/resolve HEAD and GET, paginated listings) read them.
    """
    model(hub)
    hub.rate_limiter = limiter = RateLimiter(window=60)
    limiter.set_quotas(LOCAL_ANONYMOUS, api=0)
    started = time.monotonic()
    proc = run_client(hub, tmp_path, "snapshot", "org/model")
    assert proc.returncode != 0 and "LocalEntryNotFoundError" in proc.stderr
    assert (
        "429 Too Many Requests: you have reached your 'api' rate limit.\nRetry after 60 seconds"
        in proc.stderr
    )
    assert limiter.counts() == {(LOCAL_ANONYMOUS, "api"): BucketCount(requests=1, rejected=1)}
    assert time.monotonic() - started < 30  # it did not sleep the window's 60 s


@pytest.mark.parametrize("window", [0, -1.0, float("inf")])
def test_settings_are_checked(window: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(window=window)
    with pytest.raises(ValueError):
        RateLimiter().set_quotas(LOCAL_ANONYMOUS, downloads=3)
    with pytest.raises(ValueError):
        RateLimiter().set_tier("alice", "platinum")
