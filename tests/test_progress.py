"""Progress displays through the real CLI: JSON events, CI lines, quiet, a terminal bar, and the plan.

Plus fast unit tests of the formatting and of the benchmark script's helpers (the benchmark itself,
`bench/run.py --quick`, takes < 60 s and runs only with `-m soak`).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from prefetch.auth import Secrets
from prefetch.progress import JsonProgress, LineProgress, Progress, human_bytes, human_duration, make_progress
from tests.conftest import CANARY_TOKEN, ROOT, PrefetchRunner
from tests.hubemu import Fault, HubEmulator

MiB = 1024 * 1024


def make_repo(hub: HubEmulator, name: str = "org/model", small: int = 3, lfs_size: int = 2 * MiB) -> Any:
    """A repo with `small` regular files and one LFS file."""
    repo = hub.create_repo(name)
    files = {f"config-{i}.json": b'{"i": %d}\n' % i for i in range(small)}
    files["model.safetensors"] = os.urandom(lfs_size)
    repo.commit(files)
    return repo


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line must be one JSON object."""
    events = []
    for line in stdout.splitlines():
        event = json.loads(line)  # raises on anything that is not JSON
        assert isinstance(event, dict) and "event" in event, line
        events.append(event)
    return events


# ---------------------------------------------------------------------------------------------- --json
def test_json_emits_plan_files_and_summary_only(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub)
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("--json", "sync", "models.yaml")
    assert result.code == 0, result
    events = json_lines(result.stdout)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "plan" and kinds[-1] == "summary", kinds
    assert set(kinds) - {"progress"} == {"plan", "file", "summary"}, kinds  # (progress: once a second)
    plan = events[0]
    assert plan["fetch_files"] == 4 and plan["dry_run"] is False
    (entry,) = plan["entries"]
    assert entry["repo"] == "org/model" and entry["files"] == 4 and entry["cached_files"] == 0
    assert entry["bytes"] == plan["fetch_bytes"] > 2 * MiB
    files = [e for e in events if e["event"] == "file"]
    assert sorted(e["path"] for e in files) == [
        "config-0.json",
        "config-1.json",
        "config-2.json",
        "model.safetensors",
    ]
    assert all(e["repo"] == "org/model" and e["result"] == "fetched" for e in files)
    assert files[-1]["done_files"] == files[-1]["total_files"] == 4
    summary = events[-1]
    assert summary["fetched_files"] == 4 and summary["dry_run"] is False


def test_json_reports_retries(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub, small=1)
    hub.inject(Fault("status", status=503, times=1, origin="cdn"))
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("--json", "sync", "models.yaml", "--max-wait", "0.2")
    assert result.code == 0, result
    events = json_lines(result.stdout)
    retries = [e for e in events if e["event"] == "retry"]
    assert len(retries) == 1 and "503" in retries[0]["message"], events
    assert events[-1]["event"] == "summary"


def test_json_plan_command(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub)
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("--json", "plan", "models.yaml")
    assert result.code == 0, result
    events = json_lines(result.stdout)
    assert [e["event"] for e in events] == ["plan", "summary"]
    assert events[0]["dry_run"] is True and events[0]["fetch_files"] == 4
    assert hub.count(kind="file") == 0


# ---------------------------------------------------------------------------------------------- no TTY, quiet
def test_ci_lines_every_interval(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub, small=1, lfs_size=3 * MiB)
    hub.bandwidth_per_connection = 2 * MiB  # ~1.5 s for the LFS file: several status lines at 0.2 s
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("sync", "models.yaml", env={"PREFETCH_PROGRESS_INTERVAL": "0.2"})
    assert result.code == 0, result
    status = [line for line in result.stderr.splitlines() if line.startswith("prefetch: ") and "ETA" in line]
    assert len(status) >= 3, result.stderr
    assert all("/s, ETA " in line and "files " in line for line in status)
    assert any("active: model.safetensors" in line for line in status), status
    assert "\r" not in result.stderr  # no bar redraws in a log
    assert "synced 1 entry" in result.stdout


def test_a_sync_waiting_for_another_process_says_so_and_what_it_awaits(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """Another process holds the big file's blob lock (as a second sync, or huggingface_hub, would while it
    downloads it). At the default level the run says that it waits, for which file and on which lock; its
    status lines name the file under "waiting", not as active, and make no estimate out of a rate of
    nothing. When that process installs the blob, the file is done with its bytes counted, not fetched."""
    from filelock import FileLock

    repo = make_repo(hub, small=2, lfs_size=2 * MiB)
    prefetch.manifest([{"repo": "org/model"}])
    sha = repo.file_info("main", "model.safetensors").etag
    lock = prefetch.cache_dir / ".locks" / "models--org--model" / f"{sha}.lock"
    lock.parent.mkdir(parents=True)
    with FileLock(str(lock)):
        proc = prefetch.popen("sync", "models.yaml", env={"PREFETCH_PROGRESS_INTERVAL": "0.2"})
        deadline = time.monotonic() + 30
        while hub.count(path_contains="config-1.json") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # several status lines while it waits
        blob = prefetch.cache_dir / "models--org--model" / "blobs" / sha
        blob.write_bytes(repo.files()["model.safetensors"])  # as that process would install it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (
        f"waiting for another process downloading org/model:model.safetensors (2.0 MiB): it holds the blob's "
        f"lock {lock}" in err
    ), err
    status = [line for line in err.splitlines() if line.startswith("prefetch: ") and "ETA" in line]
    waiting = [line for line in status if "waiting for another process: model.safetensors" in line]
    assert len(waiting) >= 3, err
    assert all("active: model.safetensors" not in line and "ETA ?" in line for line in waiting), waiting
    assert hub.count(path_contains=sha) == 0
    assert "fetched 2 files" in out, out


def test_quiet_prints_nothing(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub)
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("--quiet", "sync", "models.yaml")
    assert result.code == 0, result
    assert result.stdout == "" and result.stderr == ""


def test_quiet_still_reports_errors(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    prefetch.manifest([{"repo": "org/missing"}])
    result = prefetch("--quiet", "sync", "models.yaml")
    assert result.code != 0
    assert result.stdout == "" and "error" in result.stderr


# ---------------------------------------------------------------------------------------------- levels
def test_quiet_shows_no_retry(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """`-q` is "only errors": a retry that succeeded is not one."""
    make_repo(hub)
    prefetch.manifest([{"repo": "org/model"}])
    hub.inject(Fault(kind="status", status=503, origin="cdn"))
    result = prefetch("-q", "sync", "models.yaml", "--max-wait", "0.1")
    assert result.code == 0, result
    assert result.stdout == "" and result.stderr == "", result


def test_verbose_says_what_is_fetched_from_where_and_very_verbose_every_request(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """A cold sync: -v names each entry's resolution and each file with the URL its bytes come from (a CDN
    URL without its signed query); -vv adds every request with its answer. The token is never shown."""
    hub.add_user("alice", token=CANARY_TOKEN)
    make_repo(hub, small=1)
    prefetch.manifest([{"repo": "org/model"}])
    env = {"HF_TOKEN": CANARY_TOKEN}
    verbose = prefetch("-v", "sync", "models.yaml", env=env)
    assert verbose.code == 0, verbose
    lines = verbose.stderr.splitlines()
    assert f"prefetch: INFO: resolving model org/model@main at {hub.url}" in lines, verbose
    fetching = [line for line in lines if line.startswith("prefetch: INFO: fetching org/model:")]
    assert len(fetching) == 2, verbose
    big = next(line for line in fetching if "model.safetensors (2,097,152 bytes) from " in line)
    assert "/lfs/" in big and big.endswith("?…") and "=" not in big, big  # the signed query is left out
    config = next(line for line in fetching if "config-0.json" in line)
    assert config.endswith(f"from {hub.url}/org/model/resolve/{hub.repo('org/model').head()}/config-0.json")
    shutil.rmtree(prefetch.cache_dir)
    (prefetch.tmp / "models.lock").unlink()
    hub.reset_counters()
    debug = prefetch("-vv", "sync", "models.yaml", env=env)
    assert debug.code == 0, debug
    requests = [line for line in debug.stderr.splitlines() if line.startswith("prefetch: DEBUG: GET ")]
    assert f"prefetch: DEBUG: GET {hub.url}/api/models/org/model/revision/main -> 200 OK" in requests, debug
    assert any(" -> 302 Found" in line and "model.safetensors" in line for line in requests), requests
    assert len(requests) == len(hub.requests), (requests, [r.path for r in hub.requests])
    assert CANARY_TOKEN not in debug.output and "Bearer" not in debug.output


def test_json_is_all_on_stdout_and_stderr_stays_quiet(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """Under --json a retry is one `retry` event (not also a text warning), and an error is the last
    event (not also text on stderr); a usage error too."""
    make_repo(hub)
    prefetch.manifest([{"repo": "org/model"}])
    hub.inject(Fault(kind="status", status=503, origin="cdn"))
    hub.inject(Fault(kind="status", status=404, times=None, match="/config-1.json"))
    result = prefetch("--json", "sync", "models.yaml", "--max-wait", "0.1")
    assert result.code == 3, result
    assert result.stderr == "", result
    events = json_lines(result.stdout)
    kinds = [e["event"] for e in events]
    assert kinds.count("retry") == 1 and kinds[-1] == "error" and "log" not in kinds, kinds
    usage = prefetch("--json", "sync", "--no-such-flag")
    assert usage.code == 2 and usage.stderr == "", usage
    assert json_lines(usage.stdout)[-1]["exit_code"] == 2


def test_retry_lines_count_against_the_real_bound_and_name_the_host(prefetch: PrefetchRunner) -> None:
    """A host that never answered gets 3 attempts (not the 8 of `retry.attempts`): its retry lines say
    `1/2`, `2/2`, then the error says 3 attempts, and each line names the host's origin."""
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("sync", "models.yaml", "--max-wait", "0.1", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.code == 4, result
    retries = [line for line in result.stderr.splitlines() if "retry " in line]
    assert [line.split("retry ", 1)[1].split(" ", 1)[0] for line in retries] == ["1/2", "2/2"], result
    assert all("(http://127.0.0.1:9): ConnectError" in line for line in retries), retries
    assert "gave up after 3 attempts" in result.stderr


# ---------------------------------------------------------------------------------------------- terminal
def run_in_pty(
    prefetch: PrefetchRunner, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; returns (exit code, everything shown)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 30 rows, 120 columns
    proc = subprocess.Popen(
        prefetch.command(*args),
        cwd=prefetch.tmp,
        env=prefetch.env_with({"COLUMNS": "120", "TERM": "xterm", **(env or {})}),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(timeout=10)
    return code, b"".join(chunks).decode(errors="replace")


def test_terminal_shows_one_bar_with_files(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub, small=2, lfs_size=3 * MiB)
    hub.bandwidth_per_connection = 4 * MiB
    prefetch.manifest([{"repo": "org/model"}])
    code, screen = run_in_pty(prefetch, "sync", "models.yaml")
    assert code == 0, screen
    assert "prefetch 100%|" in screen, screen
    assert "files 3/3" in screen and "active: model.safetensors" in screen, screen
    assert "\r" in screen  # redrawn in place, not one line per update
    assert "synced 1 entry" in screen


@pytest.mark.soak
@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_hf_hub_disable_progress_bars_gives_lines_on_a_terminal(
    prefetch: PrefetchRunner, hub: HubEmulator, value: str
) -> None:
    """huggingface_hub's switch (set in prefetch's own image): no bar, but the CI status lines."""
    make_repo(hub, small=2, lfs_size=3 * MiB)
    hub.bandwidth_per_connection = 2 * MiB
    prefetch.manifest([{"repo": "org/model"}])
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": value, "PREFETCH_PROGRESS_INTERVAL": "0.2"}
    code, screen = run_in_pty(prefetch, "sync", "models.yaml", env=env)
    assert code == 0, screen
    assert "100%|" not in screen and "\r" not in screen.replace("\r\n", ""), screen  # no bar redraws
    assert any(line.startswith("prefetch: ") and "ETA" in line for line in screen.splitlines()), screen
    assert "synced 1 entry" in screen


def test_hf_hub_disable_progress_bars_false_keeps_the_bar(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub, small=1, lfs_size=3 * MiB)
    hub.bandwidth_per_connection = 4 * MiB
    prefetch.manifest([{"repo": "org/model"}])
    code, screen = run_in_pty(prefetch, "sync", "models.yaml", env={"HF_HUB_DISABLE_PROGRESS_BARS": "0"})
    assert code == 0, screen
    assert "prefetch 100%|" in screen, screen


def test_hf_hub_disable_progress_bars_leaves_json_alone(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repo(hub, small=1, lfs_size=MiB)
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("--json", "sync", "models.yaml", env={"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert result.code == 0, result
    kinds = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert kinds[0] == "plan" and kinds[-1] == "summary" and "file" in kinds, kinds


# ---------------------------------------------------------------------------------------------- plan / dry run
def test_dry_run_lists_each_repo_with_files_bytes_and_cached(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    make_repo(hub, "org/cached")
    make_repo(hub, "org/fresh", small=5)
    prefetch.manifest([{"repo": "org/cached"}])
    assert prefetch("--quiet", "sync", "models.yaml").code == 0
    prefetch.manifest([{"repo": "org/cached"}, {"repo": "org/fresh"}])
    (prefetch.tmp / "models.lock").unlink()
    hub.reset_counters()
    for args in (("sync", "models.yaml", "--dry-run"), ("plan", "models.yaml")):
        result = prefetch(*args)
        assert result.code == 0, result
        lines = result.stdout.splitlines()  # the plan is the command's output (issue 16)
        cached = next(line for line in lines if "org/cached" in line)
        fresh = next(line for line in lines if "org/fresh" in line)
        assert re.search(r"4 files \([\d.]+ (B|KiB|MiB)\), 4 cached, 0 to fetch \(0 B\)", cached), cached
        assert re.search(
            r"6 files \([\d.]+ (B|KiB|MiB)\), 0 cached, 6 to fetch \([\d.]+ (B|KiB|MiB)\)", fresh
        ), fresh
    assert hub.count(kind="file") == 0  # nothing downloaded
    assert not (prefetch.tmp / "models.lock").exists()  # and no lockfile written


# ---------------------------------------------------------------------------------------------- units
def test_human_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"
    assert human_duration(5.4) == "5s"
    assert human_duration(75) == "1m15s"
    assert human_duration(3725) == "1h02m"


class _Job:
    def __init__(self, label: str, size: int) -> None:
        self.label, self.size, self.etag = label, size, "e" * 64


def test_status_line_names_active_files() -> None:
    progress = Progress()
    progress.start(4 * MiB, 5)
    for i in range(5):
        progress.file_started(_Job(f"org/m:dir/f{i}.bin", MiB))  # type: ignore[arg-type]
    progress.advance(2 * MiB)
    progress.file_done(_Job("org/m:dir/f0.bin", MiB), "fetched")  # type: ignore[arg-type]
    line = progress.status_line()
    assert line.startswith("2.0 MiB / 4.0 MiB (50%), ")
    assert "files 1/5" in line and "active: f1.bin, f2.bin, f3.bin (+1 more)" in line


def test_line_progress_ticks_until_closed() -> None:
    out = io.StringIO()
    progress = LineProgress(interval=0.05, stream=out)
    progress.start(10, 1)
    progress.advance(5)
    time.sleep(0.3)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("prefetch: 5 B / 10 B (50%)") for line in lines)
    count = len(lines)
    time.sleep(0.15)
    assert len(out.getvalue().splitlines()) == count  # closed: no more lines


def test_json_progress_is_one_object_per_line() -> None:
    out = io.StringIO()
    progress = JsonProgress(stream=out)
    progress.start(1, 1)
    progress.message("repos[0] (org/m@main) -> abc: 1 files")  # human text: never on stdout
    progress.event("warning", repo="org/m", message="something")
    progress.retry("retry 1/7 in 0.3s: GET x: 503")
    progress.file_done(_Job("org/m:a.json", 1), "fetched")  # type: ignore[arg-type]
    events = json_lines(out.getvalue())
    assert [e["event"] for e in events] == ["warning", "retry", "file"]
    assert events[2] == {
        "event": "file", "repo": "org/m", "path": "a.json", "size": 1, "etag": "e" * 64, "result": "fetched",
        "done_files": 1, "total_files": 1,
    }  # fmt: skip


def test_make_progress_picks_lines_without_a_terminal() -> None:
    assert type(make_progress("quiet", Secrets())).__name__ == "QuietProgress"
    assert type(make_progress("json", Secrets())).__name__ == "JsonProgress"
    expected = "TtyProgress" if sys.stderr.isatty() else "LineProgress"
    assert type(make_progress("auto", Secrets())).__name__ == expected


# ---------------------------------------------------------------------------------------------- bench helpers
def test_bench_counts_only_written_bytes_of_a_sparse_file(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.run import data_bytes

    path = tmp_path / "blob.prefetch-partial"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(b"x" * MiB)
    assert data_bytes(path) in range(MiB, MiB + 64 * 1024)


def test_bench_table_shows_spreads_ratios_missing_peers_and_targets() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.run import Run, summarize, table

    def runs(tool: str, *walls: float) -> list[Run]:
        return [Run(tool, "cold", w, 0, 90.0, 0.5 * w, 0.25 * w, requests=8) for w in walls]

    nbytes = 1024 * MiB
    tools = {
        "prefetch": summarize(runs("prefetch", 2.0, 1.9, 2.6), nbytes, 4),
        "hf": summarize(runs("hf", 4.0, 4.4, 3.9), nbytes, 4),
        "aria2c": summarize(
            [*runs("aria2c", 2.5), Run("aria2c", "cold", 9.0, 97, 20.0, 1.0, 1.0)], nbytes, 4
        ),
    }
    results = {
        "cap": {
            "title": "cold, 4 × 256 MiB, capped", "subject": "prefetch", "files": 4, "bytes": nbytes,
            "tools": tools, "missing": {"hf_transfer": "not installed (pip install hf_transfer)"},
            "ratios": {"hf": 0.5, "aria2c": 0.8}, "cpu_per_file": False,
        },
    }  # fmt: skip
    text = table(results)
    assert (
        "| cold, 4 × 256 MiB, capped | prefetch | 2.00 s (1.90–2.60) |  | 1.50 s/GiB | 90 MB | 2.000 |"
        in text
    )
    assert "| cold, 4 × 256 MiB, capped | hf | 4.00 s (3.90–4.40) | 0.50 |" in text
    assert "| cold, 4 × 256 MiB, capped | aria2c | 2.50 s | 0.80 |" in text  # the failed run is left out
    assert "| hf_transfer | missing: not installed (pip install hf_transfer) |" in text
    assert "| cold, 4 × 256 MiB, capped: prefetch / aria2c | 0.80 | ≤ 1 | met |" in text


def test_bench_growth_is_time_growth_over_file_count_growth() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.run import growth

    def row(wall: float, rss: float = 0.0) -> dict[str, Any]:
        return {"tools": {"prefetch": {"wall": wall, "rss_mb": rss}, "prefetch verify": {"wall": wall}}}

    results = {
        "files-1000-cold": row(1.0, 40.0), "files-1000-warm": row(0.2), "files-1000-verify": row(0.3),
        "files-3000-cold": row(3.3, 50.0), "files-3000-warm": row(0.6), "files-3000-verify": row(1.8),
    }  # fmt: skip
    (step,) = growth(results, (1000, 3000))
    assert step["cold"] == pytest.approx(1.1) and step["warm"] == pytest.approx(1.0)
    assert step["verify"] == pytest.approx(2.0)
    assert step["rss_kb_per_file"] == pytest.approx(10 * 1024 / 2000)


@pytest.mark.soak
@pytest.mark.timeout(420)  # < 60 s on a quiet machine; 2-3 minutes when other suites share the 2 cores
def test_bench_quick_runs() -> None:
    """The whole benchmark on small data (< 60 s on a quiet machine): every workload runs and prints its table."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-prime"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| workload | tool | wall: median (min–max) | prefetch / tool |" in result.stdout
    for row in (
        "HTTP",
        "HTTPS (nginx)",
        "HTTPS (Python test Hub)",
        "1 × 32 MiB",
        "per connection (nginx)",
        "per connection (Python test Hub)",
        "small files",
        "900 files",
        "manifest of 10 repos",
    ):
        assert f"{row} | prefetch |" in result.stdout, row
    assert "| failed |" not in result.stdout  # a peer that is installed must work; others say "missing"
    if shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK):  # .ci/run installs it
        assert "| prefetch | missing: nginx" not in result.stdout
