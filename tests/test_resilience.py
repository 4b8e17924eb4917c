"""Issue 4, end to end: retries, proxy failover, resume across runs, crash, disk and concurrency safety.

Every test runs the real CLI in a subprocess against the Hub emulator (and test proxies), injects
the fault, and then checks the cache the way its readers do: every blob hashes to its name, every
snapshot link points at it, and huggingface_hub itself (`scan_cache_dir`, offline `hf_hub_download`)
reads the right bytes. Waits are kept small (`--max-wait 0.2`, `Retry-After: 1` at most).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from prefetch.cache import RepoCache
from prefetch.cancel import CancelToken
from prefetch.download.engine import Transfer
from prefetch.download.job import FileJob
from prefetch.download.partial import CHUNK, PartialFile, RangeSet
from prefetch.errors import Cancelled, ConnectError, DiskSpaceError, ProxyRoutesFailed
from prefetch.net.connection import Headers
from prefetch.net.proxies import bypasses_proxy
from prefetch.net.retry import RetryPolicy, is_retryable, retry_after_seconds
from prefetch.net.session import Http
from prefetch.run import Settings
from prefetch.settings import RetrySettings
from tests.conftest import PrefetchRunner
from tests.hubemu import Fault, HubEmulator
from tests.hubemu.hub import _json

MiB = 1 << 20
IN_FLIGHT = MiB  # per connection: bytes a server may have sent that sit unread in socket buffers
FAST = ("--max-wait", "0.2")
RETRY_LINE = re.compile(r"retry (\d+)/(\d+) in ([\d.]+)s: (.*)")


# ---------------------------------------------------------------------------------------------- helpers
@dataclass
class Model:
    """A repo on the test Hub and the bytes of each of its files."""

    hub: HubEmulator
    repo_id: str
    commit: str
    files: dict[str, bytes]

    def etag(self, path: str) -> str:
        return self.hub.repo(self.repo_id).file_info(self.commit, path).etag

    def folder(self, cache: Path) -> Path:
        return cache / ("models--" + self.repo_id.replace("/", "--"))

    def partial_state(self, cache: Path, path: str) -> dict[str, Any] | None:
        state = self.folder(cache) / "blobs" / f"{self.etag(path)}.prefetch-partial.json"
        try:
            return json.loads(state.read_text())
        except (OSError, ValueError):
            return None

    def done_bytes(self, cache: Path, path: str) -> int:
        state = self.partial_state(cache, path) or {"done": []}
        return sum(b - a for a, b in state["done"])


def make_model(hub: HubEmulator, repo_id: str = "org/model", big: int = 3 * MiB, seed: int = 4) -> Model:
    """config.json (tiny), tokenizer.json (regular, 300 KiB), model.safetensors (LFS, `big` bytes)."""
    rng = random.Random(seed)
    files = {
        "config.json": b'{"hidden": 8}',
        "tokenizer.json": rng.randbytes(300 * 1024),
        "model.safetensors": rng.randbytes(big),
    }
    commit = hub.create_repo(repo_id).commit(files)
    return Model(hub, repo_id, commit, files)


def sync(prefetch: PrefetchRunner, *extra: str, env: dict[str, str | None] | None = None) -> Any:
    return prefetch("-v", "sync", str(prefetch.tmp / "models.yaml"), *FAST, *extra, env=env)


def retry_lines(text: str) -> list[str]:
    return [m.group(0) for m in RETRY_LINE.finditer(text)]


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def assert_cache_verifies(cache: Path, model: Model, revision: str = "main") -> None:
    """Every file: a blob named by its hash with exactly those bytes, linked from the snapshot, and
    huggingface_hub (scan_cache_dir, offline hf_hub_download) reads the right bytes."""
    folder = model.folder(cache)
    for path, data in model.files.items():
        etag = model.etag(path)
        blob = folder / "blobs" / etag
        assert blob.is_file() and not blob.is_symlink(), path
        content = blob.read_bytes()
        assert (hashlib.sha256(content).hexdigest() if len(etag) == 64 else git_sha1(content)) == etag, path
        assert content == data, path
        link = folder / "snapshots" / model.commit / path
        assert link.is_symlink() and link.resolve() == blob.resolve(), path
    assert sorted(p.name for p in (folder / "blobs").iterdir()) == sorted(model.etag(p) for p in model.files)
    assert (folder / "refs" / revision).read_text() == model.commit

    from huggingface_hub import hf_hub_download, scan_cache_dir

    info = scan_cache_dir(cache)
    assert [str(w) for w in info.warnings] == []
    (repo,) = [r for r in info.repos if r.repo_id == model.repo_id]
    (rev,) = [r for r in repo.revisions if r.commit_hash == model.commit]
    assert {f.file_name for f in rev.files} == {p.rsplit("/", 1)[-1] for p in model.files}
    for path, data in model.files.items():
        local = hf_hub_download(
            model.repo_id, path, revision=revision, cache_dir=cache, local_files_only=True
        )
        assert Path(local).read_bytes() == data, path


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own (needs root: skipped elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---------------------------------------------------------------------------------------------- retries
def test_every_retryable_status_on_file_bytes_is_retried_and_logged_once(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    statuses = [408, 429, 500, 502, 503, 504]
    faults = [hub.inject(Fault(kind="status", status=s, origin="cdn")) for s in statuses]
    result = sync(prefetch)
    assert result.code == 0, result
    assert [f.fired for f in faults] == [1] * len(statuses)
    lines = retry_lines(result.stderr)
    assert len(lines) == len(statuses), lines  # each retry logged exactly once
    for n, (line, status) in enumerate(zip(lines, statuses, strict=True), start=1):
        assert line.startswith(f"retry {n}/7 in "), line
        assert "model.safetensors" in line and f"{status} from /lfs/" in line, line
    assert_cache_verifies(prefetch.cache_dir, model)


def test_503_bursts_on_metadata_and_resolve_are_retried(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    faults = [
        hub.inject(Fault(kind="status", status=503, times=3, match="/revision/")),
        hub.inject(Fault(kind="reset", times=1, match="/tree/", after_bytes=10)),  # a truncated listing
        hub.inject(Fault(kind="status", status=503, times=2, match="/auth-check")),
        hub.inject(Fault(kind="status", status=503, times=2, match="/resolve/.*/model.safetensors")),
        hub.inject(Fault(kind="status", status=503, times=2, match="/resolve/.*/config.json")),
    ]
    result = sync(prefetch)
    assert result.code == 0, result
    assert [f.fired for f in faults] == [3, 1, 2, 2, 2]
    lines = retry_lines(result.stderr)
    assert len(lines) == 10, lines
    assert (
        sum(
            re.search(r"/revision/main \(https?://127\.0\.0\.1:\d+\): 503", line) is not None
            for line in lines
        )
        == 3
    )
    assert sum("reset" in line.lower() for line in lines) == 1
    assert_cache_verifies(prefetch.cache_dir, model)


def test_429_honours_the_servers_wait_over_max_wait(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.inject(Fault(kind="status", status=429, match="/revision/", headers={"Retry-After": "1"}))
    result = sync(prefetch)  # --max-wait 0.2: the server's 1 s must win
    assert result.code == 0, result
    (line,) = retry_lines(result.stderr)
    assert " in 1.0s: " in line and "429" in line, line
    times = [r.time for r in hub.requests if r.path.endswith("/revision/main")]
    assert len(times) == 2 and times[1] - times[0] >= 0.95


def test_a_429_of_the_hubs_quota_waits_for_the_window_and_is_not_a_retry(prefetch, hub):
    """With the Hub's `RateLimit` headers, the 429 says the bucket's window is spent: the request waits
    for the next one (tests/test_ratelimit.py paces whole runs)."""
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.inject(Fault(kind="status", status=429, match="/revision/", headers={"RateLimit": '"api";r=0;t=1'}))
    result = sync(prefetch)
    assert result.code == 0, result
    assert retry_lines(result.stderr) == []
    assert "rate-limited by the Hub (api): waiting 1s" in result.stderr, result
    times = [r.time for r in hub.requests if r.path.endswith("/revision/main")]
    assert len(times) == 2 and times[1] - times[0] >= 0.95


def test_a_wait_beyond_the_time_budget_fails_at_once(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}], retry={"max_time": 5})
    hub.inject(
        Fault(kind="status", status=503, times=None, match="/revision/", headers={"Retry-After": "30"})
    )
    started = time.monotonic()
    result = sync(prefetch)
    assert result.code == 4, result
    assert time.monotonic() - started < 4
    assert "the server asked to wait 30s, beyond the retry time budget" in result.stderr
    assert hub.count(path_contains="/revision/") == 1


@pytest.mark.soak
def test_a_small_file_has_one_time_budget_across_the_lane_and_the_pool(prefetch, hub):
    """A small file's first attempt is the lane's; when it fails, its next attempts are the segment pool's.
    They are one request's attempts, with one `retry.max_time`: an attempt that alone outlasted the budget
    (here a drip-fed body dropped after its 2 s window, against a 1.5 s budget) is the last. The pool used to
    start the budget again: a second attempt, and a 30 s budget took 120 s."""
    config = os.urandom(8 * 1024)
    commit = hub.create_repo("org/model").commit({"config.json": config})
    prefetch.manifest([{"repo": "org/model"}], retry={"attempts": 100, "max_time": 1.5})
    hub.inject(Fault(kind="slow", match="config.json", times=None, bytes_per_sec=100))
    result = sync(prefetch, env={"PREFETCH_MIN_RATE_WINDOW": "2"})
    assert result.code == 4, result
    assert "too slow" in result.stderr, result
    assert hub.count(path_contains=f"/resolve/{commit}/config.json") == 1, result


@pytest.mark.parametrize(
    ("flags", "retry", "expected"),
    [
        (("--retries", "3"), None, 3),
        ((), {"attempts": 2, "max_wait": 0.01}, 2),
        (("--retries", "2"), {"attempts": 6}, 2),
    ],
    ids=["cli", "manifest", "cli-overrides-manifest"],
)
def test_attempts_are_bounded_and_configurable(prefetch, hub, flags, retry, expected):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}], **({"retry": retry} if retry else {}))
    hub.inject(Fault(kind="status", status=503, times=None, match="/revision/"))
    result = sync(prefetch, *flags)
    assert result.code == 4, result
    assert hub.count(path_contains="/revision/") == expected
    assert f"gave up after {expected} attempts" in result.stderr
    lines = retry_lines(result.stderr)
    assert [line.split(" in ")[0] for line in lines] == [
        f"retry {n}/{expected - 1}" for n in range(1, expected)
    ]
    assert not prefetch.cache_dir.exists() or not any(prefetch.cache_dir.rglob("blobs"))


@pytest.mark.parametrize("status", [401, 403, 404])
def test_401_403_404_fail_fast_without_retry(prefetch, hub, status):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.inject(Fault(kind="status", status=status, times=None, match="/resolve/.*/config.json"))
    result = sync(prefetch)
    assert result.code == 3, result
    assert hub.count(path_contains="config.json") == 1
    assert retry_lines(result.stderr) == []
    assert "config.json" in result.stderr and str(status) in result.stderr


def test_byte_requests_ask_for_identity_encoding(prefetch, hub):
    """Offsets and hashes are of the stored bytes: a gzip'ed body would corrupt both."""
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    assert sync(prefetch).code == 0
    file_gets = [r for r in hub.requests if r.origin == "cdn" or "/resolve/" in r.path]
    assert file_gets and {r.headers.get("accept-encoding") for r in file_gets} == {"identity"}


@pytest.mark.soak
def test_an_expired_cdn_url_is_asked_for_again(prefetch, hub):
    """Signed CDN URLs expire; a retry after the remembered URL expired asks /resolve again, and is no
    access error."""
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.cdn_url_ttl = 1
    hub.inject(Fault(kind="slow", origin="cdn", bytes_per_sec=MiB))  # the reset comes after the URL expired
    hub.inject(Fault(kind="reset", origin="cdn", after_bytes=2 * MiB))
    result = sync(prefetch)
    assert result.code == 0, result
    assert "the download URL was refused (403); got a new one" in result.stderr
    assert hub.count(path_contains="/resolve/", kind="file") == 4  # two small files; the LFS file twice
    assert hub.bytes_served(path_contains="/lfs/") <= 3 * MiB + 128 * 1024  # resumed, not started over
    assert_cache_verifies(prefetch.cache_dir, model)


def test_the_segments_of_one_file_ask_resolve_once(prefetch, hub):
    """A file's first request learns where its bytes are served (the CDN); its other segments wait for
    that answer instead of each going through /resolve's redirect too."""
    model = make_model(hub, big=8 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    result = sync(prefetch, "--segment-size", "1", "--segment-threshold", "1", "--jobs", "8")
    assert result.code == 0, result
    assert [r.path for r in hub.requests if "/resolve/" in r.path].count(
        f"/{model.repo_id}/resolve/{model.commit}/model.safetensors"
    ) == 1
    assert hub.count(origin="cdn") == 8  # one per 1 MiB segment
    assert_cache_verifies(prefetch.cache_dir, model)


# ---------------------------------------------------------------------------------------------- bodies
def test_reset_mid_body_resumes_from_the_break(prefetch, hub):
    model = make_model(hub, big=4 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    sha = model.etag("model.safetensors")
    hub.inject(Fault(kind="slow", origin="cdn", bytes_per_sec=16 * MiB))
    hub.inject(Fault(kind="reset", origin="cdn", after_bytes=3 * MiB // 2))
    result = sync(prefetch)
    assert result.code == 0, result
    (line,) = retry_lines(result.stderr)
    assert "model.safetensors" in line and "reset" in line.lower(), line
    gets = [r for r in hub.requests if sha in r.path]
    assert [r.status for r in gets] == [206, 206]
    resumed_at = int(re.match(r"bytes=(\d+)-", gets[1].range or "").group(1))
    assert 3 * MiB // 2 - 128 * 1024 <= resumed_at <= 3 * MiB // 2
    assert hub.bytes_served(path_contains=sha) <= 4 * MiB + 128 * 1024
    assert_cache_verifies(prefetch.cache_dir, model)


def test_corrupt_bytes_are_discarded_and_fetched_again(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    corrupt = hub.inject(Fault(kind="corrupt", origin="cdn"))
    result = sync(prefetch)
    assert result.code == 0, result
    assert corrupt.fired == 1
    assert "hash mismatch for org/model:model.safetensors: discarded, fetching it again" in result.stderr
    assert hub.count(path_contains=model.etag("model.safetensors")) == 2
    assert_cache_verifies(prefetch.cache_dir, model)


def test_a_repeated_mismatch_exits_5_naming_the_file_and_stores_nothing(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.inject(Fault(kind="corrupt", origin="cdn", times=None))
    result = sync(prefetch)
    assert result.code == 5, result
    assert "org/model:model.safetensors" in result.stderr and "do not match" in result.stderr
    sha = model.etag("model.safetensors")
    assert hub.count(path_contains=sha) == 2  # one retry for a mismatch, never more
    blobs = model.folder(prefetch.cache_dir) / "blobs"
    assert not (blobs / sha).exists()
    assert not list(blobs.glob(f"{sha}*"))  # no partial kept either: those bytes are bad
    assert not (model.folder(prefetch.cache_dir) / "snapshots").exists()
    assert not (prefetch.tmp / "models.lock").exists()


def test_a_slow_body_completes(prefetch, hub):
    model = make_model(hub, big=MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    slow = hub.inject(Fault(kind="slow", origin="cdn", bytes_per_sec=2 * MiB))
    result = sync(prefetch)
    assert result.code == 0, result
    assert slow.fired == 1 and retry_lines(result.stderr) == []
    assert_cache_verifies(prefetch.cache_dir, model)


# ---------------------------------------------------------------------------------------------- resume
def cut_network_midway(prefetch: PrefetchRunner, hub: HubEmulator, model: Model, at: int) -> int:
    """A run whose connections to the CDN always break after `at` bytes: exits 4, keeps the partial."""
    slow = hub.inject(Fault(kind="slow", origin="cdn", times=None, bytes_per_sec=32 * MiB))
    cut = hub.inject(Fault(kind="reset", origin="cdn", times=None, after_bytes=at))
    result = sync(prefetch, "--retries", "1")
    assert result.code == 4, result
    for fault in (slow, cut):
        fault.times = fault.fired  # exhausted: the next run has a clean network
    return model.done_bytes(prefetch.cache_dir, "model.safetensors")


def test_a_network_cut_resumes_on_the_next_run(prefetch, hub):
    model = make_model(hub, big=6 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    done = cut_network_midway(prefetch, hub, model, at=5 * MiB // 2)
    assert 2 * MiB <= done <= 5 * MiB // 2
    hub.reset_counters()
    result = sync(prefetch)
    assert result.code == 0, result
    assert f"resuming org/model:model.safetensors: {done} of {6 * MiB} bytes already on disk" in result.stderr
    assert hub.bytes_served(path_contains=model.etag("model.safetensors")) == 6 * MiB - done
    assert_cache_verifies(prefetch.cache_dir, model)


def test_after_a_reboot_only_synced_ranges_are_trusted(prefetch, hub):
    model = make_model(hub, big=6 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    done = cut_network_midway(prefetch, hub, model, at=5 * MiB // 2)
    state_path = (
        model.folder(prefetch.cache_dir)
        / "blobs"
        / f"{model.etag('model.safetensors')}.prefetch-partial.json"
    )
    state = json.loads(state_path.read_text())
    assert state["synced"] == state["done"] and state["boot_id"]  # an orderly exit fsyncs what it kept
    state.update(boot_id="another-boot", synced=[[0, MiB]])  # as if the page cache had lost the rest
    state_path.write_text(json.dumps(state))
    hub.reset_counters()
    result = sync(prefetch)
    assert result.code == 0, result
    assert hub.bytes_served(path_contains=model.etag("model.safetensors")) == 5 * MiB
    assert done > MiB
    assert_cache_verifies(prefetch.cache_dir, model)


def test_a_server_ignoring_range_restarts_the_file_cleanly(prefetch, hub):
    model = make_model(hub, big=6 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    assert cut_network_midway(prefetch, hub, model, at=2 * MiB) > 0
    ignore = hub.inject(Fault(kind="ignore_range", origin="cdn", times=None))
    result = sync(prefetch)
    assert result.code == 0, result
    assert ignore.fired >= 1
    assert "model.safetensors: server ignored the Range request; starting the file over" in result.stderr
    assert_cache_verifies(prefetch.cache_dir, model)


@pytest.mark.soak
def test_sigkill_halfway_then_the_rerun_fetches_only_the_remainder(prefetch, hub):
    size = 96 * MiB  # above the segment threshold: three 32 MiB segments in parallel
    model = make_model(hub, big=size)
    prefetch.manifest([{"repo": model.repo_id}])
    sha = model.etag("model.safetensors")
    hub.bandwidth_per_connection = 12 * MiB
    proc = prefetch.popen("-v", "sync", str(prefetch.tmp / "models.yaml"), *FAST)
    try:
        wait_for(lambda: model.done_bytes(prefetch.cache_dir, "model.safetensors") >= size // 2, what="half")
    finally:
        proc.send_signal(signal.SIGKILL)
        finish(proc)
    assert proc.returncode == -signal.SIGKILL
    blobs = model.folder(prefetch.cache_dir) / "blobs"
    assert not (blobs / sha).exists()  # nothing half-written under the blob's name
    assert not (model.folder(prefetch.cache_dir) / "snapshots").exists()
    done = model.done_bytes(prefetch.cache_dir, "model.safetensors")
    first = hub.bytes_served(path_contains=sha)
    assert size // 2 <= done < size
    # At most one chunk per connection was lost, plus what the Hub had sent into the socket buffers
    # (never read: loopback buffers grow past 256 KiB when a loaded machine reads slowly).
    lost = 3 * (CHUNK + IN_FLIGHT)
    assert first - done <= lost

    hub.bandwidth_per_connection = None
    hub.reset_counters()
    result = sync(prefetch)
    assert result.code == 0, result
    second = hub.bytes_served(path_contains=sha)
    assert second == size - done  # only the remainder
    assert first + second <= size + lost
    assert all(r.range and not r.range.startswith("bytes=0-") for r in hub.requests if sha in r.path)
    assert_cache_verifies(prefetch.cache_dir, model)


def test_ctrl_c_keeps_the_partial_and_the_rerun_resumes(prefetch, hub):
    model = make_model(hub, big=24 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    sha = model.etag("model.safetensors")
    hub.bandwidth_per_connection = 12 * MiB
    proc = prefetch.popen("-v", "sync", str(prefetch.tmp / "models.yaml"), *FAST)
    wait_for(lambda: model.done_bytes(prefetch.cache_dir, "model.safetensors") >= 4 * MiB, what="4 MiB")
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    code, _, err = finish(proc, timeout=15)
    assert code == 130, err
    assert time.monotonic() - started < 5
    done = model.done_bytes(prefetch.cache_dir, "model.safetensors")
    first = hub.bytes_served(path_contains=sha)
    assert first - done <= CHUNK + 256 * 1024
    hub.bandwidth_per_connection = None
    hub.reset_counters()
    result = sync(prefetch)
    assert result.code == 0, result
    assert hub.bytes_served(path_contains=sha) == 24 * MiB - done
    assert_cache_verifies(prefetch.cache_dir, model)


def test_ctrl_c_says_the_partial_download_is_kept(prefetch, hub):
    model = make_model(hub, big=8 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.bandwidth_per_connection = 4 * MiB
    proc = prefetch.popen("sync", str(prefetch.tmp / "models.yaml"), *FAST)
    wait_for(lambda: model.done_bytes(prefetch.cache_dir, "model.safetensors") >= MiB, what="1 MiB")
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc, timeout=15)
    assert code == 130
    assert "interrupted; partial downloads are kept and the next run resumes them" in err


def test_a_cancelled_sync_stops_and_the_next_sync_in_the_same_process_completes(prefetch, hub, monkeypatch):
    """A library caller cancels one `sync()` from another thread (as the CLI's signal handler does);
    the cancellation belongs to that run: the next `sync()` in the same process fetches and verifies."""
    from prefetch import sync as sync_mod

    for key in [k for k in os.environ if k.startswith(("HF_", "HUGGING")) or "proxy" in k.lower()]:
        monkeypatch.delenv(key)
    for key, value in prefetch.env.items():
        monkeypatch.setenv(key, value)
    model = make_model(hub, big=8 * MiB)
    manifest = prefetch.manifest([{"repo": model.repo_id}])
    settings = Settings(retry_max_wait=0.2)
    hub.bandwidth_per_connection = 2 * MiB
    cancel = CancelToken()

    def cancel_after_a_mebibyte() -> None:
        wait_for(lambda: model.done_bytes(prefetch.cache_dir, "model.safetensors") >= MiB, what="1 MiB")
        cancel.cancel()

    threading.Thread(target=cancel_after_a_mebibyte, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        sync_mod.sync(manifest, settings=settings, cancel=cancel)
    assert time.monotonic() - started < 15
    done = model.done_bytes(prefetch.cache_dir, "model.safetensors")
    assert MiB <= done < 8 * MiB  # stopped midway, the partial download kept
    assert not (prefetch.tmp / "models.lock").exists()

    hub.bandwidth_per_connection = None
    hub.reset_counters()
    result = sync_mod.sync(manifest, settings=settings)
    assert result.stats.files_fetched >= 1  # the big file at least (the small ones may be in already)
    assert hub.bytes_served(path_contains=model.etag("model.safetensors")) == 8 * MiB - done  # resumed
    assert (prefetch.tmp / "models.lock").exists()
    assert_cache_verifies(prefetch.cache_dir, model)


# ---------------------------------------------------------------------------------------------- proxies
@pytest.mark.parametrize("mode", ["refuse", "407", "502", "503", "504", "reset"])
def test_a_failing_proxy_hands_over_to_the_next_and_the_run_stays_there(prefetch, hub, proxy_factory, mode):
    model = make_model(hub)
    bad, good = proxy_factory(mode), proxy_factory("ok")
    prefetch.manifest([{"repo": model.repo_id}], proxies=[bad.url, good.url])
    result = sync(prefetch)
    assert result.code == 0, result
    (line,) = [line for line in result.stderr.splitlines() if "proxy failover" in line]
    assert f"now using proxy {good.url} (proxy {bad.url}: " in line, line
    expected = {
        "refuse": "ConnectError",
        "407": r"answered 407 Proxy Authentication Required \(the proxy needs credentials",
        "502": "answered 502",
        "503": "answered 503",
        "504": "answered 504",
        "reset": "reset by peer|disconnected without sending a response",  # depends on when the RST lands
    }[mode]
    assert re.search(expected, line), line
    assert bad.count() <= 1  # sticky: the failed proxy is not asked again
    assert good.count() >= hub.count()  # every request after the first went through the good one
    assert_cache_verifies(prefetch.cache_dir, model)


def test_when_every_proxy_fails_the_error_names_each_with_its_answer(prefetch, hub, proxy_factory):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    wants_login = proxy_factory("ok", credentials=("alice", "right-password"))
    refusing, gateway = proxy_factory("refuse"), proxy_factory("502")
    with_password = f"http://alice:wr0ng-s3cret@127.0.0.1:{wants_login.port}"
    args = ["--proxy", with_password, "--proxy", refusing.url, "--proxy", gateway.url, "--retries", "2"]
    result = sync(prefetch, *args)
    assert result.code == 4, result
    assert "wr0ng-s3cret" not in result.output
    err = result.stderr
    assert f"proxy http://alice:***@127.0.0.1:{wants_login.port}: answered 407" in err
    assert "the proxy refused the credentials in its URL" in err
    assert f"proxy {refusing.url}: ConnectError" in err
    assert f"proxy {gateway.url}: answered 502" in err
    assert "not found" not in err.lower()  # a 407 is not a missing file
    assert hub.count() == 0


def test_proxies_that_only_want_credentials_fail_fast(prefetch, hub, proxy_factory):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}], proxies=[proxy_factory("407").url, proxy_factory("407").url])
    result = sync(prefetch)
    assert result.code == 4, result
    assert retry_lines(result.stderr) == []  # retrying cannot fix missing credentials
    assert result.stderr.count("the proxy needs credentials") >= 2


def test_proxies_from_the_environment_fail_over_and_no_proxy_bypasses(prefetch, hub, proxy_factory):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    refusing, good = proxy_factory("refuse"), proxy_factory("ok")
    result = sync(prefetch, env={"HTTPS_PROXY": refusing.url, "HTTP_PROXY": good.url})
    assert result.code == 0, result
    assert f"proxy failover: now using proxy {good.url}" in result.stderr
    assert good.count() >= hub.count() > 0
    assert_cache_verifies(prefetch.cache_dir, model)

    other = make_model(hub, "org/other", seed=9)
    prefetch.manifest([{"repo": other.repo_id}])
    good.reset_counters()
    result = sync(prefetch, env={"HTTP_PROXY": refusing.url, "NO_PROXY": "localhost,127.0.0.0/8"})
    assert result.code == 0, result
    assert "proxy failover" not in result.stderr
    assert_cache_verifies(prefetch.cache_dir, other)


# ---------------------------------------------------------------------------------------------- shared cache
def test_two_syncs_on_one_cache_fetch_each_blob_once(prefetch, hub):
    rng = random.Random(7)
    files = {f"shard-{i}.safetensors": rng.randbytes(4 * MiB) for i in range(4)}
    files["config.json"] = b'{"shards": 4}'
    commit = hub.create_repo("org/sharded").commit(files)
    model = Model(hub, "org/sharded", commit, files)
    for name in ("a.yaml", "b.yaml"):
        prefetch.manifest([{"repo": model.repo_id}], name=name)
    hub.bandwidth_per_connection = 8 * MiB
    first = prefetch.popen("sync", str(prefetch.tmp / "a.yaml"), "-j", "1", *FAST)
    try:
        wait_for(
            lambda: list(model.folder(prefetch.cache_dir).glob("blobs/*.prefetch-partial")), what="partial"
        )
        second = prefetch.popen("sync", str(prefetch.tmp / "b.yaml"), "-j", "4", *FAST)
        results = [finish(second), finish(first)]
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    for code, _, err in results:
        assert code == 0, err
    fetched = [int(re.search(r"fetched (\d+) files?", out).group(1)) for _, out, _ in results]
    # Both worked; the shards do not overlap. The small config.json takes no lock (README, "Shared caches"):
    # both syncs fetch it at their start, the second while the first's waits for its one connection.
    assert all(n >= 1 for n in fetched) and sum(fetched) in (len(files), len(files) + 1), fetched
    for path, data in files.items():
        etag = model.etag(path)
        key = etag if len(etag) == 64 else path
        served = hub.bytes_served(path_contains=key)
        assert served == len(data) if len(data) >= MiB else served in (len(data), 2 * len(data)), path
    assert_cache_verifies(prefetch.cache_dir, model)


HF_DOWNLOAD = """
import hashlib, sys
from huggingface_hub import hf_hub_download
path = hf_hub_download("org/model", "model.safetensors")
print(hashlib.sha256(open(path, "rb").read()).hexdigest())
"""


def hf_download(prefetch: PrefetchRunner) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HF_DOWNLOAD)],
        env=prefetch.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.soak
@pytest.mark.parametrize("who_first", ["prefetch", "huggingface_hub"])
def test_beside_a_huggingface_hub_download_each_blob_is_fetched_once(prefetch, hub, who_first):
    model = make_model(hub, big=8 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    sha = model.etag("model.safetensors")
    blobs = model.folder(prefetch.cache_dir) / "blobs"
    hub.bandwidth_per_connection = 4 * MiB
    if who_first == "prefetch":
        ours = prefetch.popen("sync", str(prefetch.tmp / "models.yaml"), *FAST)
        wait_for(lambda: (blobs / f"{sha}.prefetch-partial").exists(), what="prefetch's partial file")
        theirs = hf_download(prefetch)
    else:
        theirs = hf_download(prefetch)
        wait_for(lambda: list(blobs.glob(f"{sha}*.incomplete")), what="huggingface_hub's .incomplete file")
        ours = prefetch.popen("sync", str(prefetch.tmp / "models.yaml"), *FAST)
    code, out, err = finish(theirs)
    assert code == 0, err
    assert out.strip() == sha
    code, out, err = finish(ours)
    assert code == 0, err
    assert hub.bytes_served(path_contains=sha) == 8 * MiB  # one download between the two of them
    assert_cache_verifies(prefetch.cache_dir, model)


def test_ctrl_c_while_waiting_for_another_downloaders_lock_exits_promptly(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    lock_path = (
        prefetch.cache_dir / ".locks" / "models--org--model" / f"{model.etag('model.safetensors')}.lock"
    )
    lock_path.parent.mkdir(parents=True)
    with FileLock(str(lock_path)):  # as a huggingface_hub download in progress would
        proc = prefetch.popen("-v", "sync", str(prefetch.tmp / "models.yaml"), *FAST)
        wait_for(lambda: hub.count(path_contains="config.json") >= 1, what="the other files")
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting for the lock
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc, timeout=10)
    assert code == 130, err
    assert hub.count(path_contains=model.etag("model.safetensors")) == 0


def test_when_another_downloader_completes_the_blob_our_partial_is_dropped(prefetch, hub):
    model = make_model(hub, big=6 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    assert cut_network_midway(prefetch, hub, model, at=2 * MiB) > 0
    sha = model.etag("model.safetensors")
    blobs = model.folder(prefetch.cache_dir) / "blobs"
    hub.reset_counters()
    with FileLock(str(prefetch.cache_dir / ".locks" / "models--org--model" / f"{sha}.lock")):
        proc = prefetch.popen("-v", "sync", str(prefetch.tmp / "models.yaml"), *FAST)
        wait_for(lambda: hub.count(path_contains="auth-check") >= 1, what="the access check")
        time.sleep(0.5)
        (blobs / sha).write_bytes(
            model.files["model.safetensors"]
        )  # as huggingface_hub would, under the lock
    code, _, err = finish(proc)
    assert code == 0, err
    assert hub.bytes_served(path_contains=sha) == 0
    assert not list(blobs.glob(f"{sha}.*"))  # the stale partial and its state are gone
    assert_cache_verifies(prefetch.cache_dir, model)


# ---------------------------------------------------------------------------------------------- disk
def test_not_enough_space_stops_before_the_first_byte_with_exit_8(prefetch, hub):
    model = make_model(hub, big=24 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    with tmpfs(prefetch.tmp / "small", "20m") as small:
        result = sync(prefetch, "--cache-dir", str(small / "hub"))
        assert result.code == 8, result
        assert "not enough disk space" in result.stderr and str(small / "hub") in result.stderr
        assert hub.count(kind="file") == 0
        assert not any(p.is_file() for p in small.rglob("*"))


def test_disk_full_mid_write_exits_8_and_the_rerun_resumes(prefetch, hub):
    size = 24 * MiB  # 24 MiB + its 2.5 MiB margin fits in 100 MiB: the pre-flight check passes
    model = make_model(hub, big=size)
    prefetch.manifest([{"repo": model.repo_id}])
    with tmpfs(prefetch.tmp / "disk", "100m") as disk:
        cache = disk / "hub"
        hub.bandwidth_per_connection = 8 * MiB
        proc = prefetch.popen(
            "-v", "sync", str(prefetch.tmp / "models.yaml"), "--cache-dir", str(cache), *FAST
        )
        wait_for(lambda: model.done_bytes(cache, "model.safetensors") >= 4 * MiB, what="4 MiB")
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with (
            open(filler, "wb") as f,
            contextlib.suppress(OSError),
        ):  # leave 300 KiB: a short write, then ENOSPC
            f.write(b"\0" * (free - 300 * 1024))
        code, _, err = finish(proc)
        assert code == 8, err
        assert "disk full while writing org/model:model.safetensors" in err
        assert not list(cache.rglob(".*.tmp"))  # no litter from a failed state save
        done = model.done_bytes(cache, "model.safetensors")
        assert done >= 4 * MiB
        filler.unlink()
        hub.bandwidth_per_connection = None
        hub.reset_counters()
        result = sync(prefetch, "--cache-dir", str(cache))
        assert result.code == 0, result
        assert hub.bytes_served(path_contains=model.etag("model.safetensors")) == size - done
        assert_cache_verifies(cache, model)


# ---------------------------------------------------------------------------------------------- modes, paths
@pytest.mark.parametrize(("umask", "file", "folder"), [(0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_files_and_folders_follow_the_umask(prefetch, hub, umask, file, folder):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    old = os.umask(umask)
    try:
        result = sync(prefetch)
    finally:
        os.umask(old)
    assert result.code == 0, result
    root = model.folder(prefetch.cache_dir)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert {mode(p) for p in (root / "blobs").iterdir()} == {file}
    assert mode(root / "refs" / "main") == file
    for path in (
        prefetch.cache_dir,
        root,
        root / "blobs",
        root / "snapshots",
        root / "snapshots" / model.commit,
        root / "refs",
        prefetch.cache_dir / ".locks" / root.name,
    ):
        assert mode(path) == folder, path
    if umask == 0o002:  # a group-shared cache: every group member can take huggingface_hub's locks
        assert {mode(p) for p in (prefetch.cache_dir / ".locks" / root.name).iterdir()} == {0o664}


def test_a_partial_file_of_a_group_shared_cache_is_group_writable(prefetch, hub):
    model = make_model(hub, big=6 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    old = os.umask(0o002)
    try:
        cut_network_midway(prefetch, hub, model, at=2 * MiB)
    finally:
        os.umask(old)
    partial = (
        model.folder(prefetch.cache_dir) / "blobs" / f"{model.etag('model.safetensors')}.prefetch-partial"
    )
    assert partial.stat().st_mode & 0o777 == 0o664  # another member of the group can resume it


@pytest.mark.parametrize(
    "path", ["../../evil.txt", "/tmp/prefetch-evil-abs.txt"]
)  # more: tests/test_cache.py
def test_a_hostile_tree_listing_is_refused_and_nothing_is_written(prefetch, hub, path):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    entry = {"type": "file", "path": path, "size": 4, "oid": git_sha1(b"evil")}
    honest = hub._tree
    hub._tree = lambda rec, *args: _json(200, [*json.loads(honest(rec, *args).body), entry])  # type: ignore[method-assign]
    result = sync(prefetch)
    assert result.code == 5, result
    assert f"refusing unsafe file path from the server: {path!r}" in result.stderr
    assert hub.count(kind="file") == 0
    assert not list(prefetch.tmp.rglob("*evil*")) and not Path("/tmp/prefetch-evil-abs.txt").exists()
    assert not (prefetch.cache_dir / "models--org--model" / "snapshots").exists()


# ---------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"RateLimit": '"api";r=0;t=55'}, 55.0),
        ({"RateLimit": "limit=100, remaining=0, reset=7"}, 7.0),
        ({"RateLimit-Reset": "9"}, 9.0),
        ({"RateLimit": '"api";r=10'}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers, seconds):
    fields = Headers(headers.items())  # the answers' type: case-insensitive, as a server may spell them
    assert retry_after_seconds(fields) == seconds


def test_retry_policy_waits_are_capped_and_cancellable():
    policy = RetryPolicy(RetrySettings(attempts=100, max_wait=30, max_time=60))
    cancel = CancelToken()
    calls = []

    def failing() -> None:
        calls.append(time.monotonic())
        raise ConnectError("refused")

    threading.Timer(0.3, cancel.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        policy.call(failing, "GET x", cancel=cancel)
    assert time.monotonic() - started < 5 and len(calls) >= 1


def test_cancelling_the_run_wakes_every_retry_wait_of_the_run():
    """Worker threads never see KeyboardInterrupt: the signal handler cancels the run's token instead."""
    run = CancelToken()
    policy = RetryPolicy(RetrySettings(attempts=100, max_wait=30, max_time=600), cancel=run)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            policy.call(lambda: (_ for _ in ()).throw(ConnectError("refused")), "GET x")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # past the first short backoffs: now in a long wait
    started = time.monotonic()
    run.cancel()
    for thread in threads:
        thread.join(5)
    assert time.monotonic() - started < 1
    assert len(errors) == 3 and all(isinstance(e, Cancelled) for e in errors)


def test_ctrl_c_during_a_metadata_outage_exits_promptly(prefetch, hub):
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.inject(Fault(kind="status", status=503, times=None, match="/revision/"))
    proc = prefetch.popen("sync", str(prefetch.tmp / "models.yaml"), "--retries", "6", "--max-wait", "4")
    wait_for(lambda: hub.count(path_contains="/revision/") >= 4, what="a few retries")
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    code, _, err = finish(proc, timeout=30)
    assert code == 130, err
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("huggingface.co", 443, "huggingface.co", True),
        ("cdn-lfs.huggingface.co", 443, ".huggingface.co", True),
        ("cdn-lfs.huggingface.co", 443, "huggingface.co", True),
        ("nothuggingface.co", 443, "huggingface.co", False),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("127.0.0.1", 8080, "127.0.0.1:8080", True),
        ("127.0.0.1", 8081, "127.0.0.1:8080", False),
        ("::1", 80, "::1", True),
        ("example.com", 443, "*", True),
        ("example.com", 443, "", False),
    ],
)
def test_no_proxy_matching(host, port, no_proxy, bypass):
    assert bypasses_proxy(host, no_proxy, port) is bypass


def test_only_credential_failures_are_permanent():
    assert is_retryable(ProxyRoutesFailed([("proxy a", "ConnectError")]))
    assert not is_retryable(ProxyRoutesFailed([("proxy a", "answered 407")], permanent=True))


def test_rangeset():
    ranges = RangeSet([(10, 20), (0, 5), (5, 10), (30, 40)])
    assert ranges.ranges == [(0, 20), (30, 40)]
    assert ranges.missing(50) == [(20, 30), (40, 50)]
    assert ranges.covered_from(3) == 20 and ranges.covered_from(25) == 25
    assert ranges.total() == 30


def job_for(tmp_path: Path, data: bytes) -> FileJob:
    cache = RepoCache(tmp_path, "org/m", "model")
    return FileJob(
        cache, "http://x/r/", "org/m", "f", None, hashlib.sha256(data).hexdigest(), len(data), True
    )


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """pwrite may write less than asked (a nearly full disk): the rest must still be written."""
    data = random.Random(1).randbytes(3 * CHUNK)
    job = job_for(tmp_path, data)
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, buf, off: real(fd, bytes(buf)[:100_000], off))
    partial = PartialFile(job, [])
    for offset in range(0, len(data), CHUNK):
        partial.write(offset, data[offset : offset + CHUNK])
    assert partial.digest() == job.etag
    partial.close()
    assert job.cache.partial_path(job.etag).read_bytes() == data  # the hash came from memory: check the disk


def resident_pages(path: Path) -> list[bool]:
    """Which pages of the file are in the page cache (mincore(2) over a private, never-touched map)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) == 0, ctypes.get_errno()
        return [bool(v & 1) for v in vector]


def drops_clean_pages(folder: Path) -> bool:
    """Whether this filesystem drops a file's written-back pages when asked (tmpfs cannot: they are
    the file)."""
    probe = folder / "probe"
    with open(probe, "wb") as f:
        f.write(b"x" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        return not any(resident_pages(probe))
    finally:
        probe.unlink()


def test_a_synced_blob_is_not_left_in_the_page_cache(prefetch, hub):
    """End to end through the test Hub: a big file fetched as segments is installed with none of its
    pages cached, and reads back right (from disk)."""
    if not drops_clean_pages(prefetch.tmp):
        pytest.skip("this filesystem keeps written-back pages (tmpfs)")
    model = make_model(hub, big=40 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    result = sync(prefetch, "--segment-size", "4", "--segment-threshold", "4", "--jobs", "4")
    assert result.code == 0, result
    blob = model.folder(prefetch.cache_dir) / "blobs" / model.etag("model.safetensors")
    resident = resident_pages(blob)
    assert not any(resident), f"{sum(resident)} of {len(resident)} pages still cached"
    assert_cache_verifies(prefetch.cache_dir, model)


def test_bytes_hashed_and_on_disk_leave_the_page_cache(tmp_path):
    """A download does not fill the page cache: warming a node's cache would evict the workload's own
    pages, and on a VM whose host takes back free memory every fresh page costs a fault (~4 s per GiB
    against ~0.3 s for pages just freed). So the bytes behind the hash go, a little behind it."""
    if not drops_clean_pages(tmp_path):
        pytest.skip("this filesystem keeps written-back pages (tmpfs)")
    from prefetch.download.partial import RELEASE_LAG

    data = random.Random(3).randbytes(40 * CHUNK)
    job = job_for(tmp_path, data)
    partial = PartialFile(job, [])
    for offset in range(0, len(data), CHUNK):
        partial.write(offset, data[offset : offset + CHUNK])
        os.fdatasync(partial.fd)  # on disk at once (a disk faster than the link): only those pages go
    resident = resident_pages(job.cache.partial_path(job.etag))
    behind = (len(data) - 2 * RELEASE_LAG) // mmap.PAGESIZE
    assert not any(resident[:behind]), f"{sum(resident[:behind])} of {behind} pages still cached"
    assert all(resident[-RELEASE_LAG // mmap.PAGESIZE :])  # the hash's last bytes: not waited for yet
    assert partial.digest() == job.etag
    job.cache.installer.install_blob(job.etag, verified_fd=partial.fd)
    partial.close(keep_state=False)
    blob = job.cache.blob_path(job.etag)
    assert not any(resident_pages(blob)), "an installed blob's pages are still cached"
    assert blob.read_bytes() == data


def test_data_is_fsynced_periodically_and_recorded_as_synced(tmp_path, monkeypatch):
    import prefetch.download.partial as partial_module

    monkeypatch.setattr(partial_module, "SYNC_EVERY", 2 * CHUNK)
    synced = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd))
    data = random.Random(2).randbytes(5 * CHUNK)
    job = job_for(tmp_path, data)
    partial = PartialFile(job, [])
    for offset in range(0, 3 * CHUNK, CHUNK):
        partial.write(offset, data[offset : offset + CHUNK])
    state = json.loads(job.cache.state_path(job.etag).read_text())
    assert len(synced) == 1 and state["synced"] == [[0, 2 * CHUNK]] and state["done"] == [[0, 3 * CHUNK]]
    partial.close()
    state = json.loads(job.cache.state_path(job.etag).read_text())
    assert state["synced"] == state["done"] == [[0, 3 * CHUNK]]


def test_a_full_disk_anywhere_in_the_pipeline_is_exit_8(tmp_path):
    http = Http("http://127.0.0.1:9", [], RetryPolicy(RetrySettings()))
    try:
        transfer = Transfer(http)
        job = job_for(tmp_path, b"x")
        transfer.failed(OSError(errno.ENOSPC, "No space left on device"), job)
        (error,) = transfer.stats.errors
        assert isinstance(error, DiskSpaceError) and error.exit_code == 8
    finally:
        http.close()
