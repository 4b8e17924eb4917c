"""Stage 2, plan: the resolved entries + the cache -> what the sync will do, before it does it.

Per entry, its locked content and the blobs the cache still lacks (`EntryPlan`, shown by `plan`,
`sync --dry-run` and `--json`); the download jobs, one per distinct blob (`Plan.jobs`); and the checks
that can fail before any byte moves: the space the bytes need on the cache's disk, names the cache's
filesystem can hold.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefetch import settings
from prefetch.access import AccessReport
from prefetch.cache import RepoCache, folders_kept_open
from prefetch.download.job import SMALL_FILE, FileJob, TransferStats
from prefetch.errors import DiskSpaceError, FilesystemError
from prefetch.hfhub import resolve_url
from prefetch.lockfile import Lock, LockedEntry, LockedFile
from prefetch.manifest import Entry
from prefetch.offline.shared import LockedBlob, mismatches
from prefetch.progress import human_bytes, human_duration
from prefetch.terminal import printable

if TYPE_CHECKING:
    from prefetch.resolve import Resolution
    from prefetch.run import RunContext

MiB = 1024 * 1024
DISK_MARGIN = 64 * MiB  # at most this much is kept free after the planned bytes (unless --min-free)


@dataclass
class EntryPlan:
    """One entry, resolved: its locked content and the blobs the cache still lacks."""

    entry: Entry
    locked: LockedEntry
    missing: list[LockedFile] = field(default_factory=list)
    corrupt: list[LockedFile] = field(default_factory=list)  # cached but failed their hash (in `missing` too)
    on_disk: int = 0  # bytes of `missing` files already in partial downloads: resumed, not fetched again

    def file_rows(self) -> list[dict[str, Any]]:
        """Every locked file: path, size, and whether the cache already holds it."""
        missing = {f.path for f in self.missing}
        return [{"path": f.path, "size": f.size, "cached": f.path not in missing} for f in self.locked.files]

    def header(self) -> str:
        """`repos[0] (org/x@main) -> 0123456789ab: 3 files (1.2 MiB), 1 cached, 2 to fetch (1.1 MiB)`, and
        when partial downloads will be resumed, `(1.1 MiB, 512.0 KiB of it already on disk)`."""
        files, missing = self.locked.files, self.missing
        size, missing_size = (
            human_bytes(sum(f.size for f in files)),
            human_bytes(sum(f.size for f in missing)),
        )
        resumed = f", {human_bytes(self.on_disk)} of it already on disk" if self.on_disk else ""
        return (
            f"{self.entry.label} -> {self.locked.commit[:12]}: {len(files)} files ({size}), "
            f"{len(files) - len(missing)} cached, {len(missing)} to fetch ({missing_size}{resumed})"
        )

    def render(self, width: int | None = None) -> list[str]:
        """The header line, then one line per file (`fetch`/`cached`, size, path), fitted to `width`."""
        lines = [fit(self.header(), width)]
        for row in self.file_rows():
            prefix = f"  {'cached' if row['cached'] else 'fetch':6} {human_bytes(row['size']):>10}  "
            lines.append(
                prefix + fit(row["path"], None if width is None else width - len(prefix), middle=True)
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        files = self.locked.files
        return {
            "file_list": self.file_rows(),
            "repo": self.entry.repo,
            "type": self.entry.type,
            "revision": self.entry.revision,
            "commit": self.locked.commit,
            "files": len(files),
            "bytes": sum(f.size for f in files),
            "cached_files": len(files) - len(self.missing),
            "missing_files": len(self.missing),
            "missing_bytes": sum(f.size for f in self.missing),
            "on_disk_bytes": self.on_disk,
            "corrupt_files": len(self.corrupt),
        }


def fit(text: str, width: int | None, *, middle: bool = False) -> str:
    """`text` cut to `width` characters with an ellipsis (in the middle for paths, whose end matters)."""
    if width is None or len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    if middle:
        head = (width - 1) // 2
        return text[:head] + "…" + text[len(text) - (width - 1 - head) :]
    return text[: width - 1] + "…"


def disk_margin(needed: int) -> int:
    """Space kept free after a download of `needed` bytes: it scales with the plan (1 MiB + 1/16),
    up to DISK_MARGIN, so a small sync fits a small volume and a big one leaves room to breathe."""
    return min(DISK_MARGIN, MiB + needed // 16)


def first_use_key(commit: str, label: str) -> str:
    """The stand-in blob key (partial file name) of a file without a published hash, until it is hashed."""
    return "first-use-" + hashlib.sha256(f"{commit}:{label}".encode()).hexdigest()[:40]


@dataclass
class Plan:
    """Every resolved entry's plan, and the download jobs: `first` (one per distinct blob), then `later`
    (the same blobs for another repo's folder: hard-linked once the first are in)."""

    entries: list[EntryPlan]
    first: list[FileJob] = field(default_factory=list)
    later: list[FileJob] = field(default_factory=list)

    @property
    def jobs(self) -> list[FileJob]:
        return self.first + self.later


def make_plan(ctx: RunContext, resolution: Resolution, *, verify: bool = False, hub: bool = True) -> Plan:
    """What each resolved entry still lacks in the cache (entries that failed to resolve are left out),
    and the jobs that fetch it.

    A cached blob of the right size is trusted (it was verified when it was installed); with `verify` it
    is hashed first, and one that does not match is fetched again (`EntryPlan.corrupt`). `hub` False: the
    jobs' bytes come from elsewhere (an OCI source routes them), so no Hub token is looked up for them.
    """
    entries = []
    for entry in resolution.entries:
        locked = resolution.locked.get(entry.key)
        if locked is None:
            continue
        cache = ctx.repo_cache(locked.repo, locked.type)
        partials = cache.partials.sweep_partials()
        missing = []
        on_disk = 0
        for f in locked.files:
            if not cache.has_blob(f.etag, f.size):
                missing.append(f)
                if f.etag in partials and f.size >= SMALL_FILE:  # (a small file has no partial to resume)
                    on_disk += _bytes_in_partial(cache, f.etag, f.size)
            elif f.etag in partials:
                cache.partials.discard_stale_partial(f.etag, f.size)  # left by a run that another one beat
        entries.append(EntryPlan(entry, locked, missing, on_disk=on_disk))
    if verify:
        _find_corrupt(ctx, entries)
    plan = Plan(entries)
    plan.first, plan.later = _file_jobs(ctx, entries, hub)
    return plan


def _find_corrupt(ctx: RunContext, plans: list[EntryPlan]) -> None:
    """Hash every cached blob of the plans (each once, in parallel); move those that fail to `missing`."""
    blobs: dict[tuple[str, str], LockedBlob] = {}
    for p in plans:
        cache = ctx.repo_cache(p.locked.repo, p.locked.type)
        absent = {f.etag for f in p.missing}
        for f in p.locked.files:
            if f.etag not in absent:
                blobs.setdefault((cache.folder.name, f.etag), LockedBlob(cache, f.etag, f.size, f.is_lfs))
    keys = list(blobs)
    bad = {keys[i] for i in mismatches(list(blobs.values()))}
    for p in plans:
        folder = ctx.repo_cache(p.locked.repo, p.locked.type).folder.name
        p.corrupt = [f for f in p.locked.files if (folder, f.etag) in bad]
        p.missing += p.corrupt
        for f in p.corrupt:
            message = f"{f.path}: the cached blob {f.etag} does not match its hash; fetching it again"
            ctx.progress.message(f"warning: {p.entry.label}: {message}")
            ctx.progress.event("warning", repo=p.entry.repo, revision=p.entry.revision, message=message)


def _file_jobs(ctx: RunContext, plans: list[EntryPlan], hub: bool) -> tuple[list[FileJob], list[FileJob]]:
    """(first, later) jobs: one job per blob; a blob a second repo shares waits and is hard-linked."""
    first: dict[str, FileJob] = {}
    seen: dict[str, set[str]] = {}  # repo folder -> its blobs with a job (no tuple per file)
    later: list[FileJob] = []
    xet = not settings.xet_disabled()
    for p in plans:
        if not p.missing:
            continue
        locked = p.locked
        cache = ctx.repo_cache(locked.repo, locked.type)
        corrupt = {f.etag for f in p.corrupt}
        files_url = resolve_url(ctx.endpoint, locked.repo, locked.type, locked.commit)
        token = ctx.token(p.entry) if hub else None
        in_folder = seen.setdefault(cache.folder.name, set())
        for f in p.missing:
            etag = f.etag or first_use_key(locked.commit, f"{locked.repo}:{printable(f.path)}")
            if etag in in_folder:
                continue
            in_folder.add(etag)
            job = FileJob(
                cache=cache,
                resolve_url=files_url,
                repo=locked.repo,
                path=f.path,
                token=token,
                etag=etag,
                size=f.size,
                lfs=f.is_lfs,
                published=bool(f.etag),
                replace=f.etag in corrupt,
                xet_hash=f.xet_hash if xet else None,
            )
            if etag in first:  # (a file without a published hash has a key of its own: never shared)
                later.append(job)
            else:
                first[etag] = job
    return list(first.values()), later


# -------------------------------------------------------------------------- what can fail before a byte
def check_names(plan: Plan, cache_dir: Path) -> None:
    """Every file name fits the cache's filesystem: each path component (a snapshot link per component)
    and the whole path of its snapshot link, which the system must be able to name. Refused before the
    download (exit 9), not found by `verify` after it."""
    name_max, path_max = _limit(cache_dir, "PC_NAME_MAX", 255), _limit(cache_dir, "PC_PATH_MAX", 4096)
    for p in plan.entries:
        snapshot = len(os.fsencode(os.path.abspath(_snapshot_folder(cache_dir, p.locked)))) + 1
        for f in p.locked.files:
            size = len(f.path.encode())
            if size <= name_max and snapshot + size < path_max:
                continue
            long = [part for part in f.path.split("/") if len(part.encode()) > name_max]
            if long:
                raise FilesystemError(
                    f"{p.locked.repo}: cannot store {printable(f.path[:80])}...: the name "
                    f"{printable(long[0][:40])}... is {len(long[0].encode())} bytes, the filesystem of "
                    f"{cache_dir} allows {name_max}"
                )
            if snapshot + size >= path_max:
                raise FilesystemError(
                    f"{p.locked.repo}: cannot store {printable(f.path[:80])}...: its path in the cache would be "
                    f"{snapshot + size} bytes, the system allows {path_max - 1} (a shorter --cache-dir helps)"
                )


def _snapshot_folder(cache_dir: Path, locked: LockedEntry) -> Path:
    """The snapshot folder of `locked` in `cache_dir` (its files' links are made under it)."""
    return RepoCache(cache_dir, locked.repo, locked.type).snapshot_dir(locked.commit)


def _limit(folder: Path, name: str, default: int) -> int:
    """A limit of the filesystem of `folder` (or of the nearest folder above it that exists)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def check_space(plan: Plan, cache_dir: Path, min_free: int | None) -> None:
    """The bytes still to fetch (less what partial files hold) fit on the cache's disk, with a margin
    kept free (`min_free`, else `disk_margin`); `later` jobs are hard links and need none."""
    with folders_kept_open(j.cache for j in plan.first):
        needed = sum(j.size - _bytes_on_disk(j) for j in plan.first)
    if needed <= 0:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    margin = min_free if min_free is not None else disk_margin(needed)
    if needed + margin > free:
        raise DiskSpaceError(
            f"not enough disk space in {cache_dir}: {human_bytes(needed)} to fetch "
            f"(+{human_bytes(margin)} kept free), {human_bytes(free)} free. Free some space "
            "(`prefetch prune`), choose another --cache-dir, or lower the margin with --min-free."
        )


def _bytes_on_disk(job: FileJob) -> int:
    """Bytes of a blob already in its partial file (they need no new space; a small file has none)."""
    return 0 if job.small else _bytes_in_partial(job.cache, job.etag, job.size)


def _bytes_in_partial(cache: RepoCache, etag: str, size: int) -> int:
    """Bytes of a blob already in its partial file, as its resume state records them."""
    return sum(b - a for a, b in cache.partials.read_partial_state(etag, size))


# -------------------------------------------------------------------------------- what the quota means
@dataclass(frozen=True)
class RequestForecast:
    """The requests a sync of this plan makes to the endpoint, per rate-limit bucket: those resolving
    and checking access made (counted as they were sent), and one resolver call per file to fetch
    (none for a cached file; the bytes behind a redirect come from the CDN, which is not counted), but
    for Xet-backed files one API call per repo revision (their Xet token; their bytes come from the Xet
    storage, which is not counted either). `policies`: what the Hub stated of each bucket (quota, window
    seconds), when it did."""

    requests: dict[str, int]
    policies: dict[str, tuple[int, float]]
    token: bool  # the run sends a token (anonymous limits are per IP address, and lower)

    @classmethod
    def of(
        cls, plan: Plan, made: dict[str, int], policies: dict[str, tuple[int, float]], token: bool
    ) -> RequestForecast:
        requests = {"api": 0, "resolvers": 0, "pages": 0, **made}
        xet = [job for job in plan.jobs if job.xet_hash]
        requests["resolvers"] += len(plan.jobs) - len(xet)
        requests["api"] += len({(job.cache.folder.name, job.resolve_url) for job in xet})
        return cls(requests, policies, token)

    def floors(self) -> dict[str, float]:
        """Per bucket with a known policy: the least time its requests take at the quota (the last
        window's requests go at its start)."""
        return {
            bucket: (math.ceil(self.requests.get(bucket, 0) / quota) - 1) * window
            for bucket, (quota, window) in self.policies.items()
            if self.requests.get(bucket, 0) > quota
        }

    def lines(self) -> list[str]:
        """`requests: api 23, resolvers 1,500` and, where a quota binds, how long it makes the sync."""
        counted = ", ".join(f"{bucket} {n:,}" for bucket, n in self.requests.items() if n)
        lines = [f"requests to the Hub: {counted or 'none'} (the CDN is not counted)"]
        for bucket, seconds in self.floors().items():
            quota, window = self.policies[bucket]
            lines.append(
                f"the Hub's {bucket} quota ({quota:,} per {window:g} s) makes this sync take at least "
                f"{human_duration(seconds)}; {QUOTA_ADVICE if self.token else ANONYMOUS_ADVICE}"
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "quotas": {b: {"quota": q, "window_seconds": w} for b, (q, w) in self.policies.items()},
            "floor_seconds": {b: round(s, 1) for b, s in self.floors().items()},
        }


ANONYMOUS_ADVICE = (
    "use a token: anonymous limits are per IP address (every machine behind it shares them) and lower"
)
QUOTA_ADVICE = (
    "for a fleet, sync through an in-cluster mirror (docs/fleet.md) so the Hub sees one node's requests; "
    "PRO, Team and Enterprise accounts have higher quotas"
)


@dataclass
class SyncResult:
    """What a sync (or a plan, or `lock`) did: its plan, the lock it wrote (or would), what changed."""

    plans: list[EntryPlan]
    lock: Lock
    lock_path: Path
    cache_dir: Path
    stats: TransferStats = field(default_factory=TransferStats)
    changes: list[str] = field(default_factory=list)
    report: AccessReport | None = None
    forecast: RequestForecast | None = None  # the requests per rate-limit bucket (a plan's)
    lock_written: bool = False  # the lockfile was (re)written: its content changed
    source: str | None = None  # the OCI artifact the files came from, instead of the Hub

    def summary(self) -> dict[str, Any]:
        return {
            "entries": len(self.plans),
            "files": sum(len(p.locked.files) for p in self.plans),
            "fetched_files": self.stats.files_fetched,
            "linked_files": self.stats.files_linked,
            "fetched_bytes": self.stats.bytes_fetched,
            "lockfile": str(self.lock_path),
            "cache_dir": str(self.cache_dir),
            "changes": self.changes,
            **(self.forecast.to_json() if self.forecast else {}),
            **({"source": self.source} if self.source else {}),
        }

    def render_plan(self, width: int | None = None) -> str:
        """Every entry and its files, for `plan` and `sync --dry-run` (lines fitted to `width` when given)."""
        lines = [line for p in self.plans for line in p.render(width)]
        if not lines:
            return "nothing to do: the manifest lists no entry"
        return "\n".join([*lines, *(self.forecast.lines() if self.forecast else [])])


def announce(ctx: RunContext, plan: Plan, forecast: RequestForecast | None, dry_run: bool) -> None:
    """Tell the progress display what the sync will do: the `plan` event, each entry's header line, the
    quota's floors, and the bar's totals (a dry run: the event only; its caller prints the plan).
    `forecast`: the Hub's requests (None: the files come from an OCI source)."""
    jobs = plan.jobs
    total = sum(j.size for j in jobs)
    entries = [p.to_json() for p in plan.entries]
    on_disk = sum(p.on_disk for p in plan.entries)
    fields = {"fetch_files": len(jobs), "fetch_bytes": total, "on_disk_bytes": on_disk, "dry_run": dry_run}
    ctx.progress.event("plan", entries=entries, **fields, **(forecast.to_json() if forecast else {}))
    if dry_run:  # the caller prints the whole plan (`SyncResult.render_plan`); no bar for what won't move
        return
    for p in plan.entries:
        ctx.progress.message(p.header())
    if forecast is not None and forecast.floors():
        for line in forecast.lines():
            ctx.progress.message(line)
    ctx.progress.start(total, len(jobs))
