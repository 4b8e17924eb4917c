"""Benchmarks: `prefetch sync` against `hf download` and the best peers, on the project's test Hub.

One run, one machine: the Hub emulator runs in its own process (bench/hubserver.py) and every
client runs as a subprocess with a fresh cache, so wall times include interpreter start-up as a
user sees it, and CPU time and peak RSS come from `os.wait4` on that very process. The HTTPS and
capped rows are served by nginx in front of that Hub (bench/nginx.py): users' CDNs are C servers.

    python bench/run.py                 # the full set, 3 repetitions, medians with their range
    python bench/run.py --quick         # a smoke run (< 60 s) on small data, 1 repetition
    python bench/run.py --update-doc    # also rewrite the results of docs/benchmarks.md and README.md
    python bench/run.py --from-json results.json --update-doc   # the same from a run saved with --json
    python bench/run.py --only cold --prefetch-root /work/main   # another checkout's prefetch too

Peers (each used when installed, reported as missing otherwise): hf (`hf download`), curl,
curl+fsync (the durability floor), aria2c (as hfd.sh runs it), hf_transfer (per file, as
huggingface_hub called it); for hashing: sha256sum and `openssl dgst -sha256`.

Workloads (see docs/benchmarks.md for the targets and the reading of each row):
  cold      4 x 256 MiB LFS files, fresh caches, plain HTTP
  https     the same over HTTPS from nginx (a throwaway CA), the API proxied to the test Hub
  https-python  the same over HTTPS served by the Python test Hub itself (a second Hub process)
  one       1 x 1 GiB LFS file
  cap       4 x 256 MiB, nginx capping each CDN connection (`limit_rate`)
  cap-python    the same cap applied by the Python test Hub
  cap-one   1 x 1 GiB behind nginx's cap (cap-one-python: the Python Hub's)
  small     2,000 small regular files: time and requests per file
  warm      no-op re-sync of an up-to-date cache: online, --offline, and hf for comparison
  resume    SIGKILL at about half way under the cap, rerun: bytes re-fetched against bytes missing
  verify    `prefetch verify` of a synced cache against sha256sum and openssl of the same blobs
  files     one repo of 10k / 30k / 100k small files: cold, warm, verify, peak RSS, growth
  manifest  a manifest of 200 repos (a few config files and one LFS file each): cold and warm
  large     peak RSS while syncing 4 x 1 GiB (full mode only)
Rows run only when named in --only (each needs more than the Hub: waiting windows, chunked content, a registry):
  ratelimit 1,500 small files, the resolver bucket at 250 requests per 3 s window (headers on the
            429 only, then on every answer): prefetch and hf, the quota's floor, the 429s each met
  xet       4 x 256 MiB Xet-backed files (seeded content; chunk lists cached in --xet-cache):
            prefetch against hf download with hf_xet
  registry  the cold row's files as OCI artifacts, to and from a local Distribution registry:
            `prefetch push` (into a fresh registry each time) against `skopeo copy` of the same OCI
            layout, then `prefetch sync --source` against `skopeo copy` back into a layout
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.util
import itertools
import json
import math
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `bench` is not importable from bench/ itself
    sys.path.insert(0, str(ROOT))

from bench.nginx import INSTALL_HINT as NGINX_MISSING  # noqa: E402
from bench.nginx import NGINX, NginxFront  # noqa: E402
from bench.registry import INSTALL_HINT as REGISTRY_MISSING  # noqa: E402
from bench.registry import REGISTRY, SKOPEO, LocalRegistry  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
DOC_BEGIN, DOC_END = "<!-- bench:begin -->", "<!-- bench:end -->"
README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- bench:readme:begin -->", "<!-- bench:readme:end -->"
# Hub-side caches of Xet chunk lists (HUBEMU_XET_CACHE), kept across runs: the Xet row's content is seeded.
XET_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefetch-bench" / "xet-chunks"
MiB = 1024 * 1024
GiB = 1024 * MiB
# Caches of runs this big are deleted right after the run (disk space); smaller ones stay until the
# end. Why: on ext4 without a journal (this VM's disk), creating files shortly after thousands were
# deleted is slow (the freed inodes are scanned), and the run after a deletion paid up to ~1 s.
FREE_AFTER_RUN = 64 * 1024 * 1024
RUN_TIMEOUT = 900.0  # seconds; a run that hangs is killed and reported as failed
INCOMPLETE = 97  # exit code recorded for a peer that exited 0 without writing every byte
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").is_file() else None  # see peak_rss_mb (Debian: `time`)


# ---------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """What each workload moves; `--quick` shrinks everything."""

    big_files: int = 4
    big_size: int = 256 * MiB
    one_size: int = 1024 * MiB  # the single-file rows (one, cap-one)
    small_files: int = 2000
    small_size: int = 4096
    many_files: tuple[int, ...] = (10_000, 30_000, 100_000)  # the `files` rows: one repo each
    many_size: int = 512
    manifest_repos: int = 200
    manifest_lfs_size: int = 256 * 1024
    cap_bps: float = 20e6  # bytes/s per CDN connection
    limited_files: int = 1500  # the rate-limited row: small files...
    limited_quota: int = 250  # ...resolver requests allowed per window...
    limited_window: float = 3.0  # ...of this many seconds
    xet_files: int = 4
    xet_size: int = 256 * MiB
    large_files: int = 4  # the peak-RSS run; 0 skips it
    large_size: int = 1024 * MiB
    reps: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            big_files=4, big_size=16 * MiB, one_size=32 * MiB, small_files=200, many_files=(300, 900),
            manifest_repos=10, manifest_lfs_size=64 * 1024, cap_bps=40e6, limited_files=300, limited_quota=50,
            limited_window=1.0, xet_size=16 * MiB, large_files=0, reps=1,
        )  # fmt: skip

    @property
    def big_label(self) -> str:
        return size_label(self.big_files, self.big_size)

    def replace(self, **changes: Any) -> Sizes:
        return Sizes(**{**asdict(self), **changes})


def size_label(files: int, size: int) -> str:
    """`4 × 256 MiB`"""
    return f"{files} × {size // MiB} MiB"


BIG, ONE, SMALL, LARGE = "bench/big", "bench/one", "bench/small", "bench/large"
LIMITED, XET = "bench/rate-limited", "bench/xet"


def many_repo(files: int) -> str:
    return f"bench/files-{files}"


def manifest_repos(sizes: Sizes) -> list[str]:
    return [f"bench/m{i:03d}" for i in range(sizes.manifest_repos)]


# ---------------------------------------------------------------------------------------------- peers
PEER_NEEDS: dict[str, Callable[[], bool]] = {
    "hf": lambda: True,  # huggingface_hub is a dependency of prefetch
    "curl": lambda: shutil.which("curl") is not None,
    "curl+fsync": lambda: shutil.which("curl") is not None and shutil.which("sync") is not None,
    "aria2c": lambda: shutil.which("aria2c") is not None,
    "hf_transfer": lambda: importlib.util.find_spec("hf_transfer") is not None,
    "sha256sum": lambda: shutil.which("sha256sum") is not None,
    "openssl": lambda: shutil.which("openssl") is not None,
}
INSTALL_HINT = {
    "aria2c": "apt-get install aria2",
    "hf_transfer": "pip install hf_transfer",
    "curl": "apt-get install curl",
    "curl+fsync": "apt-get install curl",
    "openssl": "apt-get install openssl",
    "sha256sum": "coreutils",
}


def missing_peers() -> dict[str, str]:
    """Peers this machine lacks, with how to get them (their rows then say "missing")."""
    return {
        tool: f"not installed ({INSTALL_HINT.get(tool, tool)})" for tool, ok in PEER_NEEDS.items() if not ok()
    }


# ---------------------------------------------------------------------------------------------- the hub
class Hub:
    """An emulator process (bench/hubserver.py), driven over its stdin/stdout line protocol."""

    def __init__(
        self, specs: Sequence[str], log_dir: Path, *, tls: bool = False, xet_cache: Path | None = None
    ) -> None:
        argv = [sys.executable, str(ROOT / "bench" / "hubserver.py"), *(["--tls"] if tls else [])]
        for spec in specs:
            argv += ["--repo", spec]
        name = "hub-tls" if tls else "hub"
        env = {**os.environ, **({"HUBEMU_XET_CACHE": str(xet_cache)} if xet_cache else {})}
        self._stderr = open(log_dir / f"{name}.err", "w")  # noqa: SIM115  (lives as long as the process)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT,
            env=env,
        )  # fmt: skip
        self._lock = threading.Lock()
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise SystemExit(f"the test Hub did not start; see {log_dir / (name + '.err')}")
        info = json.loads(line)
        self.url: str = info["url"]
        self.pid: int = info["pid"]
        self.ca_file: str | None = info["ca_file"]
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

    def stats(self) -> dict[str, Any]:
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


def hub_specs(sizes: Sizes, wanted: Sequence[str]) -> list[str]:
    """The repos the wanted workloads read (generating 1 GiB or 100k files takes a while)."""
    specs = []
    if {"cold", "https", "cap", "cap-python", "warm", "resume", "verify", "registry"} & set(wanted):
        specs.append(f"{BIG}:{sizes.big_files}:{sizes.big_size}:lfs")
    if {"one", "cap-one", "cap-one-python"} & set(wanted):
        specs.append(f"{ONE}:1:{sizes.one_size}:lfs")
    if {"small", "warm", "verify"} & set(wanted):
        specs.append(f"{SMALL}:{sizes.small_files}:{sizes.small_size}:small")
    if "files" in wanted:
        specs += [f"{many_repo(n)}:{n}:{sizes.many_size}:small" for n in sizes.many_files]
    if "manifest" in wanted:
        specs += [f"{name}:1:{sizes.manifest_lfs_size}:model" for name in manifest_repos(sizes)]
    if "large" in wanted:
        specs.append(f"{LARGE}:{sizes.large_files}:{sizes.large_size}:lfs")
    if "ratelimit" in wanted:
        specs.append(f"{LIMITED}:{sizes.limited_files}:{sizes.small_size}:small")
    if "xet" in wanted:
        specs.append(f"{XET}:{sizes.xet_files}:{sizes.xet_size}:xet")
    return specs


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
    resolves: int = 0  # `/resolve` requests the Hub answered (the rate-limited "resolvers" bucket)
    rejected: int = 0  # 429 answers of the Hub's rate limiter, every bucket
    xet: int = 0  # Xet requests: token route, CAS reconstructions, xorb GETs
    note: str = ""

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys


@dataclass
class Bench:
    """Shared state of one benchmark session."""

    hub: Hub | NginxFront  # what clients are pointed at: the test Hub, or nginx in front of it
    sizes: Sizes
    work: Path
    prefetch_roots: dict[str, Path]  # tool name -> source tree: "prefetch" and any `prefetch@NAME`
    prefetch_args: list[str]
    hf: list[str]
    prime: bool = True
    tools: list[str] = field(default_factory=list)  # empty: every tool
    missing: dict[str, str] = field(default_factory=dict)  # peer -> why it is not measured
    runs: list[Run] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    counter: int = 0
    xet: bool = False  # hf downloads through hf_xet (else HF_HUB_DISABLE_XET=1: the files' /resolve URLs)

    def env(self, hf_home: Path, tool: str = "prefetch") -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGING"))
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
            and k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
        }
        env.update(
            HF_ENDPOINT=self.hub.url,
            HF_HOME=str(hf_home),
            PYTHONPATH=str(self.prefetch_roots.get(tool.split(" ")[0], self.prefetch_roots["prefetch"])),
            NO_PROXY="127.0.0.1,localhost",
        )
        if not self.xet:
            env["HF_HUB_DISABLE_XET"] = "1"
        if self.hub.ca_file:  # every client trusts the test Hub's throwaway CA
            env.update(
                SSL_CERT_FILE=self.hub.ca_file,
                REQUESTS_CA_BUNDLE=self.hub.ca_file,
                CURL_CA_BUNDLE=self.hub.ca_file,
            )
        return env

    @contextlib.contextmanager
    def serving(self, hub: Hub | NginxFront) -> Iterator[None]:
        """Point every client at `hub` for a while (the nginx rows, the Python Hub's HTTPS row)."""
        saved, self.hub = self.hub, hub
        try:
            yield
        finally:
            self.hub = saved

    def fresh(self, name: str) -> Path:
        """An empty folder for one run (cache, HF_HOME, lockfile, logs)."""
        self.counter += 1
        folder = self.work / f"{self.counter:03d}-{name}".replace(" ", "_")
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "hf_home").mkdir(parents=True)
        return folder

    def wants(self, tool: str) -> bool:
        return not self.tools or tool in self.tools

    def available(self, tools: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The tools of a row that run here, and the missing ones with the reason."""
        return [t for t in tools if t not in self.missing], {
            t: self.missing[t] for t in tools if t in self.missing
        }

    def prefetch_tools(self) -> list[str]:
        return list(self.prefetch_roots)

    # -- commands ---------------------------------------------------------------------------------
    def prefetch_cmd(self, folder: Path, repos: Sequence[str], *extra: str) -> list[str]:
        manifest = folder / "models.yaml"
        if not manifest.exists():
            manifest.write_text(
                "version: 1\nrepos:\n" + "".join(f"  - repo: {r}\n    revision: main\n" for r in repos)
            )
        return [
            sys.executable, "-m", "prefetch", "--quiet", "sync", str(manifest),
            "--cache-dir", str(folder / "cache"), "--lock", str(folder / "models.lock"),
            *self.prefetch_args, *extra,
        ]  # fmt: skip

    def verify_cmd(self, folder: Path) -> list[str]:
        return [
            sys.executable, "-m", "prefetch", "verify", str(folder / "models.lock"), "--cache-dir",
            str(folder / "cache"),
        ]  # fmt: skip

    def hf_cmd(self, folder: Path, repos: Sequence[str]) -> list[str]:
        (repo,) = repos  # `hf download` takes one repo
        return [*self.hf, "download", repo, "--revision", "main", "--cache-dir", str(folder / "cache")]

    def resolve_urls(self, repos: Sequence[str]) -> list[tuple[str, str]]:
        """(URL, relative output path) of every file: the /resolve URLs a shell script would fetch."""
        out = []
        for repo in repos:
            info = self.hub.repos[repo]
            out += [
                (f"{self.hub.url}/{repo}/resolve/{info['commit']}/{p}", f"{repo}/{p}") for p in info["paths"]
            ]
        return out

    def curl_cmd(self, folder: Path, repos: Sequence[str]) -> list[str]:
        """Parallel curl (16 transfers, one connection each), URLs from a config file (100k do not fit argv)."""
        config = folder / "curl.config"
        config.write_text(
            "".join(
                f'url = "{url}"\noutput = "{folder / "out" / rel}"\n' for url, rel in self.resolve_urls(repos)
            )
        )
        ca = ["--cacert", self.hub.ca_file] if self.hub.ca_file else []
        return [
            "curl", "-sS", "-f", "-L", "--create-dirs", "--parallel", "--parallel-immediate", "--parallel-max", "16",
            *ca, "-K", str(config),
        ]  # fmt: skip

    def curl_fsync_cmd(self, folder: Path, repos: Sequence[str]) -> list[str]:
        """The durability floor: the curl run above, then fsync(2) of every file and folder it wrote.

        `sync FILE...` (coreutils) fsyncs each argument; `find -exec ... +` batches them. The
        fsyncs follow the download instead of overlapping it, as a shell user would chain them.
        """
        curl = " ".join(f"'{a}'" for a in self.curl_cmd(folder, repos))
        return ["sh", "-c", f"{curl} && find '{folder / 'out'}' -exec sync -- {{}} +"]

    def aria2c_cmd(self, folder: Path, repos: Sequence[str]) -> list[str]:
        """aria2c as hfd.sh runs it: an input file, 16 connections per file, 1 MiB pieces, 5 files at once."""
        listing = folder / "aria2c.input"
        listing.write_text("".join(f"{url}\n  out={rel}\n" for url, rel in self.resolve_urls(repos)))
        ca = [f"--ca-certificate={self.hub.ca_file}"] if self.hub.ca_file else []
        return [
            "aria2c", "--console-log-level=error", "--summary-interval=0", "--file-allocation=none",
            "-x", "16", "-s", "16", "-k", "1M", "-j", "5", "-c", *ca,
            "-d", str(folder / "out"), "-i", str(listing),
        ]  # fmt: skip

    def hf_transfer_cmd(self, folder: Path, repos: Sequence[str]) -> list[str]:
        jobs = []
        for repo in repos:
            urls = self.hub.call(cmd="final_urls", repo=repo)["urls"]
            jobs += [[url, str(folder / "out" / repo / path)] for path, url in sorted(urls.items())]
        listing = folder / "hf_transfer.json"
        listing.write_text(json.dumps(jobs))
        return [sys.executable, str(ROOT / "bench" / "hf_transfer_peer.py"), str(listing)]

    def command(self, tool: str, folder: Path, repos: Sequence[str]) -> list[str]:
        if tool in self.prefetch_roots:
            return self.prefetch_cmd(folder, repos)
        make: Callable[[Path, Sequence[str]], list[str]] = {
            "hf": self.hf_cmd,
            "curl": self.curl_cmd,
            "curl+fsync": self.curl_fsync_cmd,
            "aria2c": self.aria2c_cmd,
            "hf_transfer": self.hf_transfer_cmd,
        }[tool]
        return make(folder, repos)

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
        expect: int = 0,
    ) -> Run:
        """Run `argv` to completion; wall time, exit code, CPU, peak RSS and the Hub's counters for it.

        `touch`: bytes the run will write; a scratch file that big is written and deleted just before
        it starts (see `prime_page_cache`). `expect`: bytes a peer must leave in `folder/out` (peers
        do not verify, so the bench checks they wrote everything).
        """
        if touch and self.prime:
            prime_page_cache(folder, touch)
        os.sync()  # the previous run's dirty pages must not be written back during this one
        self.hub.reset()
        name = f"{workload}-{tool}".replace(" ", "_")
        rss_file = folder / f"{name}.rss"
        wrapped = [GNU_TIME, "-q", "-f", "%M", "-o", str(rss_file), *argv] if GNU_TIME else list(argv)
        with open(folder / f"{name}.out", "wb") as out, open(folder / f"{name}.err", "wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                wrapped, env=env or self.env(folder / "hf_home", tool), cwd=folder, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            timer = threading.Timer(RUN_TIMEOUT, os.killpg, (proc.pid, signal.SIGKILL))
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)  # the child's usage includes its reaped children
            finally:
                timer.cancel()
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        stats = self.hub.stats()
        xet = stats.get("xet", {})
        run = Run(
            tool=tool,
            workload=workload,
            wall=wall,
            code=proc.returncode,
            rss_mb=peak_rss_mb(rss_file, usage),
            cpu_user=usage.ru_utime,
            cpu_sys=usage.ru_stime,
            faults=usage.ru_minflt,
            requests=stats["requests"],
            heads=stats["head"],
            bytes_served=stats["bytes_served"],
            telemetry=stats["telemetry"],
            resolves=stats.get("resolve", 0),
            rejected=sum(bucket["rejected"] for bucket in stats.get("ratelimit", {}).values()),
            xet=sum(xet.get(kind, 0) for kind in ("token", "reconstruction", "xorb")),
        )
        if run.code != 0:
            tail = (folder / f"{name}.err").read_text(errors="replace")[-1500:]
            run.note = f"exit {run.code}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
            print(
                f"    ! {tool} failed (exit {run.code}); log: {folder / (name + '.err')}\n{tail}",
                file=sys.stderr,
            )
        elif expect and (written := tree_bytes(folder / "out")) != expect:
            run.code = INCOMPLETE
            run.note = f"wrote {written} of {expect} bytes"
        if record:
            self.runs.append(run)
        print(
            f"  {workload:<16} {tool:<18} {wall:7.2f} s  rss {run.rss_mb:6.0f} MB  cpu {run.cpu_user:5.2f}u"
            f" {run.cpu_sys:5.2f}s  faults {run.faults / 1000:6.0f}k  requests {run.requests:6d}"
            f"  served {run.bytes_served / MiB:8.1f} MiB"
            + (f"  429s {run.rejected}" if run.rejected else "")
            + (f"  [{run.note}]" if run.note else ""),
            flush=True,
        )
        return run

    def cold(
        self, workload: str, repos: Sequence[str], tools: Sequence[str], *, warm_up: bool = True
    ) -> dict[str, list[Run]]:
        """`reps` cold runs of each tool, in a rotating order so no tool always runs first.

        With `warm_up`, one unrecorded round first: the first runs after the Hub generated its
        repos were up to 2.5 times slower for every tool, curl included (the machine, not a tool).
        """
        tools = [t for t in tools if self.wants(t)]
        runs: dict[str, list[Run]] = {t: [] for t in tools}
        if not tools:
            return runs
        warm_up = warm_up and self.sizes.reps > 1  # not in --quick mode
        rounds = [list(tools)] if warm_up else []
        rounds += [
            list(tools[rep % len(tools) :]) + list(tools[: rep % len(tools)])
            for rep in range(self.sizes.reps)
        ]
        total = sum(self.hub.repos[r]["bytes"] for r in repos)
        for index, order in enumerate(rounds):
            record = not (warm_up and index == 0)
            for tool in order:
                folder = self.fresh(f"{workload}-{tool}")
                argv = self.command(tool, folder, repos)
                name = workload if record else f"{workload} (warm-up)"
                expect = 0 if tool in self.prefetch_roots or tool == "hf" else total
                run = self.measure(tool, name, argv, folder, touch=total, record=record, expect=expect)
                if record:
                    runs[tool].append(run)
                if total >= FREE_AFTER_RUN:
                    shutil.rmtree(folder / "cache", ignore_errors=True)
                    shutil.rmtree(folder / "out", ignore_errors=True)
        return runs

    def row(
        self,
        name: str,
        title: str,
        repos: Sequence[str],
        runs: dict[str, list[Run]],
        missing: dict[str, str],
        subject: str = "prefetch",
        per_file: bool | None = None,
    ) -> dict[str, Any]:
        """Summarize one row: every tool's spread, prefetch's ratio against each, and who is missing.

        `per_file`: CPU per file rather than per GiB; by default when files average under 1 MiB.
        """
        files = sum(self.hub.repos[r]["files"] for r in repos)
        nbytes = sum(self.hub.repos[r]["bytes"] for r in repos)
        if per_file is None:
            per_file = nbytes < files * MiB
        tools = {t: summarize(r, nbytes, files) for t, r in runs.items() if r}
        out: dict[str, Any] = {
            "title": title, "subject": subject, "files": files, "bytes": nbytes, "tools": tools,
            "missing": missing, "cpu_per_file": per_file,
        }  # fmt: skip
        out["ratios"] = {
            t: ratio(get(tools, subject, "wall"), s["wall"]) for t, s in tools.items() if t != subject
        }
        self.results[name] = out
        print_row(out)
        return out

    def cold_row(
        self,
        name: str,
        title: str,
        repos: Sequence[str],
        tools: Sequence[str],
        *,
        warm_up: bool = True,
        missing: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """`cold` runs of the tools this machine has; `missing`: more tools left out, with the reason."""
        present, absent = self.available([t for t in tools if t not in (missing or {})])
        runs = self.cold(name, repos, present, warm_up=warm_up)
        return self.row(name, title, repos, runs, {**absent, **(missing or {})})


def peak_rss_mb(rss_file: Path, usage: Any) -> float:
    """The measured process's peak RSS: GNU time's report when it ran under it, else `os.wait4`'s.

    `wait4` alone overstates small tools: a child's peak RSS starts at its parent's at the fork (the
    kernel keeps the pre-exec high-water mark), so every tool would show at least this runner's RSS
    (20-60 MB), `true` included. GNU time forks the tool from its own ~1 MB process.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(rss_file.read_text().split()[-1]) / 1024
    return float(usage.ru_maxrss) / 1024


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


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


def summarize(runs: list[Run], nbytes: int = 0, files: int = 0) -> dict[str, Any]:
    """Median and range of the wall times, CPU per GiB and per file, peak RSS, requests per file."""
    ok = [r for r in runs if r.code == 0]
    walls = [r.wall for r in ok]
    cpu = median(runs, "cpu")
    return {
        "wall": median(runs),
        "min": min(walls, default=float("nan")),
        "max": max(walls, default=float("nan")),
        "walls": [round(r.wall, 3) for r in runs],
        "cpu": cpu,
        "cpu_s_per_gib": ratio(cpu, nbytes / GiB) if nbytes else float("nan"),
        "cpu_ms_per_file": ratio(cpu * 1000, files) if files else float("nan"),
        "rss_mb": max((r.rss_mb for r in ok), default=float("nan")),
        "requests": median(runs, "requests"),
        "requests_per_file": ratio(median(runs, "requests"), files) if files else float("nan"),
        "heads": median(runs, "heads"),
        "resolves": median(runs, "resolves"),
        "rejected": median(runs, "rejected"),
        "rejected_all": [r.rejected for r in ok],
        "xet": median(runs, "xet"),
        "telemetry": max((r.telemetry for r in runs), default=0),
        "bytes_served": median(runs, "bytes_served"),
        "failures": len(runs) - len(ok),
        "notes": sorted({r.note for r in runs if r.note}),
    }


def spread(s: dict[str, Any]) -> str:
    """`1.55 s (1.50–2.32)`: the median and the range of the repetitions."""
    if s["wall"] != s["wall"]:
        return "failed"
    if len(s["walls"]) < 2 or s["min"] == s["max"]:
        return fmt(s["wall"])
    return f"{fmt(s['wall'])} ({s['min']:.2f}–{s['max']:.2f})"


def cpu_cell(s: dict[str, Any], per_file: bool) -> str:
    """CPU (user + system) per GiB for rows that move bytes, per file for rows of small files or no-ops."""
    return fmt(s["cpu_ms_per_file"], "ms/file") if per_file else fmt(s["cpu_s_per_gib"], "s/GiB")


def print_row(row: dict[str, Any]) -> None:
    subject = row["subject"]
    print(f"  = {row['title']}")
    for tool, s in row["tools"].items():
        r = row["ratios"].get(tool)
        versus = f"  {subject} / {tool} {fmt(r, '')}" if r is not None else ""
        print(
            f"      {tool:<20} {spread(s):<24} cpu {cpu_cell(s, row['cpu_per_file']):>14}"
            f"  rss {fmt(s['rss_mb'], 'MB', 0):>7}  req/file {fmt(s['requests_per_file'], '', 3)}{versus}"
        )
    for tool, why in row["missing"].items():
        print(f"      {tool:<20} missing: {why}")
    print(flush=True)


# ---------------------------------------------------------------------------------------------- workloads
DOWNLOADERS = ["hf", "curl", "curl+fsync", "aria2c", "hf_transfer"]  # the peers of the cold rows
# A measured command: tool, argv, folder, environment (None: the usual one).
Step = tuple[str, list[str], Path, dict[str, str] | None]


def bench_cold(b: Bench) -> None:
    b.cold_row("cold", f"cold, {b.sizes.big_label}, HTTP", [BIG], [*b.prefetch_tools(), *DOWNLOADERS])


def nginx_row(b: Bench, name: str, title: str, repo: str, *, tls: bool, cap_bps: float | None = None) -> None:
    """A cold row served by nginx in front of the test Hub (bench/nginx.py); "missing" for every tool
    when nginx is not installed."""
    tools = [*b.prefetch_tools(), *DOWNLOADERS]
    if NGINX is None:
        b.row(name, title, [repo], {}, {t: f"nginx {NGINX_MISSING}" for t in tools if b.wants(t)})
        return
    print(f"{name}: starting nginx in front of the test Hub...", flush=True)
    front = NginxFront(b.hub, b.work / f"nginx-{name}", b.work / "blobs", [repo], tls=tls, cap_bps=cap_bps)
    with front, b.serving(front):
        row = b.cold_row(name, title, [repo], tools)
    if cap_bps:
        row["cap_mb_s"] = cap_bps / 1e6


def bench_https(b: Bench) -> None:
    nginx_row(b, "https", f"cold, {b.sizes.big_label}, HTTPS (nginx)", BIG, tls=True)


def bench_https_python(b: Bench) -> None:
    """The HTTPS row served by the Python test Hub itself: a second Hub process with `--tls`."""
    print("https-python: starting a TLS test Hub...", flush=True)
    hub = Hub(hub_specs(b.sizes, ["cold"]), b.work, tls=True)
    try:
        with b.serving(hub):
            b.cold_row("https-python", f"cold, {b.sizes.big_label}, HTTPS (Python test Hub)", [BIG],
                       [*b.prefetch_tools(), *DOWNLOADERS])  # fmt: skip
    finally:
        hub.close()


def bench_one(b: Bench) -> None:
    b.cold_row("one", f"cold, 1 × {b.sizes.one_size // MiB} MiB", [ONE], [*b.prefetch_tools(), *DOWNLOADERS])


def capped_title(b: Bench, files: str, server: str) -> str:
    return f"{files}, CDN capped at {b.sizes.cap_bps / 1e6:.0f} MB/s per connection ({server})"


def capped_python_row(b: Bench, name: str, files: str, repo: str) -> None:
    """A capped row where the Python test Hub's CDN throttles each connection itself."""
    assert isinstance(b.hub, Hub)
    b.hub.bandwidth(b.sizes.cap_bps)
    try:
        b.cold_row(
            name, capped_title(b, files, "Python test Hub"), [repo], [*b.prefetch_tools(), *DOWNLOADERS]
        )
    finally:
        b.hub.bandwidth(None)
    b.results[name]["cap_mb_s"] = b.sizes.cap_bps / 1e6


def bench_cap(b: Bench) -> None:
    nginx_row(b, "cap", capped_title(b, f"cold, {b.sizes.big_label}", "nginx"), BIG, tls=False,
              cap_bps=b.sizes.cap_bps)  # fmt: skip


def bench_cap_python(b: Bench) -> None:
    capped_python_row(b, "cap-python", f"cold, {b.sizes.big_label}", BIG)


def bench_cap_one(b: Bench) -> None:
    nginx_row(b, "cap-one", capped_title(b, f"cold, 1 × {b.sizes.one_size // MiB} MiB", "nginx"), ONE,
              tls=False, cap_bps=b.sizes.cap_bps)  # fmt: skip


def bench_cap_one_python(b: Bench) -> None:
    capped_python_row(b, "cap-one-python", f"cold, 1 × {b.sizes.one_size // MiB} MiB", ONE)


def quota_floor(files: int, quota: int, window: float) -> float:
    """The least time a quota of `quota` requests per fixed window allows for one request per file:
    the last request can go out at the start of window ceil(files / quota), counting from 1."""
    return (math.ceil(files / quota) - 1) * window


def bench_ratelimit(b: Bench) -> None:
    """Small files under the Hub's rate limit (tests/hubemu/ratelimit.py), prefetch and hf side by side.

    The resolver bucket gets `limited_quota` requests per `limited_window` s; every run starts a fresh
    window (the Hub's counters are reset before it). Two profiles: the rate-limit headers on the 429s
    only, then on every answer (as the Hub sends them). Each row records the quota's floor and the
    429s and /resolve calls the Hub counted for each run.
    """
    s = b.sizes
    floor = quota_floor(s.limited_files, s.limited_quota, s.limited_window)
    for headers, label in (("on-429", "headers on 429s"), ("always", "headers on every answer")):
        title = (f"rate-limited, {s.limited_files:,} small files, {s.limited_quota} resolver requests per "
                 f"{s.limited_window:g} s, {label}")  # fmt: skip
        b.hub.call(cmd="ratelimit", window=s.limited_window, resolvers=s.limited_quota, headers=headers)
        try:
            row = b.cold_row(
                f"ratelimit-{headers}", title, [LIMITED], [*b.prefetch_tools(), "hf"], warm_up=False
            )
        finally:
            b.hub.call(cmd="ratelimit")
        row.update(
            counters=True, limit={"quota": s.limited_quota, "window": s.limited_window, "floor": floor}
        )


def bench_xet(b: Bench) -> None:
    """Cold Xet-backed files: hf download through hf_xet against prefetch, both through the Xet storage (a
    token, reconstructions, xorb ranges: no /resolve per file), and curl + fsync on the files' /resolve URLs
    (the CAS bridge)."""
    title = f"cold, {size_label(b.sizes.xet_files, b.sizes.xet_size)} Xet-backed, HTTP (Python test Hub)"
    missing = (
        {} if importlib.util.find_spec("hf_xet") else {"hf": "hf_xet not installed (pip install hf_xet)"}
    )
    b.xet = True
    try:
        row = b.cold_row("xet", title, [XET], [*b.prefetch_tools(), "hf", "curl+fsync"], missing=missing)
    finally:
        b.xet = False
    row["counters"] = True


def bench_registry(b: Bench) -> None:
    """The cold row's files as OCI artifacts, to and from the same local Distribution registry (issue 29).

    Push: `prefetch push` of the lock from the cache (ModelPack, raw layers) against `skopeo copy --all`
    of the very OCI layout that `prefetch push` wrote of it, each into a fresh registry, so no blob is
    there already. Pull: `prefetch sync --source` into an empty HF cache (every byte verified against the
    lock, fsynced, linked) against `skopeo copy --all` of the same artifact into an empty OCI layout.
    """
    title = f"{b.sizes.big_label} as OCI artifacts, local Distribution registry"
    tools = ["prefetch", "skopeo"]
    if REGISTRY is None or SKOPEO is None:
        why = {t: f"docker-registry or skopeo {REGISTRY_MISSING}" for t in tools}
        for name in ("registry-push", "registry-pull"):
            b.row(name, f"{name.removeprefix('registry-')}, {title}", [BIG], {}, why)
        return
    setup = b.fresh("registry-setup")
    b.measure("prefetch", "registry-setup", b.prefetch_cmd(setup, [BIG]), setup, record=False)
    lock, cache, layout = setup / "models.lock", setup / "cache", setup / "layout"
    prefetch = [sys.executable, "-m", "prefetch", "--quiet"]
    b.measure("prefetch", "registry-setup", [*prefetch, "push", str(lock), f"oci:{layout}:v1", "--cache-dir",
              str(cache)], setup, record=False)  # fmt: skip
    total = b.hub.repos[BIG]["bytes"]

    def env(folder: Path) -> dict[str, str]:  # upload state and known repositories: this run's own
        return {**b.env(folder / "hf_home"), "XDG_STATE_HOME": str(folder / "state")}

    push_runs: dict[str, list[Run]] = {t: [] for t in tools}
    for rep in range(b.sizes.reps):
        for tool in tools if rep % 2 == 0 else tools[::-1]:
            folder = b.fresh(f"registry-push-{tool}")
            with LocalRegistry(folder / "registry") as registry:
                target = f"{registry.host}/bench/models:v1"
                argv = (
                    [*prefetch, "push", str(lock), f"oci://{target}", "--cache-dir", str(cache)]
                    if tool == "prefetch"
                    else [SKOPEO, "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{target}"]
                )  # fmt: skip
                push_runs[tool].append(
                    b.measure(tool, "registry-push", argv, folder, env=env(folder), touch=total)
                )
            shutil.rmtree(folder, ignore_errors=True)
    b.row("registry-push", f"push, {title}", [BIG], push_runs, {})

    pull_runs: dict[str, list[Run]] = {t: [] for t in tools}
    with LocalRegistry(setup / "registry") as registry:
        source = f"{registry.host}/bench/models:v1"
        b.measure("prefetch", "registry-setup", [*prefetch, "push", str(lock), f"oci://{source}", "--cache-dir",
                  str(cache)], setup, env=env(setup), record=False)  # fmt: skip
        for rep in range(b.sizes.reps):
            for tool in tools if rep % 2 == 0 else tools[::-1]:
                folder = b.fresh(f"registry-pull-{tool}")
                argv = (
                    [*prefetch, "sync", str(setup / "models.yaml"), "--lock", str(lock), "--frozen", "--source",
                     f"oci://{source}", "--cache-dir", str(folder / "cache")]
                    if tool == "prefetch"
                    else [SKOPEO, "copy", "--all", "--src-tls-verify=false", f"docker://{source}",
                          f"oci:{folder / 'layout'}:v1"]
                )  # fmt: skip
                pull_runs[tool].append(
                    b.measure(tool, "registry-pull", argv, folder, env=env(folder), touch=total)
                )
                shutil.rmtree(folder, ignore_errors=True)
    b.row("registry-pull", f"pull, {title}", [BIG], pull_runs, {})
    shutil.rmtree(setup, ignore_errors=True)


def bench_small(b: Bench) -> None:
    b.cold_row(
        "small", f"cold, {b.sizes.small_files:,} small files", [SMALL], [*b.prefetch_tools(), *DOWNLOADERS]
    )


def bench_warm(b: Bench) -> None:
    """A no-op re-sync of an up-to-date cache: prefetch online and --offline, hf online and offline."""
    for repo, label in ((SMALL, "small"), (BIG, "big")):
        pf = b.fresh(f"warm-{label}-prefetch")
        hf = b.fresh(f"warm-{label}-hf")
        b.measure("prefetch", "warm-setup", b.prefetch_cmd(pf, [repo]), pf, record=False)
        b.measure("hf", "warm-setup", b.hf_cmd(hf, [repo]), hf, record=False)
        hf_offline_env = {**b.env(hf / "hf_home", "hf"), "HF_HUB_OFFLINE": "1"}
        plan: list[Step] = [
            ("prefetch", b.prefetch_cmd(pf, [repo]), pf, None),
            ("prefetch --offline", b.prefetch_cmd(pf, [repo], "--offline"), pf, None),
            ("hf", b.hf_cmd(hf, [repo]), hf, None),
            ("hf offline", b.hf_cmd(hf, [repo]), hf, hf_offline_env),
        ]
        runs = repeat(b, f"warm-{label}", plan)
        b.row(
            f"warm-{label}",
            f"warm no-op re-sync, {label} ({b.hub.repos[repo]['files']} files)",
            [repo],
            runs,
            {},
            per_file=True,
        )
        for folder in (pf, hf):
            shutil.rmtree(folder / "cache", ignore_errors=True)


def repeat(b: Bench, workload: str, plan: Sequence[Step]) -> dict[str, list[Run]]:
    """`reps` rounds of the same commands (tools filtered by --tools), alternating their order."""
    plan = [p for p in plan if b.wants(p[0].split(" ")[0]) or b.wants(p[0])]
    runs: dict[str, list[Run]] = {tool: [] for tool, *_ in plan}
    for rep in range(b.sizes.reps):
        for tool, argv, folder, env in plan if rep % 2 == 0 else plan[::-1]:
            runs[tool].append(b.measure(tool, workload, argv, folder, env=env))
    return runs


def hash_plan(b: Bench, folder: Path) -> list[Step]:
    """`prefetch verify` and the hashing floors over the same blob files (listed once, fed by xargs)."""
    listing = folder / "blobs.list"
    listing.write_bytes(b"".join(str(p).encode() + b"\0" for p in blob_files(folder / "cache")))
    plan: list[Step] = [("prefetch verify", b.verify_cmd(folder), folder, None)]
    floors = {"sha256sum": ["sha256sum"], "openssl": ["openssl", "dgst", "-sha256"]}
    for tool, argv in floors.items():
        if tool not in b.missing:
            plan.append((tool, ["xargs", "-0", "-a", str(listing), *argv], folder, None))
    subprocess.run(plan[-1][1], stdout=subprocess.DEVNULL, check=False)  # warm the page cache for all
    return plan


def verify_row(b: Bench, name: str, title: str, folder: Path, repos: Sequence[str]) -> dict[str, Any]:
    runs = repeat(b, name, hash_plan(b, folder))
    missing: dict[str, str] = {t: b.missing[t] for t in ("sha256sum", "openssl") if t in b.missing}
    return b.row(name, title, repos, runs, missing, subject="prefetch verify")


def blob_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("blobs/*") if p.is_file() and "." not in p.name)


def bench_verify(b: Bench) -> None:
    """`prefetch verify` of a synced cache against sha256sum and openssl of the same blobs (warm page cache)."""
    for repo, label in ((BIG, "big"), (SMALL, "small")):
        folder = b.fresh(f"verify-{label}")
        b.measure("prefetch", "verify-setup", b.prefetch_cmd(folder, [repo]), folder, record=False)
        verify_row(
            b, f"verify-{label}", f"verify, {label} ({b.hub.repos[repo]['files']} files)", folder, [repo]
        )
        shutil.rmtree(folder / "cache", ignore_errors=True)


def bench_files(b: Bench) -> None:
    """One repo of N small files for each N: cold (against curl), warm, verify, and how each grows with N."""
    for n in b.sizes.many_files:
        repo = many_repo(n)
        b.cold_row(f"files-{n}-cold", f"cold, one repo of {n:,} files", [repo],
                   [*b.prefetch_tools(), "curl", "curl+fsync"])  # fmt: skip
        folder = b.fresh(f"files-{n}")
        b.measure("prefetch", "files-setup", b.prefetch_cmd(folder, [repo]), folder, record=False)
        plan: list[Step] = [
            ("prefetch", b.prefetch_cmd(folder, [repo]), folder, None),
            ("prefetch --offline", b.prefetch_cmd(folder, [repo], "--offline"), folder, None),
        ]
        b.row(f"files-{n}-warm", f"warm no-op re-sync, one repo of {n:,} files", [repo],
              repeat(b, f"files-{n}-warm", plan), {})  # fmt: skip
        verify_row(b, f"files-{n}-verify", f"verify, one repo of {n:,} files", folder, [repo])
        shutil.rmtree(folder, ignore_errors=True)
    b.results["files-growth"] = growth(b.results, b.sizes.many_files)


def growth(results: dict[str, Any], counts: Sequence[int]) -> list[dict[str, Any]]:
    """Each step up in file count: time growth over file-count growth (1.0 = linear), RSS per file added."""
    steps = []
    for small, large in itertools.pairwise(counts):
        step: dict[str, Any] = {"from": small, "to": large}
        for phase, tool in (("cold", "prefetch"), ("warm", "prefetch"), ("verify", "prefetch verify")):
            a = get(results, f"files-{small}-{phase}", "tools", tool, "wall")
            z = get(results, f"files-{large}-{phase}", "tools", tool, "wall")
            step[phase] = ratio(ratio(z, a), large / small)
        rss_a = get(results, f"files-{small}-cold", "tools", "prefetch", "rss_mb")
        rss_z = get(results, f"files-{large}-cold", "tools", "prefetch", "rss_mb")
        step["rss_kb_per_file"] = ratio((rss_z - rss_a) * 1024, large - small)
        steps.append(step)
    return steps


def bench_manifest(b: Bench) -> None:
    """A manifest of many repos (config files and one LFS file each): cold against curl and aria2c, warm."""
    repos = manifest_repos(b.sizes)
    tools = [*b.prefetch_tools(), "curl", "curl+fsync", "aria2c", "hf_transfer"]  # hf: one repo per call
    b.cold_row("manifest-cold", f"cold, a manifest of {len(repos)} repos", repos, tools)
    folder = b.fresh("manifest-warm")
    b.measure("prefetch", "manifest-setup", b.prefetch_cmd(folder, repos), folder, record=False)
    plan: list[Step] = [
        ("prefetch", b.prefetch_cmd(folder, repos), folder, None),
        ("prefetch --offline", b.prefetch_cmd(folder, repos, "--offline"), folder, None),
    ]
    b.row("manifest-warm", f"warm no-op re-sync, a manifest of {len(repos)} repos", repos,
          repeat(b, "manifest-warm", plan), {})  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)


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
    hub = b.hub
    assert isinstance(hub, Hub)  # its bandwidth cap and live byte counts: the Python test Hub's
    total = hub.repos[BIG]["bytes"]
    out: dict[str, Any] = {"total_bytes": total}
    for tool in ("prefetch", "hf"):
        if not b.wants(tool):
            continue
        trials = []
        for rep in range(b.sizes.reps if tool == "prefetch" else 1):
            folder = b.fresh(f"resume-{tool}")
            argv = b.command(tool, folder, [BIG])
            print(f"resume: {tool} (trial {rep + 1})", flush=True)
            hub.bandwidth(b.sizes.cap_bps)
            hub.reset()
            os.sync()
            with open(folder / "killed.err", "wb") as err:
                proc = subprocess.Popen(
                    argv, env=b.env(folder / "hf_home", tool), cwd=folder, stdout=subprocess.DEVNULL,
                    stderr=err, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                deadline = time.monotonic() + RUN_TIMEOUT
                served = 0
                while proc.poll() is None and time.monotonic() < deadline:
                    served = hub.stats()["bytes_served"]
                    if served >= total // 2:
                        break
                    time.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            served = hub.stats()["bytes_served"]
            hub.bandwidth(None)
            cache = folder / "cache"
            installed = sum(p.stat().st_size for p in blob_files(cache))
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


def bench_large(b: Bench) -> None:
    """Peak RSS while syncing several GB (one run each)."""
    info = b.hub.repos[LARGE]
    saved, b.sizes = b.sizes, b.sizes.replace(reps=1)
    try:
        runs = b.cold("large", [LARGE], ["prefetch", "hf"], warm_up=False)
    finally:
        b.sizes = saved
    b.row(
        "large", f"peak RSS, {info['files']} × {info['bytes'] // info['files'] // MiB} MiB", [LARGE], runs, {}
    )


WORKLOADS: dict[str, Callable[[Bench], None]] = {
    "cold": bench_cold,
    "https": bench_https,
    "https-python": bench_https_python,
    "one": bench_one,
    "cap": bench_cap,
    "cap-python": bench_cap_python,
    "cap-one": bench_cap_one,
    "cap-one-python": bench_cap_one_python,
    "small": bench_small,
    "warm": bench_warm,
    "resume": bench_resume,
    "verify": bench_verify,
    "files": bench_files,
    "manifest": bench_manifest,
    "large": bench_large,
    "ratelimit": bench_ratelimit,
    "xet": bench_xet,
    "registry": bench_registry,
}
# Run only when `--only` names them: they wait out quota windows (ratelimit), chunk their content once
# into a cache of their own (xet), or need servers beside the Hub (registry: the Distribution registry
# and skopeo).
OPT_IN = ("ratelimit", "xet", "registry")


# ---------------------------------------------------------------------------------------------- report
def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output, or "none"."""
    if shutil.which(argv[0]) is None:
        return "none"
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).strip().split("\n")[0]
    return " ".join(first.split()[:3])


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
    for name in ("huggingface_hub", "hf_transfer", "hf_xet"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "huggingface_hub": versions.get("huggingface_hub", "?"),
        "hf_transfer": versions.get("hf_transfer", "none"),
        "hf_xet": versions.get("hf_xet", "none"),
        "nginx": tool_version([NGINX, "-v"]).split("/")[-1] if NGINX else "none",
        "curl": " ".join(tool_version(["curl", "--version"]).split()[:2]),
        "aria2c": tool_version(["aria2c", "--version"]),
        "openssl": " ".join(tool_version(["openssl", "version"]).split()[:2]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def fmt(x: float, unit: str = "s", digits: int = 2) -> str:
    if x != x:  # nan
        return "n/a"
    return f"{x:.{digits}f}{(' ' + unit) if unit else ''}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Issue 13's goals (and the earlier ones still held) against this run: target, measured, verdict."""
    rows: list[tuple[str, str, str, str]] = []

    def check(name: str, value: float, limit: float, unit: str = "", digits: int = 2) -> None:
        rows.append(
            (
                name,
                fmt(value, unit, digits),
                f"≤ {limit:g}",
                verdict(None if value != value else value <= limit),
            )
        )

    def versus(row: str, tool: str, limit: float) -> None:
        if row in results and tool in results[row]["tools"]:
            check(
                f"{results[row]['title']}: {results[row]['subject']} / {tool}",
                results[row]["ratios"][tool],
                limit,
            )

    versus("cold", "hf", 0.6)
    versus("https", "hf", 0.6)
    versus("https", "curl+fsync", 1.25)
    versus("cap", "aria2c", 1.0)
    versus("cap-one", "aria2c", 1.0)
    versus("small", "curl", 2.5)
    versus("small", "hf", 0.15)
    if "small" in results:
        check("small files: requests per file", get(results, "small", "tools", "prefetch", "requests_per_file"), 1.05,
              digits=3)  # fmt: skip
    versus("warm-small", "hf", 1.0)
    versus("warm-big", "hf", 1.0)
    if "resume" in results and "prefetch" in results["resume"]:
        check("resume after SIGKILL: re-fetched / missing (worst)", results["resume"]["prefetch"]["worst_ratio"], 1.1,
              digits=3)  # fmt: skip
    versus("verify-big", "openssl", 1.0)
    for step in results.get("files-growth", []):
        for phase in ("cold", "warm", "verify"):
            check(f"{step['from']:,} → {step['to']:,} files, {phase}: growth / linear", step[phase], 1.1)
    if "files-30000-warm" in results:
        check(
            "warm no-op of 30,000 files",
            get(results, "files-30000-warm", "tools", "prefetch", "wall"),
            1.0,
            "s",
        )
    if "files-100000-cold" in results:
        check(
            "peak RSS, 100,000 files",
            get(results, "files-100000-cold", "tools", "prefetch", "rss_mb"),
            120,
            "MB",
            0,
        )
    if "large" in results:
        check(results["large"]["title"], get(results, "large", "tools", "prefetch", "rss_mb"), 200, "MB", 0)
    # Issue 27: within a window and 3 s of the quota's floor; no 429 once the Hub's headers say the policy.
    if "ratelimit-on-429" in results:
        row = results["ratelimit-on-429"]
        slack = row["limit"]["floor"] + row["limit"]["window"] + 3
        check(f"{row['title']}: prefetch time", get(row, "tools", "prefetch", "wall"), slack, "s")
    if "ratelimit-always" in results:
        row = results["ratelimit-always"]
        check(f"{row['title']}: prefetch's 429 answers", get(row, "tools", "prefetch", "rejected"), 0, "", 0)
    versus("xet", "hf", 1.0)  # issue 28
    versus("registry-push", "skopeo", 1.2)  # issue 29
    versus("registry-pull", "skopeo", 1.2)
    return rows


def table(results: dict[str, Any]) -> str:
    """The results as Markdown: every row's tools with their spread, then growth, resume and targets."""
    lines = [
        "| workload | tool | wall: median (min–max) | prefetch / tool | CPU | peak RSS | requests / file |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results.values():
        if not isinstance(row, dict) or "tools" not in row:
            continue
        for tool, s in row["tools"].items():
            r = row["ratios"].get(tool)
            lines.append(
                f"| {row['title']} | {tool} | {spread(s)} | {'' if r is None else fmt(r, '')} | "
                f"{cpu_cell(s, row['cpu_per_file'])} | {fmt(s['rss_mb'], 'MB', 0)} | "
                f"{fmt(s['requests_per_file'], '', 3)} |"
            )
        lines += [
            f"| {row['title']} | {tool} | missing: {why} | | | | |" for tool, why in row["missing"].items()
        ]
    if results.get("files-growth"):
        lines += ["", "Growth with the file count (time growth / file-count growth; 1.00 is linear):", ""]
        lines += ["| files | cold | warm | verify | peak RSS per file added |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {s['from']:,} → {s['to']:,} | {fmt(s['cold'], '')} | {fmt(s['warm'], '')} | {fmt(s['verify'], '')} | "
            f"{fmt(s['rss_kb_per_file'], 'KB', 1)} |"
            for s in results["files-growth"]
        ]
    if "resume" in results:
        lines += [
            "",
            "Resume after SIGKILL at ~50 % (under the cap): bytes re-fetched / bytes missing at the kill:",
            "",
        ]
        for tool in ("prefetch", "hf"):
            if tool in results["resume"]:
                trials = ", ".join(fmt(t["ratio"], "", 3) for t in results["resume"][tool]["trials"])
                lines.append(f"- {tool}: {trials}")
    lines += hub_counters(results)
    lines += ["", "| target | measured | goal | verdict |", "|---|---:|---|---|"]
    lines += [f"| {name} | {value} | {goal} | {ok} |" for name, value, goal, ok in targets(results)]
    return "\n".join(lines)


def hub_counters(results: dict[str, Any]) -> list[str]:
    """What the Hub counted per run on the rate-limited and Xet rows: /resolve calls, 429s, Xet requests,
    and on a rate-limited row the quota's floor (the least time it allows for one request per file)."""
    rows = [row for row in results.values() if isinstance(row, dict) and row.get("counters")]
    if not rows:
        return []
    lines = [
        "",
        "What the test Hub counted (medians per run; the 429s of every run in brackets):",
        "",
        "| workload | tool | wall | quota's floor | wall / floor | 429 answers | /resolve calls | Xet requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        floor = (row.get("limit") or {}).get("floor", float("nan"))
        for tool, s in row["tools"].items():
            every = ", ".join(str(n) for n in s["rejected_all"])
            lines.append(
                f"| {row['title']} | {tool} | {spread(s)} | {fmt(floor)} | {fmt(ratio(s['wall'], floor), '')} | "
                f"{fmt(s['rejected'], '', 0)} [{every}] | {fmt(s['resolves'], '', 0)} | {fmt(s['xet'], '', 0)} |"
            )
    return lines


def source_label(root: Path) -> str:
    """Which code a prefetch tool ran: its checkout and commit (`+` when the tree had changes)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
        ).stdout

    head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--", "prefetch")
    return f"{root} at {head.strip() or '?'}{'+' if dirty.strip() else ''}"


def run_info(sizes: Sizes, argv: list[str], roots: dict[str, Path]) -> dict[str, Any]:
    """How a run was made: its command, repetitions and the code each prefetch tool ran."""
    return {
        "command": " ".join(["python bench/run.py", *argv]).strip(),
        "reps": sizes.reps,
        "sources": "; ".join(f"{tool}: {source_label(root)}" for tool, root in roots.items()),
    }


def markdown(payload: dict[str, Any]) -> str:
    """The results section of docs/benchmarks.md: how and where the run was made, then `table`."""
    info, run = payload["machine"], payload["run"]
    head = [
        f"Measured {info['date']} with `{run['command']}` ({run['reps']} repetition(s): medians, and the "
        "range of the repetitions in parentheses).",
        "",
        f"Machine: {info['cpu']}, {info['memory']} RAM, {info['os']}, Python {info['python']}. Peers: "
        f"huggingface_hub {info['huggingface_hub']} (hf_xet {info.get('hf_xet', 'none')}), {info['curl']}, "
        f"{'aria2c none' if info['aria2c'] == 'none' else info['aria2c']}, hf_transfer {info['hf_transfer']}, "
        f"{info['openssl']}. Rows marked (nginx) were served "
        f"by nginx {info.get('nginx', 'none')} in front of the test Hub; the others by the Python test Hub. "
        "Both ran on the same machine (loopback), competing with the client for the cores. "
        f"Code measured: {run['sources']}.",
        "",
        "",
    ]
    return "\n".join(head) + table(payload["results"]) + "\n"


# README's speed table: (row, peers to compare with), in this order; rows the run did not make are left out.
README_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cold", ("curl+fsync",)),
    ("https", ("curl+fsync",)),
    ("one", ("curl+fsync",)),
    ("cap", ("aria2c",)),
    ("cap-one", ("aria2c",)),
    ("small", ("curl", "curl+fsync")),
    ("warm-small", ("hf offline",)),
    ("verify-big", ("openssl",)),
    ("manifest-cold", ("aria2c", "hf_transfer")),
    ("files-30000-warm", ()),
    ("files-100000-cold", ("curl+fsync",)),
)


def readme_section(payload: dict[str, Any]) -> str:
    """README's speed table, from the same run as docs/benchmarks.md's results."""
    info, run, results = payload["machine"], payload["run"], payload["results"]
    lines = [
        f"Measured {info['date']} with `{run['command']}` ({run['reps']} repetition(s)) on {info['cpu']}, over "
        "loopback; the method, every row and the caveats are in [docs/benchmarks.md](docs/benchmarks.md). "
        "Times are medians with the range of the repetitions; a ratio is prefetch's median over the other "
        "tool's in the same run, so lower is better.",
        "",
        "| workload | prefetch | prefetch / hf | against the best peers |",
        "|---|---:|---:|---|",
    ]
    for name, peers in README_ROWS:
        row = results.get(name)
        if not row or row["subject"] not in row["tools"]:
            continue
        hf = fmt(row["ratios"]["hf"], "") if "hf" in row["ratios"] else ""
        ratios = {peer: row["ratios"][peer] for peer in peers if peer in row["ratios"]}
        against = ", ".join(f"{fmt(r, '')} × {peer}" for peer, r in ratios.items() if not math.isnan(r))
        lines.append(f"| {row['title']} | {spread(row['tools'][row['subject']])} | {hf} | {against} |")
    notes = []
    if "large" in results:
        rss = {t: fmt(s["rss_mb"], "MB", 0) for t, s in results["large"]["tools"].items()}
        notes.append(f"Peak memory while syncing {results['large']['title'].removeprefix('peak RSS, ')}: "
                     f"{rss.get('prefetch', 'n/a')} (hf: {rss.get('hf', 'n/a')}).")  # fmt: skip
    if "resume" in results and "prefetch" in results["resume"]:
        ratios = [t["ratio"] for t in results["resume"]["prefetch"]["trials"]]
        low, high = fmt(min(ratios), "", 3), fmt(max(ratios), "", 3)
        hf = results["resume"].get("hf", {}).get("worst_ratio", float("nan"))
        notes.append(
            f"Resumed after `kill -9` at half way, prefetch fetched {low if low == high else f'{low}–{high}'} × "
            f"the missing bytes again (hf: {fmt(hf, '', 3)})."
        )
    return "\n".join(lines + (["", " ".join(notes)] if notes else [])) + "\n"


def replace_between(path: Path, begin: str, end: str, text: str) -> None:
    """Rewrite what lies between two marker lines of a file (appended at the end when missing)."""
    doc = path.read_text() if path.exists() else ""
    if begin not in doc or end not in doc:
        doc += f"\n{begin}\n{end}\n"
    before, rest = doc.split(begin, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{begin}\n{text}{end}{after}")


def update_docs(payload: dict[str, Any]) -> None:
    """docs/benchmarks.md's results and README's speed table, both from this one run."""
    replace_between(DOC, DOC_BEGIN, DOC_END, markdown(payload))
    replace_between(README, README_BEGIN, README_END, readme_section(payload))


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


def prefetch_roots(others: Sequence[Path]) -> dict[str, Path]:
    """ "prefetch" is this checkout; each `--prefetch-root` adds `prefetch@<folder name>` to every cold row."""
    roots = {"prefetch": ROOT}
    for other in others:
        other = other.resolve()
        if not (other / "prefetch" / "__init__.py").is_file():
            raise SystemExit(f"--prefetch-root {other}: no prefetch/__init__.py there")
        if other != ROOT:
            roots[f"prefetch@{other.name}"] = other
    return roots


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small data, one repetition (< 60 s)")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 3; 1 with --quick)")
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of: {','.join(WORKLOADS)} ({', '.join(OPT_IN)}: only when named)",
    )
    parser.add_argument("--skip", default="", help="comma-separated workloads to leave out")
    parser.add_argument("--files", help="file counts of the `files` rows (default 10000,30000,100000)")
    parser.add_argument("--tools", help="only these tools (e.g. prefetch,curl), for tuning sweeps")
    parser.add_argument(
        "--prefetch-arg", action="append", default=[], help="extra `prefetch sync` flag (repeat)"
    )
    parser.add_argument(
        "--prefetch-root", type=Path, action="append", default=[],
        help="another checkout's source tree, measured beside this one as prefetch@NAME (repeat)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, help="where caches go (default: a temp folder, removed after)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--no-prime", action="store_true", help="no scratch write before each run (see prime_page_cache)"
    )
    parser.add_argument("--json", type=Path, help="write all results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the results table (Markdown) here")
    parser.add_argument(
        "--update-doc", action="store_true", help=f"rewrite the results sections of {DOC} and {README}"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: print (and with --update-doc write) a --json run's results",
    )
    parser.add_argument(
        "--xet-cache",
        type=Path,
        default=XET_CACHE,
        help=f"the Xet row's chunk lists, kept across runs ({XET_CACHE})",
    )
    return parser.parse_args(argv)


def shown_command(argv: list[str]) -> list[str]:
    """The run's arguments as the results name them: without the ones that only say where output goes."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--json", "--markdown"):
            skip = True
        elif arg != "--update-doc" and not arg.startswith(("--json=", "--markdown=")):
            shown.append(arg)
    return shown


def wanted_workloads(args: argparse.Namespace, sizes: Sizes) -> list[str]:
    """The workloads `--only` / `--skip` name, in WORKLOADS' order; OPT_IN ones only when named."""
    named = args.only.split(",") if args.only else [w for w in WORKLOADS if w not in OPT_IN]
    unknown = set(named) - set(WORKLOADS) - {""}
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}")
    skipped = set(args.skip.split(","))
    if not sizes.large_files:
        skipped.add("large")
    return [w for w in WORKLOADS if w in named and w not in skipped]


def run_all(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Every wanted workload against one test Hub process; the results, machine and run as one payload."""
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.reps:
        sizes = sizes.replace(reps=args.reps)
    if args.files:
        sizes = sizes.replace(many_files=tuple(int(n) for n in args.files.split(",")))
    wanted = wanted_workloads(args, sizes)
    info = machine()
    missing = missing_peers()
    started = time.monotonic()
    roots = prefetch_roots(args.prefetch_root)
    # prefetch runs from its source tree: compile it as an installed package is, so that a
    # PYTHONDONTWRITEBYTECODE environment does not make every run recompile it (~40 ms).
    for root in roots.values():
        compileall.compile_dir(root / "prefetch", quiet=1)
    with workdir(args.workdir, args.keep) as work:
        print(f"work folder {work}; starting the test Hub (generating the repos)...", flush=True)
        if not GNU_TIME:
            print("no /usr/bin/time (GNU time): peak RSS includes this runner's own", flush=True)
        print(
            "peers missing: " + (", ".join(f"{t} ({why})" for t, why in missing.items()) or "none"),
            flush=True,
        )
        hub = Hub(hub_specs(sizes, wanted), work, xet_cache=args.xet_cache if "xet" in wanted else None)
        try:
            print(
                f"test Hub at {hub.url} (pid {hub.pid}) after {time.monotonic() - started:.1f} s", flush=True
            )
            b = Bench(
                hub, sizes, work, roots, args.prefetch_arg, hf_command(), prime=not args.no_prime,
                tools=args.tools.split(",") if args.tools else [], missing=missing,
            )  # fmt: skip
            for name in wanted:
                print(f"{name}:", flush=True)
                WORKLOADS[name](b)
        finally:
            hub.close()
    print(f"(benchmark took {time.monotonic() - started:.0f} s)")
    return {
        "machine": info,
        "run": run_info(sizes, shown_command(argv), roots),
        "sizes": asdict(sizes),
        "results": b.results,
        "runs": [asdict(r) for r in b.runs],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        payload = json.loads(args.from_json.read_text())
    else:
        payload = run_all(args, argv if argv is not None else sys.argv[1:])
    text = markdown(payload)
    print("\n" + text)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    if args.markdown:
        args.markdown.write_text(text)
    if args.update_doc:
        update_docs(payload)
        print(f"rewrote the results in {DOC} and {README}")
    # A peer that fails is shown as failed in its row; a failing prefetch fails the benchmark.
    return 1 if any(r["code"] != 0 and r["tool"].startswith("prefetch") for r in payload["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
