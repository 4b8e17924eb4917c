"""Scale: repos of tens of thousands of files stay linear (no cyclic-GC rescans, a lockfile read and
written line by line, flat memory per file), and connections adapt to a per-connection cap.

No timed asserts: what is checked is what makes the time (collections, the fast lockfile path, peak
memory, requests, connections); bench/run.py measures the times themselves.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from prefetch.errors import VerifyError
from prefetch.lockfile import _split_files_blocks, dump_lock, load_lock
from prefetch.offline.verify import verify
from tests.conftest import PrefetchRunner
from tests.hubemu import SharedLink

MiB = 1024 * 1024
MANY = 30_000
RSS_LIMIT_MB = 120  # the bound at 100k files; 30k files must stay well under it


def many_files(count: int) -> dict[str, bytes]:
    """`count` distinct tiny regular files in folders of 250 (as a large dataset repo has them)."""
    return {f"data/part-{i // 250:03d}/sample-{i:06d}.json": b'{"i": %d}' % i for i in range(count)}


# Runs the command given in argv from a fresh, small interpreter and prints the command's peak RSS:
# measured straight from pytest, wait4 would report pytest's own RSS, which a forked child inherits.
PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_under(prefetch: PrefetchRunner, wrapper: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as the argv that follows `wrapper` (a command that runs it), in the test's setting."""
    return subprocess.run(
        [*wrapper, *prefetch.command(*args)],
        cwd=prefetch.tmp,
        env=prefetch.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_measured(prefetch: PrefetchRunner, *args: str) -> float:
    """Run the CLI (it must succeed); its peak RSS in MB."""
    proc = run_under(prefetch, [sys.executable, "-c", PEAK_RSS], *args)
    code, rss_kb = proc.stdout.split()
    assert code == "0", proc.stderr
    return int(rss_kb) / 1024


@pytest.fixture
def many_repo(hub: Any, prefetch: PrefetchRunner) -> Path:
    hub.page_size = 10 * MANY  # the test Hub rebuilds its whole listing per page: one page keeps it linear
    hub.create_repo("org/many").commit(many_files(MANY))
    return prefetch.manifest([{"repo": "org/many"}])


def test_a_30k_file_lock_is_read_line_by_line_and_verified_without_cyclic_collections(
    prefetch: PrefetchRunner, many_repo: Path, tmp_path: Path
) -> None:
    rss = run_measured(prefetch, "lock", str(many_repo))
    assert rss < RSS_LIMIT_MB
    lock_path = prefetch.tmp / "models.lock"
    text = lock_path.read_text()
    assert _split_files_blocks(text) is not None  # the fast reader takes it (no YAML node per scalar)
    lock = load_lock(lock_path)
    assert len(lock.entries[0].files) == MANY
    assert dump_lock(lock) == text  # and the fast writer gives the same bytes back

    assert gc.isenabled()
    before = [s["collections"] for s in gc.get_stats()]
    with pytest.raises(VerifyError) as info:  # an empty cache: 30k problems, objects for every file
        verify(lock_path, cache_dir=tmp_path / "empty", fast=True)
    after = [s["collections"] for s in gc.get_stats()]
    assert gc.isenabled()  # restored afterwards
    # With the collector on this is hundreds of collections; paused, only the one that follows
    # re-enabling it (its allocation counter is past the threshold by then).
    assert after[0] - before[0] <= 1 and after[2] == before[2]
    assert len(info.value.problems) == 2 * MANY + 1  # every link, every blob, the ref


@pytest.mark.soak  # ~1-2 min on a loaded 2-core machine: 30k real downloads
def test_30k_files_cold_warm_verify(hub: Any, prefetch: PrefetchRunner, many_repo: Path) -> None:
    sync = ("--quiet", "sync", str(many_repo))
    cold_rss = run_measured(prefetch, *sync)
    assert hub.count(kind="file") <= 1.05 * MANY
    hub.reset_counters()
    warm_rss = run_measured(prefetch, *sync)
    assert hub.count() == 0  # a warm no-op asks the Hub nothing
    verify_rss = run_measured(prefetch, "--quiet", "verify", str(prefetch.tmp / "models.lock"))
    assert max(cold_rss, warm_rss, verify_rss) < RSS_LIMIT_MB
    # Per file, verify holds the lock's record and one small one per blob: no result, key or list
    # each (those were ~1.1 KB per file in all; 100k files took 143 MB). The baseline is verify of a
    # one-file lock of the same snapshot: the same imports and code, so only the per-file part differs.
    lock = load_lock(prefetch.tmp / "models.lock")
    one_file = replace(lock, entries=(replace(lock.entries[0], files=lock.entries[0].files[:1]),))
    (prefetch.tmp / "one.lock").write_text(dump_lock(one_file))
    one_file_rss = run_measured(prefetch, "--quiet", "verify", str(prefetch.tmp / "one.lock"))
    assert verify_rss - one_file_rss < MANY * 0.8 / 1024


# ---- system calls per file


def traced_calls(prefetch: PrefetchRunner, *args: str, trace: str) -> list[tuple[str, str]]:
    """Run the CLI under strace (it must succeed): (system call, its line) for each call of `trace`."""
    out = prefetch.tmp / "strace.out"
    proc = run_under(prefetch, ["strace", "-f", "-qq", "-o", str(out), "-e", f"trace={trace}"], *args)
    assert proc.returncode == 0, proc.stderr
    calls = (re.match(r"\d+\s+(\w+)\(", line) for line in out.read_text().splitlines())
    return [(call[1], call.string) for call in calls if call]


def file_syscalls(prefetch: PrefetchRunner, *args: str) -> dict[str, int]:
    """How many times each system call named one of the repo's files (a snapshot entry
    `sample-*.json`, or a blob or partial file, by its 40-hex etag)."""
    counts: dict[str, int] = {}
    for name, line in traced_calls(prefetch, *args, trace="%file,%desc"):
        if re.search(r'"(?:[^"]*/)?(?:sample-\d+\.json|[0-9a-f]{40}[^"/]*)"', line):
            counts[name] = counts.get(name, 0) + 1
    return counts


needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="needs strace (Debian: strace; .ci/run installs it)"
)


@pytest.mark.soak
@needs_strace
def test_a_warm_no_op_sync_asks_the_filesystem_twice_per_file(hub: Any, prefetch: PrefetchRunner) -> None:
    """An up-to-date cache: one stat of each blob (the plan) and one readlink of each snapshot link.
    Not more: no failing symlink, no probe for partial files, no second stat before linking
    (30k files took 3.3 s at ~6 calls per file)."""
    count = 1500
    hub.create_repo("org/many").commit(many_files(count))
    manifest = prefetch.manifest([{"repo": "org/many"}])
    assert prefetch("sync", "--quiet", str(manifest)).code == 0
    for mode in ((), ("--offline",)):
        calls = file_syscalls(prefetch, "sync", "--quiet", *mode, str(manifest))
        assert calls.get("symlinkat", 0) == 0, calls
        assert calls.get("readlinkat", 0) + calls.get("readlink", 0) == count, calls
        assert sum(calls.values()) <= 2 * count + 10, calls


@pytest.mark.soak
@needs_strace
def test_small_files_are_made_durable_in_batches_without_a_lock_file_each(
    hub: Any, prefetch: PrefetchRunner
) -> None:
    """One `syncfs` per batch of small blobs, not an fsync each (a journal commit per file), and no
    lock file per blob (a new inode each): each blob is an unnamed file until it is durable."""
    count = 300
    hub.create_repo("org/many").commit(many_files(count))
    manifest = prefetch.manifest([{"repo": "org/many"}])
    calls = [
        name for name, _ in traced_calls(prefetch, "sync", "--quiet", str(manifest), trace="fsync,syncfs")
    ]
    # A batch closes at 64 blobs, or 0.5 s after its first (many more under strace on a slow machine)
    assert 1 <= calls.count("syncfs") <= count // 5, calls
    assert calls.count("fsync") < 10, calls  # the lock, the blobs and snapshot folders: not the files
    assert not list((prefetch.cache_dir / ".locks").rglob("*.lock"))
    assert prefetch("verify", str(prefetch.tmp / "models.lock")).code == 0


# ---- adaptive connections


def cdn_connections(hub: Any, sha256: str) -> int:
    """Distinct client connections that fetched this blob from the CDN (each is a new port)."""
    return len({r.client_port for r in hub.requests if r.origin == "cdn" and sha256 in r.path})


def one_big_file(hub: Any, prefetch: PrefetchRunner, size: int) -> str:
    data = os.urandom(size)
    commit = hub.create_repo("org/big").commit({"model.safetensors": data})
    prefetch.manifest([{"repo": "org/big"}])
    sha = hub.repo("org/big").file_info(commit, "model.safetensors").sha256
    assert sha
    return str(sha)


def test_a_per_connection_cap_makes_the_engine_use_its_connections_within_jobs(
    hub: Any, prefetch: PrefetchRunner
) -> None:
    """Behind a per-connection cap more connections mean more speed: the limit stays near `--jobs`
    (a rate that only looks lower must not halve it) and never passes it."""
    jobs = 16
    sha = one_big_file(hub, prefetch, 48 * MiB)
    hub.bandwidth_per_connection = 2 * MiB  # each connection's share: more connections, more speed
    segments = ("--segment-size", "1", "--segment-threshold", "1")
    result = prefetch("sync", str(prefetch.tmp / "models.yaml"), "--jobs", str(jobs), *segments)
    assert result.code == 0, result
    assert jobs // 2 < cdn_connections(hub, sha) <= jobs


@pytest.mark.soak
def test_where_more_connections_do_not_pay_the_engine_uses_fewer(hub: Any, prefetch: PrefetchRunner) -> None:
    """Behind a link all connections share, more connections only compete: the limit comes down from
    `--jobs`, so the last files are fetched over a few connections at once (most of the time: now and
    then a doubling is tried again, and undone). The process is not bound by its CPU, so no helper
    process takes files (it would only compete for the link, hidden from the limit)."""
    jobs = 16
    hub.create_repo("org/many").commit(
        {f"data/{i // 250:03d}/{i:05d}.bin": os.urandom(4096) for i in range(750)}
    )
    prefetch.manifest([{"repo": "org/many"}])
    hub.link = SharedLink(1 * MiB)  # ~3 s whatever the number of connections
    result = prefetch("-v", "sync", str(prefetch.tmp / "models.yaml"), "--jobs", str(jobs))
    assert result.code == 0, result
    assert "sharing the small files with a helper process" not in result.stderr
    spans = [(r.time, r.sent) for r in hub.requests if r.kind == "file" and r.sent]
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    late = [a for a, _ in spans if a >= first + 0.6 * (last - first)]
    in_flight = [sum(1 for a, b in spans if a <= t < b) for t in late]
    assert late and statistics.median(in_flight) <= jobs // 4, in_flight  # (a probe upward may show)


# ---- many small files from two processes


def test_two_concurrent_syncs_of_many_small_files_finish_and_verify(
    hub: Any, prefetch: PrefetchRunner
) -> None:
    """Two processes fetching the same small files into one cache (each file under its blob lock):
    both finish, and the cache verifies."""
    hub.create_repo("org/many").commit(many_files(600))
    manifest = prefetch.manifest([{"repo": "org/many"}])
    assert prefetch("lock", str(manifest)).code == 0
    procs = [prefetch.popen("sync", "--frozen", str(manifest), "--jobs", "4") for _ in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    assert hub.count(kind="file") >= 600  # every file fetched (some by both: that is allowed)
    result = prefetch("verify", str(prefetch.tmp / "models.lock"))
    assert result.code == 0, result
