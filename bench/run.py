"""Benchmarks: `prefetch sync` against `hf download` (huggingface_hub) on the project's test Hub.

One run, one machine: the Hub emulator runs in its own process (bench/hubserver.py) and every
client runs as a subprocess with a fresh cache, so wall times include interpreter start-up as a
user sees it, and peak RSS comes from `os.wait4` on that very process.

    python bench/run.py                 # the full set, 3 repetitions, medians
    python bench/run.py --quick         # a smoke run (< 60 s) on small data, 1 repetition
    python bench/run.py --update-doc    # also rewrite the results section of docs/benchmarks.md

Workloads (see docs/benchmarks.md for the targets and the reading of each row):
  cold    4 x 256 MiB LFS files, fresh caches: prefetch, hf download, parallel curl
  cap     the same behind a per-connection bandwidth cap on the CDN (the Hub throttles each connection)
  small   2,000 small regular files: time and requests per file
  warm    no-op re-sync of an up-to-date cache: online, --offline, and hf for comparison
  resume  SIGKILL at about half way under the cap, rerun: bytes re-fetched against bytes missing
  verify  `prefetch verify` of the synced cache against `sha256sum` of the same blobs
  large   peak RSS while syncing 4 x 1 GiB (full mode only)
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
DOC_BEGIN, DOC_END = "<!-- bench:begin -->", "<!-- bench:end -->"
MiB = 1024 * 1024
# Caches of runs this big are deleted right after the run (disk space); smaller ones stay until the
# end. Why: on ext4 without a journal (this VM's disk), creating files shortly after thousands were
# deleted is slow (the freed inodes are scanned), and the run after a deletion paid up to ~1 s.
FREE_AFTER_RUN = 64 * 1024 * 1024
RUN_TIMEOUT = 600.0  # seconds; a run that hangs is killed and reported as failed


# ---------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """What each workload moves; `--quick` shrinks everything."""

    big_files: int = 4
    big_size: int = 256 * MiB
    small_files: int = 2000
    small_size: int = 4096
    cap_bps: float = 20e6  # bytes/s per CDN connection
    large_files: int = 4  # the peak-RSS run; 0 skips it
    large_size: int = 1024 * MiB
    reps: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(big_files=4, big_size=80 * MiB, small_files=300, cap_bps=40e6, large_files=0, reps=1)


BIG, SMALL, LARGE = "bench/big", "bench/small", "bench/large"


# ---------------------------------------------------------------------------------------------- the hub
class Hub:
    """The emulator process (bench/hubserver.py), driven over its stdin/stdout line protocol."""

    def __init__(self, sizes: Sizes, log_dir: Path) -> None:
        specs = [
            f"{BIG}:{sizes.big_files}:{sizes.big_size}:lfs",
            f"{SMALL}:{sizes.small_files}:{sizes.small_size}:small",
        ]
        if sizes.large_files:
            specs.append(f"{LARGE}:{sizes.large_files}:{sizes.large_size}:lfs")
        argv = [sys.executable, str(ROOT / "bench" / "hubserver.py")]
        for spec in specs:
            argv += ["--repo", spec]
        self._stderr = open(log_dir / "hub.err", "w")  # noqa: SIM115  (lives as long as the process)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT
        )
        self._lock = threading.Lock()
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise SystemExit(f"the test Hub did not start; see {log_dir / 'hub.err'}")
        info = json.loads(line)
        self.url: str = info["url"]
        self.pid: int = info["pid"]
        self.repos: dict[str, dict[str, Any]] = info["repos"]

    def call(self, **command: Any) -> dict[str, Any]:
        with self._lock:
            assert self.proc.stdin and self.proc.stdout
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise RuntimeError(f"hub: {answer['error']}")
        return answer

    def stats(self) -> dict[str, int]:
        return self.call(cmd="stats")

    def reset(self) -> None:
        self.call(cmd="reset")

    def bandwidth(self, bps: float | None) -> None:
        self.call(cmd="bandwidth", bps=bps)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(cmd="quit")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One measured process."""

    tool: str
    workload: str
    wall: float
    code: int
    rss_mb: float
    cpu_user: float
    cpu_sys: float
    faults: int = 0  # minor page faults: fresh memory is expensive on a VM (see prime_page_cache)
    requests: int = 0
    heads: int = 0
    bytes_served: int = 0
    telemetry: int = 0
    note: str = ""


@dataclass
class Bench:
    """Shared state of one benchmark session."""

    hub: Hub
    sizes: Sizes
    work: Path
    prefetch_root: Path
    prefetch_args: list[str]
    hf: list[str]
    prime: bool = True
    tools: list[str] = field(default_factory=list)  # empty: every tool
    runs: list[Run] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    counter: int = 0

    def env(self, hf_home: Path) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGING"))
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        }
        env.update(
            HF_ENDPOINT=self.hub.url,
            HF_HOME=str(hf_home),
            HF_HUB_DISABLE_XET="1",
            PYTHONPATH=str(self.prefetch_root),
            NO_PROXY="127.0.0.1,localhost",
        )
        return env

    def fresh(self, name: str) -> Path:
        """An empty folder for one run (cache, HF_HOME, lockfile, logs)."""
        self.counter += 1
        folder = self.work / f"{self.counter:03d}-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "hf_home").mkdir(parents=True)
        return folder

    def manifest(self, folder: Path, repo: str) -> Path:
        path = folder / "models.yaml"
        path.write_text(f"version: 1\nrepos:\n  - repo: {repo}\n    revision: main\n")
        return path

    # -- commands ---------------------------------------------------------------------------------
    def prefetch_cmd(self, folder: Path, repo: str, *extra: str) -> list[str]:
        manifest = (
            self.manifest(folder, repo) if not (folder / "models.yaml").exists() else folder / "models.yaml"
        )
        return [
            sys.executable, "-m", "prefetch", "--quiet", "sync", str(manifest),
            "--cache-dir", str(folder / "cache"), "--lock", str(folder / "models.lock"),
            *self.prefetch_args, *extra,
        ]  # fmt: skip

    def hf_cmd(self, folder: Path, repo: str) -> list[str]:
        return [*self.hf, "download", repo, "--revision", "main", "--cache-dir", str(folder / "cache")]

    def curl_cmd(self, folder: Path, repo: str) -> list[str]:
        info = self.hub.repos[repo]
        out = folder / "curl"
        out.mkdir(exist_ok=True)
        argv = ["curl", "-sS", "-f", "-L", "--parallel", "--parallel-immediate", "--parallel-max", "16"]
        for i, path in enumerate(info["lfs"]):
            argv += ["-o", str(out / f"{i}"), f"{self.hub.url}/{repo}/resolve/{info['commit']}/{path}"]
        return argv

    # -- measuring --------------------------------------------------------------------------------
    def measure(
        self,
        tool: str,
        workload: str,
        argv: Sequence[str],
        folder: Path,
        *,
        env: dict[str, str] | None = None,
        record: bool = True,
        touch: int = 0,
    ) -> Run:
        """Run `argv` to completion; wall time, exit code, peak RSS and the Hub's counters for it.

        `touch`: bytes the run will write; a scratch file that big is written and deleted just before
        it starts (see `prime_page_cache`).
        """
        if touch and self.prime:
            prime_page_cache(folder, touch)
        os.sync()  # the previous run's dirty pages must not be written back during this one
        self.hub.reset()
        name = f"{workload}-{tool}".replace(" ", "_")
        with open(folder / f"{name}.out", "wb") as out, open(folder / f"{name}.err", "wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                list(argv), env=env or self.env(folder / "hf_home"), cwd=folder, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            timer = threading.Timer(RUN_TIMEOUT, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        stats = self.hub.stats()
        run = Run(
            tool=tool,
            workload=workload,
            wall=wall,
            code=proc.returncode,
            rss_mb=usage.ru_maxrss / 1024,
            cpu_user=usage.ru_utime,
            cpu_sys=usage.ru_stime,
            faults=usage.ru_minflt,
            requests=stats["requests"],
            heads=stats["head"],
            bytes_served=stats["bytes_served"],
            telemetry=stats["telemetry"],
        )
        if run.code != 0:
            tail = (folder / f"{name}.err").read_text(errors="replace")[-1500:]
            run.note = f"exit {run.code}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
            print(
                f"    ! {tool} failed (exit {run.code}); log: {folder / (name + '.err')}\n{tail}",
                file=sys.stderr,
            )
        if record:
            self.runs.append(run)
        print(
            f"  {workload:<14} {tool:<18} {wall:7.2f} s  rss {run.rss_mb:6.0f} MB  cpu {run.cpu_user:5.2f}u"
            f" {run.cpu_sys:5.2f}s  faults {run.faults / 1000:6.0f}k  requests {run.requests:5d}"
            f"  served {run.bytes_served / MiB:8.1f} MiB" + (f"  [{run.note}]" if run.note else ""),
            flush=True,
        )
        return run

    def cold(
        self, workload: str, repo: str, tools: Sequence[str], *, warm_up: bool = True
    ) -> dict[str, list[Run]]:
        """`reps` cold runs of each tool, in a rotating order so no tool always runs first.

        With `warm_up`, one unrecorded round first: the first runs after the Hub generated its
        repos were up to 2.5 times slower for every tool, curl included (the machine, not a tool).
        """
        tools = [t for t in tools if not self.tools or t in self.tools]
        runs: dict[str, list[Run]] = {t: [] for t in tools}
        warm_up = warm_up and self.sizes.reps > 1  # not in --quick mode
        rounds = [list(tools)] if warm_up else []
        rounds += [
            list(tools[rep % len(tools) :]) + list(tools[: rep % len(tools)])
            for rep in range(self.sizes.reps)
        ]
        for index, order in enumerate(rounds):
            record = not (warm_up and index == 0)
            for tool in order:
                folder = self.fresh(f"{workload}-{tool}")
                argv = {"prefetch": self.prefetch_cmd, "hf": self.hf_cmd, "curl": self.curl_cmd}[tool](
                    folder, repo
                )
                touch = self.hub.repos[repo]["bytes"]
                name = workload if record else f"{workload} (warm-up)"
                run = self.measure(tool, name, argv, folder, touch=touch, record=record)
                if record:
                    runs[tool].append(run)
                if touch >= FREE_AFTER_RUN:
                    shutil.rmtree(folder / "cache", ignore_errors=True)
                    shutil.rmtree(folder / "curl", ignore_errors=True)
        return runs


def prime_page_cache(folder: Path, nbytes: int) -> None:
    """Write `nbytes` to a scratch file, flush it and delete it, so the run that follows starts alike.

    On the VM these numbers come from, writing 1 GiB into the page cache takes ~3 s when nothing was
    written for a few seconds, but ~0.4 s right after another file of that size was written and
    deleted (measured with a plain `os.write` loop; touching anonymous memory does not have this
    effect). Without this, whichever tool ran first after a pause paid ~2.5 s more; with it, every
    run starts in the "right after a previous download" state.
    """
    block = b"\1" * MiB
    scratch = folder / ".prime"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(max(1, nbytes // MiB)):
            os.write(fd, block)
    finally:
        os.close(fd)
    os.sync()
    scratch.unlink()


def median(runs: list[Run], attr: str = "wall") -> float:
    ok = [getattr(r, attr) for r in runs if r.code == 0]
    return statistics.median(ok) if ok else float("nan")


def get(d: dict[str, Any], *keys: str) -> Any:
    """`d[k1][k2]...`, or nan when a tool or value was not measured."""
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return float("nan")
        d = d[key]
    return d


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


# ---------------------------------------------------------------------------------------------- workloads
def bench_cold(b: Bench) -> None:
    print(f"cold: {b.sizes.big_files} x {b.sizes.big_size // MiB} MiB", flush=True)
    tools = ["hf", "prefetch"] + (["curl"] if shutil.which("curl") else [])
    runs = b.cold("cold", BIG, tools)
    out = {t: summarize(r) for t, r in runs.items()}
    out["ratio_hf"] = ratio(get(out, "prefetch", "wall"), get(out, "hf", "wall"))
    out["ratio_curl"] = ratio(get(out, "prefetch", "wall"), get(out, "curl", "wall"))
    b.results["cold"] = out


def bench_cap(b: Bench) -> None:
    mbps = b.sizes.cap_bps / 1e6
    print(
        f"cap: {b.sizes.big_files} x {b.sizes.big_size // MiB} MiB, CDN capped at {mbps:.0f} MB/s per connection"
    )
    b.hub.bandwidth(b.sizes.cap_bps)
    try:
        runs = b.cold("cap", BIG, ["hf", "prefetch"])
    finally:
        b.hub.bandwidth(None)
    out = {t: summarize(r) for t, r in runs.items()}
    out["ratio_hf"] = ratio(get(out, "prefetch", "wall"), get(out, "hf", "wall"))
    out["cap_mb_s"] = mbps
    b.results["cap"] = out


def bench_small(b: Bench) -> None:
    files = b.hub.repos[SMALL]["files"]
    print(f"small: {files} files, {b.hub.repos[SMALL]['bytes'] / MiB:.1f} MiB")
    runs = b.cold("small", SMALL, ["hf", "prefetch"])
    out: dict[str, Any] = {t: summarize(r) for t, r in runs.items()}
    for tool in runs:
        out[tool]["requests_per_file"] = median(runs[tool], "requests") / files
    out["ratio_hf"] = ratio(get(out, "prefetch", "wall"), get(out, "hf", "wall"))
    out["files"] = files
    b.results["small"] = out


def bench_warm(b: Bench) -> None:
    """A no-op re-sync of an up-to-date cache: prefetch online and --offline, hf online and offline."""
    out: dict[str, Any] = {}
    for repo in (SMALL, BIG):
        label = "small" if repo == SMALL else "big"
        print(f"warm: {label} ({b.hub.repos[repo]['files']} files)")
        pf = b.fresh(f"warm-{label}-prefetch")
        hf = b.fresh(f"warm-{label}-hf")
        b.measure("prefetch", "warm-setup", b.prefetch_cmd(pf, repo), pf, record=False)
        b.measure("hf", "warm-setup", b.hf_cmd(hf, repo), hf, record=False)
        runs: dict[str, list[Run]] = {"prefetch": [], "prefetch --offline": [], "hf": [], "hf offline": []}
        hf_offline_env = {**b.env(hf / "hf_home"), "HF_HUB_OFFLINE": "1"}
        for _ in range(b.sizes.reps):
            runs["prefetch"].append(b.measure("prefetch", f"warm-{label}", b.prefetch_cmd(pf, repo), pf))
            runs["prefetch --offline"].append(
                b.measure("prefetch --offline", f"warm-{label}", b.prefetch_cmd(pf, repo, "--offline"), pf)
            )
            runs["hf"].append(b.measure("hf", f"warm-{label}", b.hf_cmd(hf, repo), hf))
            runs["hf offline"].append(
                b.measure("hf offline", f"warm-{label}", b.hf_cmd(hf, repo), hf, env=hf_offline_env)
            )
        res: dict[str, Any] = {t: summarize(r) for t, r in runs.items()}
        for tool, rs in runs.items():
            res[tool]["requests"] = max(r.requests for r in rs)
        res["ratio_hf"] = ratio(res["prefetch"]["wall"], res["hf"]["wall"])
        res["ratio_hf_offline"] = ratio(res["prefetch --offline"]["wall"], res["hf offline"]["wall"])
        out[label] = res
        for folder in (pf, hf):
            shutil.rmtree(folder / "cache", ignore_errors=True)
    b.results["warm"] = out


def data_bytes(path: Path) -> int:
    """Bytes of `path` that hold data (SEEK_DATA/SEEK_HOLE): what a sparse partial file really has."""
    total = 0
    with open(path, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            total += end - start
            pos = end
    return total


def partial_bytes(cache: Path) -> int:
    """Data bytes in every partial file under `cache` (prefetch's `.prefetch-partial`, hf's `.incomplete`)."""
    total = 0
    for path in cache.rglob("*"):
        if path.is_file() and path.name.endswith((".prefetch-partial", ".incomplete")):
            total += data_bytes(path)
    return total


def bench_resume(b: Bench) -> None:
    """Kill at about half way (SIGKILL, under the bandwidth cap), rerun, count the bytes fetched again."""
    total = b.hub.repos[BIG]["bytes"]
    out: dict[str, Any] = {"total_bytes": total}
    tools = {"prefetch": b.prefetch_cmd, "hf": b.hf_cmd}
    for tool, make in tools.items():
        trials = []
        for rep in range(b.sizes.reps if tool == "prefetch" else 1):
            folder = b.fresh(f"resume-{tool}")
            argv = make(folder, BIG)
            print(f"resume: {tool} (trial {rep + 1})", flush=True)
            b.hub.bandwidth(b.sizes.cap_bps)
            b.hub.reset()
            os.sync()
            with open(folder / "killed.err", "wb") as err:
                proc = subprocess.Popen(
                    argv, env=b.env(folder / "hf_home"), cwd=folder, stdout=subprocess.DEVNULL, stderr=err,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
                deadline = time.monotonic() + RUN_TIMEOUT
                served = 0
                while proc.poll() is None and time.monotonic() < deadline:
                    served = b.hub.stats()["bytes_served"]
                    if served >= total // 2:
                        break
                    time.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            served = b.hub.stats()["bytes_served"]
            b.hub.bandwidth(None)
            cache = folder / "cache"
            installed = sum(
                p.stat().st_size for p in cache.rglob("blobs/*") if p.is_file() and "." not in p.name
            )
            on_disk = partial_bytes(cache) + installed
            missing = total - on_disk
            rerun = b.measure(tool, "resume-rerun", argv, folder, touch=missing)
            trial = {
                "served_before_kill": served,
                "on_disk_at_kill": on_disk,
                "missing": missing,
                "refetched": rerun.bytes_served,
                "ratio": ratio(rerun.bytes_served, missing),
                "rerun_code": rerun.code,
                "rerun_wall": rerun.wall,
            }
            print(
                f"    killed after {served / MiB:.0f} MiB served; {on_disk / MiB:.0f} MiB on disk, "
                f"{missing / MiB:.0f} MiB missing; rerun fetched {rerun.bytes_served / MiB:.0f} MiB "
                f"(x{trial['ratio']:.3f} of missing)",
                flush=True,
            )
            trials.append(trial)
            shutil.rmtree(cache, ignore_errors=True)
        worst = max(trials, key=lambda t: t["ratio"] if t["ratio"] == t["ratio"] else 99)
        out[tool] = {"trials": trials, "worst_ratio": worst["ratio"], "median_ratio": statistics.median(
            t["ratio"] for t in trials
        )}  # fmt: skip
    b.results["resume"] = out


def blob_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("blobs/*") if p.is_file() and "." not in p.name)


def bench_verify(b: Bench) -> None:
    """`prefetch verify` of a synced cache against `sha256sum` of the same blob files (warm page cache)."""
    out: dict[str, Any] = {}
    for repo in (BIG, SMALL):
        label = "big" if repo == BIG else "small"
        print(f"verify: {label}", flush=True)
        folder = b.fresh(f"verify-{label}")
        b.measure("prefetch", "verify-setup", b.prefetch_cmd(folder, repo), folder, record=False)
        blobs = [str(p) for p in blob_files(folder / "cache")]
        verify = [
            sys.executable, "-m", "prefetch", "verify", str(folder / "models.lock"), "--cache-dir",
            str(folder / "cache"),
        ]  # fmt: skip
        sha = ["sha256sum", *blobs]
        subprocess.run(sha, stdout=subprocess.DEVNULL, check=False)  # warm the page cache for both
        runs: dict[str, list[Run]] = {"prefetch verify": [], "sha256sum": []}
        for rep in range(b.sizes.reps):
            order = [("prefetch verify", verify), ("sha256sum", sha)]
            for tool, argv in order if rep % 2 == 0 else order[::-1]:
                runs[tool].append(b.measure(tool, f"verify-{label}", argv, folder))
        res: dict[str, Any] = {t: summarize(r) for t, r in runs.items()}
        if any(r.code != 0 for r in runs["prefetch verify"]):
            res["pending"] = runs["prefetch verify"][0].note or "prefetch verify failed"
        res["ratio"] = ratio(res["prefetch verify"]["wall"], res["sha256sum"]["wall"])
        res["files"] = len(blobs)
        out[label] = res
        shutil.rmtree(folder / "cache", ignore_errors=True)
    b.results["verify"] = out


def bench_large(b: Bench) -> None:
    """Peak RSS while syncing several GB (one run each)."""
    info = b.hub.repos[LARGE]
    print(f"large: {info['files']} x {info['bytes'] // info['files'] // MiB} MiB (peak RSS)", flush=True)
    b.sizes = Sizes(**{**asdict(b.sizes), "reps": 1})
    runs = b.cold("large", LARGE, ["prefetch", "hf"], warm_up=False)
    out = {t: summarize(r) for t, r in runs.items()}
    out["bytes"] = info["bytes"]
    b.results["large"] = out


def summarize(runs: list[Run]) -> dict[str, Any]:
    ok = [r for r in runs if r.code == 0]
    return {
        "wall": median(runs),
        "walls": [round(r.wall, 3) for r in runs],
        "rss_mb": max((r.rss_mb for r in ok), default=float("nan")),
        "requests": median(runs, "requests"),
        "heads": median(runs, "heads"),
        "telemetry": max((r.telemetry for r in runs), default=0),
        "bytes_served": median(runs, "bytes_served"),
        "failures": len(runs) - len(ok),
    }


WORKLOADS = {
    "cold": bench_cold,
    "cap": bench_cap,
    "small": bench_small,
    "warm": bench_warm,
    "resume": bench_resume,
    "verify": bench_verify,
    "large": bench_large,
}


# ---------------------------------------------------------------------------------------------- report
def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kib / 1024 / 1024:.0f} GiB"
    versions = {}
    for name in ("huggingface_hub", "httpx2"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False).stdout.split(
        "\n"
    )[0]
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "huggingface_hub": versions.get("huggingface_hub", "?"),
        "curl": " ".join(curl.split()[:2]) if curl else "none",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def fmt(x: float, unit: str = "s", digits: int = 2) -> str:
    if x != x:  # nan
        return "n/a"
    return f"{x:.{digits}f}{(' ' + unit) if unit else ''}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def table(results: dict[str, Any], sizes: Sizes) -> str:
    """The results as a Markdown table (one row per measured quantity), then the targets."""
    rows: list[tuple[str, str, str, str, str, str]] = []  # workload, hf, prefetch, ratio, target, verdict

    def add(name: str, hf: str, pf: str, r: str, target: str, ok: bool | None) -> None:
        rows.append((name, hf, pf, r, target, verdict(ok)))

    big = f"{sizes.big_files} × {sizes.big_size // MiB} MiB"
    if "cold" in results:
        c = results["cold"]
        add(f"1. cold, {big}", fmt(get(c, "hf", "wall")), fmt(get(c, "prefetch", "wall")),
            fmt(get(c, "ratio_hf"), ""), "≤ 0.60 × hf", get(c, "ratio_hf") <= 0.6)  # fmt: skip
        if "curl" in c:  # fmt: skip
            add("1. … against parallel curl", fmt(get(c, "curl", "wall")) + " (curl)", fmt(get(c, "prefetch", "wall")),
                fmt(get(c, "ratio_curl"), ""), "≤ 1.30 × curl", get(c, "ratio_curl") <= 1.3)  # fmt: skip
    if "cap" in results:
        c = results["cap"]
        add(f"2. cold, {big}, CDN capped at {c['cap_mb_s']:.0f} MB/s per connection", fmt(get(c, "hf", "wall")),
            fmt(get(c, "prefetch", "wall")), fmt(get(c, "ratio_hf"), ""), "≤ 0.25 × hf",
            get(c, "ratio_hf") <= 0.25)  # fmt: skip
    if "small" in results:
        c = results["small"]
        add(f"3. cold, {c['files']:,} small files", fmt(get(c, "hf", "wall")), fmt(get(c, "prefetch", "wall")),
            fmt(get(c, "ratio_hf"), ""), "≤ 0.50 × hf", get(c, "ratio_hf") <= 0.5)  # fmt: skip
        add("3. … requests per file", fmt(get(c, "hf", "requests_per_file"), "", 3),
            fmt(get(c, "prefetch", "requests_per_file"), "", 3), "", "≤ 1.05",
            get(c, "prefetch", "requests_per_file") <= 1.05)  # fmt: skip
    for label, w in results.get("warm", {}).items():
        add(f"4. warm no-op re-sync ({label}), online", fmt(w["hf"]["wall"]), fmt(w["prefetch"]["wall"]),
            fmt(w["ratio_hf"], ""), "≤ 1.00 × hf", w["ratio_hf"] <= 1.0)  # fmt: skip
        add(f"4. … requests online ({label})", f"{w['hf']['requests']:.0f}", f"{w['prefetch']['requests']:.0f}", "",
            "≤ 1 per repo", w["prefetch"]["requests"] <= 1)  # fmt: skip
        add(f"4. … `--offline` / HF_HUB_OFFLINE=1 ({label})", fmt(w["hf offline"]["wall"]),
            fmt(w["prefetch --offline"]["wall"]), fmt(w["ratio_hf_offline"], ""), "0 requests",
            w["prefetch --offline"]["requests"] == 0)  # fmt: skip
    if "resume" in results:
        r = results["resume"]
        pf = r["prefetch"]["trials"]
        hf_trial = r.get("hf", {}).get("trials", [{}])[0]
        add(f"5. resume after SIGKILL at ~50 % ({big}): re-fetched / missing",
            fmt(hf_trial.get("ratio", float("nan")), "", 2),
            fmt(r["prefetch"]["worst_ratio"], "", 3) + f" (worst of {len(pf)})", "", "≤ 1.10",
            r["prefetch"]["worst_ratio"] <= 1.1)  # fmt: skip
    for label, v in results.get("verify", {}).items():
        pending = "pending" in v
        add(f"6. verify ({label}, {v['files']} blobs) against sha256sum", fmt(v["sha256sum"]["wall"]) + " (sha256sum)",
            "pending" if pending else fmt(v["prefetch verify"]["wall"]), "" if pending else fmt(v["ratio"], ""),
            "≤ 1.00 × sha256sum" if label == "big" else "(start-up bound)",
            None if pending or label != "big" else v["ratio"] <= 1.0)  # fmt: skip
    lines = [
        "| workload | hf download | prefetch | prefetch / hf | target | verdict |",
        "|---|---:|---:|---:|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    # Peak RSS of every measured tool, per workload.
    rss_rows = []
    for name, res in results.items():
        groups = res.items() if name in ("warm", "verify") else [(None, res)]
        for label, group in groups:
            if not isinstance(group, dict):
                continue
            for tool, s in group.items():
                if isinstance(s, dict) and "rss_mb" in s:
                    where = f"{name} ({label})" if label else name
                    rss_rows.append(f"| {where} | {tool} | {fmt(s['rss_mb'], 'MB', 0)} | {fmt(s['wall'])} |")
    lines += ["", "Peak RSS (largest of the repetitions) and median wall time of every run:", "",
              "| workload | tool | peak RSS | median wall |", "|---|---|---:|---:|", *rss_rows]  # fmt: skip
    return "\n".join(lines)


def markdown(results: dict[str, Any], sizes: Sizes, info: dict[str, str], argv: list[str]) -> str:
    mode = " ".join(["python bench/run.py", *argv]).strip()
    head = [
        f"Measured {info['date']} with `{mode}` ({sizes.reps} repetition(s), medians).",
        "",
        f"Machine: {info['cpu']}, {info['memory']} RAM, {info['os']}, Python {info['python']}, "
        f"huggingface_hub {info['huggingface_hub']}, {info['curl']}. The test Hub ran in its own process on "
        "the same machine (loopback), so it competes with the client for the 2 cores.",
        "",
        "",
    ]
    return "\n".join(head) + table(results, sizes) + "\n"


def update_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{DOC_BEGIN}\n{DOC_END}\n"
    if DOC_BEGIN not in doc or DOC_END not in doc:
        doc += f"\n{DOC_BEGIN}\n{DOC_END}\n"
    before, rest = doc.split(DOC_BEGIN, 1)
    _, after = rest.split(DOC_END, 1)
    DOC.write_text(f"{before}{DOC_BEGIN}\n{text}{DOC_END}{after}")


# ---------------------------------------------------------------------------------------------- main
def hf_command() -> list[str]:
    """The `hf` CLI of this interpreter (its console script, not a pyenv shim that adds start-up time)."""
    script = Path(sys.executable).with_name("hf")
    if script.exists():
        return [str(script)]
    found = shutil.which("hf")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from huggingface_hub.cli.hf import main; sys.exit(main())"]


@contextlib.contextmanager
def workdir(path: Path | None, keep: bool) -> Iterator[Path]:
    folder = path or Path(tempfile.mkdtemp(prefix="prefetch-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small data, one repetition (< 60 s)")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 3; 1 with --quick)")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(WORKLOADS)}")
    parser.add_argument("--skip", default="", help="comma-separated workloads to leave out")
    parser.add_argument("--tools", help="only these tools (e.g. prefetch,curl), for tuning sweeps")
    parser.add_argument(
        "--prefetch-arg", action="append", default=[], help="extra `prefetch sync` flag (repeat)"
    )
    parser.add_argument("--prefetch-root", type=Path, default=ROOT, help="source tree of prefetch to measure")
    parser.add_argument(
        "--workdir", type=Path, help="where caches go (default: a temp folder, removed after)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--no-prime", action="store_true", help="no scratch write before each run (see prime_page_cache)"
    )
    parser.add_argument("--json", type=Path, help="write all results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the results table (Markdown) here")
    parser.add_argument("--update-doc", action="store_true", help=f"rewrite the results section of {DOC}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.reps:
        sizes = Sizes(**{**asdict(sizes), "reps": args.reps})
    wanted = [
        w for w in (args.only.split(",") if args.only else WORKLOADS) if w and w not in args.skip.split(",")
    ]
    unknown = set(wanted) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}")
    if "large" not in wanted or not sizes.large_files:
        sizes = Sizes(**{**asdict(sizes), "large_files": 0})
        wanted = [w for w in wanted if w != "large"]
    info = machine()
    started = time.monotonic()
    # prefetch runs from its source tree: compile it as an installed package is, so that a
    # PYTHONDONTWRITEBYTECODE environment does not make every run recompile it (~40 ms).
    compileall.compile_dir(args.prefetch_root / "prefetch", quiet=1)
    with workdir(args.workdir, args.keep) as work:
        print(f"work folder {work}; starting the test Hub (generating the repos)...", flush=True)
        hub = Hub(sizes, work)
        try:
            print(
                f"test Hub at {hub.url} (pid {hub.pid}) after {time.monotonic() - started:.1f} s", flush=True
            )
            b = Bench(
                hub, sizes, work, args.prefetch_root.resolve(), args.prefetch_arg, hf_command(),
                prime=not args.no_prime,
                tools=args.tools.split(",") if args.tools else [],
            )  # fmt: skip
            for name in wanted:
                WORKLOADS[name](b)
        finally:
            hub.close()
    results = b.results
    text = markdown(results, sizes, info, [a for a in (argv if argv is not None else sys.argv[1:])
                                           if a not in ("--update-doc",)])  # fmt: skip
    print("\n" + text)
    print(f"(benchmark took {time.monotonic() - started:.0f} s)")
    payload = {
        "machine": info,
        "sizes": asdict(sizes),
        "results": results,
        "runs": [asdict(r) for r in b.runs],
    }
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    if args.markdown:
        args.markdown.write_text(text)
    if args.update_doc:
        update_doc(text)
    failed = [r for r in b.runs if r.code != 0 and r.tool != "prefetch verify"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
