"""The orchestrator: manifest -> access check -> plan -> transfer -> cache -> lock.

Locks are sticky, as in uv or Cargo: an entry whose manifest line is unchanged keeps its locked
commit (and file list) until `--upgrade`; so a warm re-sync makes no request at all.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from prefetch import __version__
from prefetch import settings as env_settings
from prefetch.access import AccessReport, AccessResult, check_entries, precheck, row_for_error
from prefetch.auth import Token, entry_token, find_token
from prefetch.cache import RepoCache, folders_kept_open
from prefetch.cancel import CancelToken
from prefetch.download.engine import Transfer
from prefetch.download.job import FileJob
from prefetch.errors import (
    AccessError,
    DiskSpaceError,
    FilesystemError,
    LockOutdatedError,
    UsageError,
    VerifyError,
    filesystem_error,
)
from prefetch.gcpause import paused_gc
from prefetch.hub import HubApi
from prefetch.lockfile import (
    Lock,
    LockedEntry,
    LockedFile,
    default_lock_path,
    diff_lock,
    load_lock,
    require_hashes,
    write_lock,
)
from prefetch.manifest import Entry, Manifest, load_manifest
from prefetch.net.proxies import checked_proxy_url
from prefetch.net.retry import RetryPolicy
from prefetch.net.session import Http, plain_http_token_problem
from prefetch.offline.shared import LockedBlob, cache_root, mismatches
from prefetch.offline.verify import VerifyReport
from prefetch.offline.verify import verify as verify_cache
from prefetch.plan import EntryPlan, SyncResult, disk_margin, first_use_key
from prefetch.progress import Progress, QuietProgress, human_bytes
from prefetch.resolution import endpoint_for_lock, lock_changes, locked_entry, trust_lock
from prefetch.terminal import printable


@dataclass(frozen=True)
class Settings:
    """Run settings that do not live in the manifest (command-line flags, mostly)."""

    lock_path: Path | None = None
    cache_dir: Path | None = None
    endpoint: str | None = None
    token_file: Path | None = None
    proxies: tuple[str, ...] = ()
    jobs: int = env_settings.DEFAULT_JOBS
    retry_attempts: int | None = None  # overrides the manifest's `retry:`
    retry_max_wait: float | None = None
    offline: bool = False
    segment_threshold: int = env_settings.DEFAULT_SEGMENT_THRESHOLD
    segment_size: int = env_settings.DEFAULT_SEGMENT_SIZE
    min_free: int | None = None  # bytes to keep free after the download (default: scales with the plan)
    processes: int | None = None  # that share many small files: 1 or 2 (default: `settings.processes`)


class Run:
    """Everything one command needs, built once: manifest, lock, cache, tokens, HTTP."""

    def __init__(
        self,
        manifest_path: str | Path,
        settings: Settings,
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.settings = settings
        self.progress = progress or QuietProgress()
        self.cancel = cancel or CancelToken()  # this run's: every retry wait and transfer watches it
        self.manifest: Manifest = load_manifest(manifest_path)
        self.lock_path = settings.lock_path or default_lock_path(self.manifest.path)
        self.old_lock: Lock | None = load_lock(self.lock_path) if self.lock_path.exists() else None
        self.cache_dir = env_settings.resolve_cache_dir(settings.cache_dir or self.manifest.cache_dir)
        self.offline = settings.offline or env_settings.offline()
        self.endpoint = (
            settings.endpoint
            or self.manifest.endpoint
            or env_settings.endpoint()
            or env_settings.DEFAULT_ENDPOINT
        ).rstrip("/")
        self.hub_gated: dict[str, bool | str] = {}  # entry key -> gating seen by this run's resolution
        self.entries: tuple[Entry, ...] = self.manifest.entries  # under --frozen: the lock's
        self.resolved_here = False  # some content was resolved (or hashed) against this run's endpoint
        self.must_write: list[tuple[Path, str]] = []  # folders checked writable before the first request

    # -- lazily built: an offline or warm run never touches tokens or the network -----------------------
    @functools.cached_property
    def http(self) -> Http:
        # Checked here, before the first request: a run that needs none (a warm cache) writes nothing either.
        for folder, what in self.must_write:
            _check_writable(folder, what)
        _, no_proxy = env_settings.proxies()
        sources = [
            *(("--proxy", p) for p in self.settings.proxies),
            *((f"{self.manifest.path}: proxies", p) for p in self.manifest.proxies),
            *env_settings.proxy_variables(),
        ]
        proxies = list(dict.fromkeys(checked_proxy_url(value, source) for source, value in sources))
        retry = RetryPolicy(self.retry_settings(), on_retry=self.progress.retry, cancel=self.cancel)
        return Http(
            self.endpoint,
            proxies,
            retry,
            no_proxy=no_proxy,
            pool_size=self.settings.jobs * 2 + 4,
            offline=self.offline,
        )

    def retry_settings(self) -> env_settings.RetrySettings:
        retry = self.manifest.retry
        if self.settings.retry_attempts is not None:
            retry = replace(retry, attempts=self.settings.retry_attempts)
        if self.settings.retry_max_wait is not None:
            retry = replace(retry, max_wait=self.settings.retry_max_wait)
        return retry

    @functools.cached_property
    def hub(self) -> HubApi:
        return HubApi(self.http, self.endpoint_name())

    def endpoint_name(self) -> str:
        """The endpoint as its source names it, for messages: `HF_ENDPOINT=http://...`."""
        if self.settings.endpoint:
            return f"--endpoint {self.endpoint}"
        if self.manifest.endpoint:
            return f"the manifest's endpoint {self.endpoint}"
        return f"HF_ENDPOINT={self.endpoint}" if env_settings.endpoint() else f"the Hub at {self.endpoint}"

    @functools.cached_property
    def default_token(self) -> Token | None:
        return find_token(self.settings.token_file)

    def token(self, entry: Entry) -> Token | None:
        return entry_token(entry.token_env, self.default_token)

    def close(self) -> None:
        if "http" in self.__dict__:  # built only if the run touched the network
            self.http.close()

    def repo_cache(self, entry: Entry | LockedEntry) -> RepoCache:
        return RepoCache(self.cache_dir, entry.repo, entry.type)

    # -- pre-flight: what can fail without the network fails before any request ---------------------------
    def check_token_transport(self) -> None:
        """Exit 3 before any request when a token would travel over plain http to a non-loopback Hub."""
        problem = plain_http_token_problem(self.endpoint)
        if problem is None:
            return
        for entry in self.manifest.entries:
            token = self.token(entry)
            if token is not None:
                raise AccessError(f"{entry.label}: {problem} (the {token}); {PLAIN_HTTP_FIX}")

    def write_before_requests(self, *, cache: bool, lock: bool) -> None:
        """The cache, and the lockfile's folder when the lock may change, must take new files: checked
        before the first request (an unwritable folder must not be found after the whole download)."""
        if cache:
            self.must_write.append((self.cache_dir, "the cache"))
        if lock:
            self.must_write.append(
                (self.lock_path.absolute().parent, f"the lockfile's folder (for {self.lock_path})")
            )

    def lock_may_change(self, upgrade: bool, upgrade_repos: tuple[str, ...]) -> bool:
        """Will this run (probably) rewrite the lockfile? Not when it matches the manifest and nothing is
        upgraded (so a read-only lock that stays the same does not stop a sync)."""
        return (
            self.old_lock is None
            or upgrade
            or bool(upgrade_repos)
            or bool(diff_lock(self.old_lock, self.manifest))
        )

    def check_names(self, plans: list[EntryPlan]) -> None:
        """Every file name fits the cache's filesystem (a snapshot link per path component): refused
        before the download, not after it."""
        try:
            name_max = os.pathconf(self.cache_dir, "PC_NAME_MAX")
        except (OSError, ValueError):
            name_max = 255
        for p in plans:
            for f in p.locked.files:
                if len(f.path.encode()) <= name_max:
                    continue
                long = [part for part in f.path.split("/") if len(part.encode()) > name_max]
                if long:
                    raise FilesystemError(
                        f"{p.locked.repo}: cannot store {printable(f.path[:80])}...: the name "
                        f"{printable(long[0][:40])}... is {len(long[0].encode())} bytes, the filesystem of "
                        f"{self.cache_dir} allows {name_max}"
                    )

    # -- resolution ---------------------------------------------------------------------------------------
    def resolve(
        self,
        *,
        locked: bool = False,
        frozen: bool = False,
        upgrade: bool = False,
        upgrade_repos: tuple[str, ...] = (),
    ) -> tuple[dict[str, LockedEntry], list[AccessResult]]:
        """Locked content for every entry: kept from the lock when its line is unchanged, else resolved.

        `frozen` (uv's and Cargo's `--frozen`): the lock as it is, its entries replacing the manifest's;
        `locked` (and offline runs): the lock, which must match the manifest.
        """
        if frozen:
            return self._frozen_entries(), []
        if locked or self.offline:
            return self._checked_lock("--locked" if locked else "--offline"), []
        entries = self.entries
        unknown = set(upgrade_repos) - {e.repo for e in entries}
        if unknown:
            raise UsageError(f"--upgrade-repo: not in the manifest: {', '.join(sorted(unknown))}")
        kept: dict[str, LockedEntry] = {}
        todo: list[Entry] = []
        for entry in entries:
            old = self.old_lock.entry(entry.key) if self.old_lock else None
            if (
                old is not None
                and old.entry_digest == entry.digest()
                and not upgrade
                and entry.repo not in upgrade_repos
            ):
                kept[entry.key] = old
            else:
                todo.append(entry)
        failures = [r for r in (precheck(e, self.token(e)) for e in todo) if r is not None]
        if failures:  # knowable without the network: report before any request
            raise AccessReport(failures).error()
        resolved, failures = self._resolve_remote(todo)
        return {**kept, **resolved}, failures

    def _existing_lock(self, flag: str) -> Lock:
        if self.old_lock is None:
            raise LockOutdatedError(
                f"{flag} needs a lockfile, and {self.lock_path} does not exist; run `prefetch lock`"
            )
        return self.old_lock

    def _checked_lock(self, flag: str) -> dict[str, LockedEntry]:
        """The lock's entries, after checking that the lock matches the manifest (exit 6 if not)."""
        lock = self._existing_lock(flag)
        differences = diff_lock(lock, self.manifest)
        if differences:
            raise LockOutdatedError(
                f"{flag}: {self.lock_path} is out of date with {self.manifest.path}; run `prefetch lock`:\n  - "
                + "\n  - ".join(differences)
            )
        if flag == "--locked":
            require_hashes(lock, f"--locked ({self.lock_path})")
        return {e.key: e for e in lock.entries}

    def _frozen_entries(self) -> dict[str, LockedEntry]:
        """The lock's entries as the run's entries; the manifest only lends per-entry token names."""
        lock = self._existing_lock("--frozen")
        require_hashes(lock, f"--frozen ({self.lock_path})")
        by_key = {e.key: e for e in self.manifest.entries}
        self.entries = tuple(
            replace(
                by_key.get(e.key) or Entry(e.repo, e.type, e.revision),
                index=i,
                include=e.include,
                exclude=e.exclude,
            )
            for i, e in enumerate(lock.entries)
        )
        return {e.key: e for e in lock.entries}

    def _resolve_remote(self, entries: list[Entry]) -> tuple[dict[str, LockedEntry], list[AccessResult]]:
        """repo_info + tree listing per entry, concurrently; access problems become report rows."""
        resolved: dict[str, LockedEntry] = {}
        failures: list[AccessResult] = []
        hub = self.hub

        def one(entry: Entry) -> LockedEntry:
            token = self.token(entry)
            info = hub.repo_info(entry.repo, entry.type, entry.revision, token)
            self.hub_gated[entry.key] = info.gated
            files = hub.list_files(entry.repo, entry.type, info.commit, token)
            old = self.old_lock.entry(entry.key) if self.old_lock else None
            return trust_lock(locked_entry(entry, info.commit, files), old)

        self.resolved_here = self.resolved_here or bool(entries)
        with cf.ThreadPoolExecutor(max_workers=max(1, min(8, len(entries)))) as pool:
            futures = {entry.key: (entry, pool.submit(one, entry)) for entry in entries}
            for key, (entry, future) in futures.items():
                try:
                    resolved[key] = future.result()
                except Exception as exc:
                    failures.append(row_for_error(hub, entry, self.token(entry), exc))
        return resolved, failures

    def new_lock(self, resolved: dict[str, LockedEntry]) -> Lock:
        cache_dir = self.manifest.cache_dir_text
        if cache_dir and self.manifest.cache_dir and not os.path.isabs(os.path.expanduser(cache_dir)):
            # Relative in the manifest: keep it relative, to the lock's folder, so the lock travels.
            cache_dir = os.path.relpath(self.manifest.cache_dir, self.lock_path.absolute().parent)
        return Lock(
            manifest_digest=self.manifest.digest(),
            tool_version=__version__,
            entries=tuple(resolved[e.key] for e in self.entries),
            cache_dir=cache_dir,
            endpoint=self.lock_endpoint(),
        )

    def lock_endpoint(self) -> str | None:
        """The endpoint the lock's content was resolved against: this run's when it resolved or hashed
        anything, else the old lock's (a warm run through a mirror keeps a lock made against the Hub, and
        a lock older than this field is not rewritten just to add it: it may be read-only)."""
        if self.old_lock is not None and not self.resolved_here:
            return self.old_lock.endpoint
        return endpoint_for_lock(self.endpoint)

    def save_lock(self, lock: Lock) -> None:
        """Write the lockfile last, atomically, and only when its content changed (it may be read-only)."""
        if self.old_lock != lock:
            write_lock(lock, self.lock_path)

    def plan(self, resolved: dict[str, LockedEntry], *, verify: bool = False) -> list[EntryPlan]:
        """What each resolved entry still lacks in the cache (entries that failed to resolve are left out).

        A cached blob of the right size is trusted (it was verified when it was installed); with
        `verify` it is hashed first, and one that does not match is fetched again (`EntryPlan.corrupt`).
        """
        plans = []
        for entry in self.entries:
            locked = resolved.get(entry.key)
            if locked is None:
                continue
            cache = self.repo_cache(locked)
            partials = cache.sweep_partials()
            missing = []
            for f in locked.files:
                if not cache.has_blob(f.etag, f.size):
                    missing.append(f)
                elif f.etag in partials:
                    cache.discard_stale_partial(f.etag, f.size)  # left by a run that another one beat
            plans.append(EntryPlan(entry, locked, missing))
        if verify:
            self._find_corrupt(plans)
        return plans

    def _find_corrupt(self, plans: list[EntryPlan]) -> None:
        """Hash every cached blob of the plans (each once, in parallel); move those that fail to `missing`."""
        blobs: dict[tuple[str, str], LockedBlob] = {}
        for p in plans:
            cache = self.repo_cache(p.locked)
            absent = {f.etag for f in p.missing}
            for f in p.locked.files:
                if f.etag not in absent:
                    blobs.setdefault((cache.folder.name, f.etag), LockedBlob(cache, f.etag, f.size, f.is_lfs))
        keys = list(blobs)
        bad = {keys[i] for i in mismatches(list(blobs.values()))}
        for p in plans:
            folder = self.repo_cache(p.locked).folder.name
            p.corrupt = [f for f in p.locked.files if (folder, f.etag) in bad]
            p.missing += p.corrupt
            for f in p.corrupt:
                message = f"{f.path}: the cached blob {f.etag} does not match its hash; fetching it again"
                self.progress.message(f"warning: {p.entry.label}: {message}")
                self.progress.event("warning", repo=p.entry.repo, revision=p.entry.revision, message=message)

    def file_jobs(self, plans: list[EntryPlan]) -> tuple[list[FileJob], list[FileJob]]:
        """(first, later) jobs: one job per blob; a blob a second repo shares waits and is hard-linked."""
        first: dict[str, FileJob] = {}
        seen: dict[str, set[str]] = {}  # repo folder -> its blobs with a job (no tuple per file)
        later: list[FileJob] = []
        for p in plans:
            cache = self.repo_cache(p.locked)
            corrupt = {f.etag for f in p.corrupt}
            resolve_url = self.hub.file_url(p.locked.repo, p.locked.type, p.locked.commit, "")
            in_folder = seen.setdefault(cache.folder.name, set())
            for f in p.missing:
                etag = f.etag or first_use_key(p.locked.commit, f"{p.locked.repo}:{printable(f.path)}")
                if etag in in_folder:
                    continue
                in_folder.add(etag)
                job = FileJob(
                    cache=cache,
                    resolve_url=resolve_url,
                    repo=p.locked.repo,
                    path=f.path,
                    token=self.token(p.entry),
                    etag=etag,
                    size=f.size,
                    lfs=f.is_lfs,
                    published=bool(f.etag),
                    replace=f.etag in corrupt,
                )
                if etag in first:  # (a file without a published hash has a key of its own: never shared)
                    later.append(job)
                else:
                    first[etag] = job
        return list(first.values()), later

    def materialize(self, plans: list[EntryPlan]) -> None:
        """Snapshot links, then refs, for every entry (after its blobs are in place)."""
        missing = []
        for p in plans:
            cache = self.repo_cache(p.locked)
            present: list[LockedFile] = []
            absent: list[LockedFile] = []
            fetched = {f.path for f in p.missing}  # the others were found in place by `plan`, just before
            for f in p.locked.files:
                (present if f.path not in fetched or cache.has_blob(f.etag, f.size) else absent).append(f)
            cache.link_all(p.locked.commit, [(f.path, f.etag) for f in present])
            missing += [
                f"{p.locked.repo}@{p.locked.commit[:12]}: {printable(f.path)} ({human_bytes(f.size)})"
                for f in absent
            ]
            if not absent:
                cache.write_ref(p.locked.revision, p.locked.commit)
        if missing:
            raise VerifyError(
                f"{len(missing)} locked file(s) are not in the cache {self.cache_dir}:\n  - "
                + "\n  - ".join(missing),
                missing,
            )

    def check_space(self, jobs: list[FileJob]) -> None:
        with folders_kept_open(j.cache for j in jobs):
            needed = sum(j.size - _bytes_on_disk(j) for j in jobs)
        if needed <= 0:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.cache_dir).free
        margin = self.settings.min_free if self.settings.min_free is not None else disk_margin(needed)
        if needed + margin > free:
            raise DiskSpaceError(
                f"not enough disk space in {self.cache_dir}: {human_bytes(needed)} to fetch "
                f"(+{human_bytes(margin)} kept free), {human_bytes(free)} free. Free some space "
                "(`prefetch prune`), choose another --cache-dir, or lower the margin with --min-free."
            )

    def record_learned(self, plans: list[EntryPlan], learned: dict[tuple[str, str], str]) -> None:
        """Put the sha256s the transfer learned from the bytes into the plans' locked files: a file the
        endpoint published no hash for (said per file), or an LFS file known only by its pointer's id."""
        if not learned:
            return
        self.resolved_here = True
        for p in plans:
            cache = self.repo_cache(p.locked)
            files = []
            for f in p.locked.files:
                key = f.etag or first_use_key(p.locked.commit, f"{p.locked.repo}:{f.path}")
                sha256 = learned.get((cache.folder.name, key))
                if sha256 and not f.etag:
                    message = (
                        f"the endpoint published no hash for {p.locked.repo}:{f.path}; recorded sha256 "
                        f"{sha256} on first use"
                    )
                    self.progress.message(message)
                    self.progress.event("first_use_hash", repo=p.locked.repo, path=f.path, sha256=sha256)
                files.append(replace(f, sha256=sha256, git_sha1=None) if sha256 else f)
            p.locked = replace(p.locked, files=tuple(files))


PLAIN_HTTP_FIX = (
    "use an https:// endpoint (only a loopback Hub, localhost, 127.0.0.0/8 or ::1, "
    "may take a token over plain http)"
)


def _check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and an (unnamed, never linked) file in it, or raise a FilesystemError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise filesystem_error(e, f"{what} {folder}") or e from None


def _bytes_on_disk(job: FileJob) -> int:
    """Bytes of a blob already in its partial file (they need no new space; a small file has none)."""
    if job.small:
        return 0
    return sum(b - a for a, b in job.cache.read_partial_state(job.etag, job.size))


# ---------------------------------------------------------------------------------------------- public API
@paused_gc()
def sync(
    manifest_path: str | Path,
    *,
    settings: Settings | None = None,
    locked: bool = False,
    frozen: bool = False,
    dry_run: bool = False,
    upgrade: bool = False,
    upgrade_repos: tuple[str, ...] = (),
    verify: bool = False,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> SyncResult:
    """Bring every manifest entry into the cache, verified, and write the lockfile last.

    `locked`: fail (exit 6) unless the lock exists and matches the manifest; `frozen`: use the lock as
    it is. Neither writes the lockfile. `verify`: hash the cached blobs first and fetch again those that
    do not match (see `Run.plan`). Cancelling `cancel` (from another thread, or a signal handler) stops
    the run with `Cancelled`; its partial downloads are kept for the next run to resume.
    """
    run = Run(manifest_path, settings or Settings(), progress, cancel)
    try:
        if not run.offline:
            run.check_token_transport()
        if not dry_run:
            lock_may_change = (
                not (locked or frozen) and not run.offline and run.lock_may_change(upgrade, upgrade_repos)
            )
            run.write_before_requests(cache=True, lock=lock_may_change)
        resolved, failures = run.resolve(
            locked=locked, frozen=frozen, upgrade=upgrade, upgrade_repos=upgrade_repos
        )
        plans = run.plan(resolved, verify=verify)
        if not dry_run:
            run.check_names(plans)
        if run.offline:
            _refuse_corrupt_offline(plans)
            run.materialize(plans)
            return SyncResult(plans, run.old_lock or run.new_lock(resolved), run.lock_path, run.cache_dir)
        needing = [p for p in plans if p.missing]
        report = _check_access(run, needing, failures)
        lock = run.old_lock if frozen and run.old_lock else run.new_lock(resolved)
        result = SyncResult(
            plans, lock, run.lock_path, run.cache_dir, report=report, changes=lock_changes(run.old_lock, lock)
        )
        first, later = run.file_jobs(plans)
        _announce(run, plans, first + later, dry_run)
        if dry_run:
            return result
        run.check_space(first)  # `later` are the same blobs, hard-linked
        transfer = Transfer(
            run.http,
            jobs=run.settings.jobs,
            segment_threshold=run.settings.segment_threshold,
            segment_size=run.settings.segment_size,
            reporter=run.progress,
            cancel=run.cancel,
            processes=run.settings.processes,
        )
        transfer.run(first)
        if later:
            transfer.run(later)
        result.stats = transfer.stats
        run.record_learned(plans, transfer.stats.learned)
        result.lock = lock = run.new_lock({**resolved, **{p.entry.key: p.locked for p in plans}})
        result.changes = lock_changes(run.old_lock, lock)
        run.materialize(plans)
        if not (locked or frozen):
            run.save_lock(lock)
        return result
    finally:
        run.close()


def _refuse_corrupt_offline(plans: list[EntryPlan]) -> None:
    """An offline run cannot repair what `--verify` found: say so rather than link bad bytes."""
    corrupt = [f"{p.entry.label}: {f.path} (blob {f.etag})" for p in plans for f in p.corrupt]
    if corrupt:
        raise VerifyError(
            f"{len(corrupt)} cached file(s) do not match their hash, and an offline run cannot fetch them "
            "again; run `prefetch sync --verify` with the network:\n  - " + "\n  - ".join(corrupt),
            corrupt,
        )


def _check_access(run: Run, needing: list[EntryPlan], failures: list[AccessResult]) -> AccessReport:
    """Failed resolutions plus an access check of every entry that has bytes to fetch; raise if any fails."""
    rows = list(failures)
    if needing:
        checked = check_entries(
            run.hub,
            [(p.entry, run.token(p.entry)) for p in needing],
            commits={p.entry.key: p.locked.commit for p in needing},
            hub_gated=run.hub_gated,
            probes={p.entry.key: p.missing[0].path for p in needing},
        )
        rows += checked.results
    report = AccessReport(rows)
    for row in rows:
        for warning in row.warnings:
            run.progress.message(f"warning: {row.entry.label}: {warning}")
            run.progress.event("warning", repo=row.entry.repo, revision=row.entry.revision, message=warning)
    if not report.ok:
        raise report.error()
    return report


def _announce(run: Run, plans: list[EntryPlan], jobs: list[FileJob], dry_run: bool) -> None:
    total = sum(j.size for j in jobs)
    run.progress.event(
        "plan",
        entries=[p.to_json() for p in plans],
        fetch_files=len(jobs),
        fetch_bytes=total,
        dry_run=dry_run,
    )
    if dry_run:  # the caller prints the whole plan (`SyncResult.render_plan`); no bar for what won't move
        return
    for p in plans:
        run.progress.message(p.header())
    run.progress.start(total, len(jobs))


@paused_gc()
def lock(
    manifest_path: str | Path,
    *,
    settings: Settings | None = None,
    upgrade: bool = False,
    upgrade_repos: tuple[str, ...] = (),
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> SyncResult:
    """Resolve and write the lockfile without downloading (sticky unless upgraded)."""
    run = Run(manifest_path, settings or Settings(), progress, cancel)
    try:
        if run.offline:
            raise UsageError("`prefetch lock` needs the network (HF_HUB_OFFLINE / --offline is set)")
        run.check_token_transport()
        run.write_before_requests(cache=False, lock=run.lock_may_change(upgrade, upgrade_repos))
        resolved, failures = run.resolve(upgrade=upgrade, upgrade_repos=upgrade_repos)
        if failures:
            raise AccessReport(failures).error()
        new = run.new_lock(resolved)
        run.save_lock(new)
        return SyncResult([], new, run.lock_path, run.cache_dir, changes=lock_changes(run.old_lock, new))
    finally:
        run.close()


def check(
    manifest_path: str | Path,
    *,
    settings: Settings | None = None,
    cancel: CancelToken | None = None,
    keys: Collection[str] | None = None,
) -> AccessReport:
    """The access check alone, for every entry (or those whose `Entry.key` is in `keys`): token, gating,
    visibility, revision."""
    run = Run(manifest_path, settings or Settings(), cancel=cancel)
    try:
        if run.offline:
            raise UsageError("`prefetch check` needs the network (HF_HUB_OFFLINE / --offline is set)")
        run.check_token_transport()
        entries = [e for e in run.manifest.entries if keys is None or e.key in keys]
        return check_entries(run.hub, [(e, run.token(e)) for e in entries])
    finally:
        run.close()


def repair(
    lock_path: Path,
    *,
    manifest_path: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> VerifyReport:
    """`verify --repair`: verify the cache against the lock; if anything is missing or corrupt, fetch it
    again as `sync --frozen --verify` would, then verify again.

    Re-fetching needs what a sync needs: the endpoint, tokens and proxies come from the manifest
    (default: the lockfile's name with `.yaml`) and the environment, as for `sync`.
    """
    try:
        return verify_cache(lock_path, cache_dir=cache_dir)
    except VerifyError as e:
        problems = e.problems
    manifest = manifest_path or lock_path.with_suffix(".yaml")
    if not manifest.exists():
        raise UsageError(
            f"{len(problems)} problem(s) in the cache; --repair fetches again from the Hub with the manifest's "
            f"settings, and {manifest} does not exist: name the manifest with --manifest"
        )
    root = cache_root(load_lock(lock_path), lock_path, cache_dir)
    progress = progress or QuietProgress()
    progress.message(f"repairing {len(problems)} problem(s) in {root} from the Hub")
    sync(
        manifest,
        settings=Settings(lock_path=lock_path, cache_dir=root),
        frozen=True,
        verify=True,
        progress=progress,
        cancel=cancel,
    )
    return verify_cache(lock_path, cache_dir=root)
