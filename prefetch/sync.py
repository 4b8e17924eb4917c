"""The orchestrator: manifest -> access check -> plan -> transfer -> cache -> lock.

Locks are sticky, as in uv or Cargo: an entry whose manifest line is unchanged keeps its locked
commit (and file list) until `--upgrade`; so a warm re-sync makes no request at all.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prefetch import __version__
from prefetch import settings as env_settings
from prefetch.access import AccessReport, AccessResult, check_entries, precheck, row_for_error
from prefetch.auth import Token, entry_token, find_token
from prefetch.cache import RepoCache
from prefetch.cancel import CancelToken
from prefetch.download.engine import Transfer
from prefetch.download.job import FileJob, TransferStats
from prefetch.errors import DiskSpaceError, LockOutdatedError, UsageError, VerifyError
from prefetch.hub import HubApi, RemoteFile
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
from prefetch.manifest import Entry, Manifest, RetrySettings, load_manifest
from prefetch.net.retry import RetryPolicy
from prefetch.net.session import Http
from prefetch.paths import select_paths
from prefetch.progress import Progress, QuietProgress, human_bytes

DISK_MARGIN = 64 * 1024 * 1024  # keep this much free after the planned bytes


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


@dataclass
class EntryPlan:
    """One entry, resolved: its locked content and the blobs the cache still lacks."""

    entry: Entry
    locked: LockedEntry
    missing: list[LockedFile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        files = self.locked.files
        return {
            "repo": self.entry.repo,
            "type": self.entry.type,
            "revision": self.entry.revision,
            "commit": self.locked.commit,
            "files": len(files),
            "bytes": sum(f.size for f in files),
            "cached_files": len(files) - len(self.missing),
            "missing_files": len(self.missing),
            "missing_bytes": sum(f.size for f in self.missing),
        }


@dataclass
class SyncResult:
    plans: list[EntryPlan]
    lock: Lock
    lock_path: Path
    cache_dir: Path
    stats: TransferStats = field(default_factory=TransferStats)
    changes: list[str] = field(default_factory=list)
    report: AccessReport | None = None

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
        }


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
        self.resolved_here = False  # some content was resolved (or hashed) against this run's endpoint

    # -- lazily built: an offline or warm run never touches tokens or the network -----------------------
    @functools.cached_property
    def http(self) -> Http:
        env_proxies, no_proxy = env_settings.proxies()
        proxies = list(dict.fromkeys([*self.settings.proxies, *self.manifest.proxies, *env_proxies]))
        retry = RetryPolicy(self.retry_settings(), on_retry=self.progress.retry, cancel=self.cancel)
        return Http(
            self.endpoint,
            proxies,
            retry,
            no_proxy=no_proxy,
            pool_size=self.settings.jobs * 2 + 4,
            offline=self.offline,
        )

    def retry_settings(self) -> RetrySettings:
        retry = self.manifest.retry
        if self.settings.retry_attempts is not None:
            retry = replace(retry, attempts=self.settings.retry_attempts)
        if self.settings.retry_max_wait is not None:
            retry = replace(retry, max_wait=self.settings.retry_max_wait)
        return retry

    @functools.cached_property
    def hub(self) -> HubApi:
        return HubApi(self.http)

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

    # -- resolution ---------------------------------------------------------------------------------------
    def resolve(
        self, *, frozen: bool = False, upgrade: bool = False, upgrade_repos: tuple[str, ...] = ()
    ) -> tuple[dict[str, LockedEntry], list[AccessResult]]:
        """Locked content for every entry: kept from the lock when its line is unchanged, else resolved."""
        entries = self.manifest.entries
        if frozen or self.offline:
            return self._from_lock(frozen), []
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

    def _from_lock(self, frozen: bool) -> dict[str, LockedEntry]:
        flag = "--frozen" if frozen else "--offline"
        if self.old_lock is None:
            raise LockOutdatedError(
                f"{flag} needs a lockfile, and {self.lock_path} does not exist; run `prefetch lock`"
            )
        differences = diff_lock(self.old_lock, self.manifest)
        if differences:
            raise LockOutdatedError(
                f"{flag}: {self.lock_path} is out of date with {self.manifest.path}; run `prefetch lock`:\n  - "
                + "\n  - ".join(differences)
            )
        if frozen:
            require_hashes(self.old_lock, f"--frozen ({self.lock_path})")
        return {e.key: e for e in self.old_lock.entries}

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
            entries=tuple(resolved[e.key] for e in self.manifest.entries),
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

    def plan(self, resolved: dict[str, LockedEntry]) -> list[EntryPlan]:
        """What each resolved entry still lacks in the cache (entries that failed to resolve are left out)."""
        plans = []
        for entry in self.manifest.entries:
            locked = resolved.get(entry.key)
            if locked is None:
                continue
            cache = self.repo_cache(locked)
            missing = []
            for f in locked.files:
                if cache.has_blob(f.etag, f.size):
                    cache.discard_stale_partial(f.etag, f.size)  # left by a run that another one beat
                else:
                    missing.append(f)
            plans.append(EntryPlan(entry, locked, missing))
        return plans

    def file_jobs(self, plans: list[EntryPlan]) -> tuple[list[FileJob], list[FileJob]]:
        """(first, later) jobs: one job per blob; a blob a second repo shares waits and is hard-linked."""
        first: dict[str, FileJob] = {}
        seen: set[tuple[str, str]] = set()
        later: list[FileJob] = []
        for p in plans:
            cache = self.repo_cache(p.locked)
            for f in p.missing:
                label = f"{p.locked.repo}:{f.path}"
                etag = f.etag or first_use_key(p.locked.commit, label)
                if (cache.folder.name, etag) in seen:
                    continue
                seen.add((cache.folder.name, etag))
                job = FileJob(
                    cache=cache,
                    url=self.hub.file_url(p.locked.repo, p.locked.type, p.locked.commit, f.path),
                    token=self.token(p.entry),
                    etag=etag,
                    size=f.size,
                    lfs=f.is_lfs,
                    label=label,
                    published=bool(f.etag),
                )
                if f.etag in first:
                    later.append(job)
                else:
                    first[f.etag] = job
        return list(first.values()), later

    def materialize(self, plans: list[EntryPlan]) -> None:
        """Snapshot links, then refs, for every entry (after its blobs are in place)."""
        missing = []
        for p in plans:
            cache = self.repo_cache(p.locked)
            present: list[LockedFile] = []
            absent: list[LockedFile] = []
            for f in p.locked.files:
                (present if cache.has_blob(f.etag, f.size) else absent).append(f)
            cache.link_all(p.locked.commit, [(f.path, f.etag) for f in present])
            missing += [f"{p.locked.repo}@{p.locked.commit[:12]}: {f.path} ({f.size} bytes)" for f in absent]
            if not absent:
                cache.write_ref(p.locked.revision, p.locked.commit)
        if missing:
            raise VerifyError(
                f"{len(missing)} locked file(s) are not in the cache {self.cache_dir}:\n  - "
                + "\n  - ".join(missing),
                missing,
            )

    def check_space(self, jobs: list[FileJob]) -> None:
        needed = sum(j.size - _bytes_on_disk(j) for j in jobs)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.cache_dir).free
        if needed + DISK_MARGIN > free:
            raise DiskSpaceError(
                f"not enough disk space in {self.cache_dir}: {needed} bytes to fetch (+{DISK_MARGIN} margin), "
                f"{free} bytes free. Free some space (`prefetch prune`) or choose another --cache-dir."
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


def first_use_key(commit: str, label: str) -> str:
    """The stand-in blob key (partial file name) of a file without a published hash, until it is hashed."""
    return "first-use-" + hashlib.sha256(f"{commit}:{label}".encode()).hexdigest()[:40]


def endpoint_for_lock(endpoint: str) -> str:
    """The endpoint as the lock records it: without credentials (a URL's user:password never goes there)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)).rstrip("/")


def trust_lock(new: LockedEntry, old: LockedEntry | None) -> LockedEntry:
    """The lock is the root of trust: at the commit it locked, its hashes win over what this endpoint lists
    now (a lock made against the Hub keeps a mirror to the Hub's hashes)."""
    if old is None or old.commit != new.commit:
        return new
    before = {f.path: f for f in old.files}
    kept = [before.get(f.path) for f in new.files]
    return replace(
        new,
        files=tuple(
            k if k is not None and k.etag and k.size == f.size else f
            for k, f in zip(kept, new.files, strict=True)
        ),
    )


def _bytes_on_disk(job: FileJob) -> int:
    """Bytes of a blob already in its partial file (they need no new space)."""
    return sum(b - a for a, b in job.cache.read_partial_state(job.etag, job.size))


def locked_entry(entry: Entry, commit: str, files: list[RemoteFile]) -> LockedEntry:
    """An entry's lock record: the commit and the files its include/exclude select."""
    by_path = {f.path: f for f in files}
    selected = select_paths(by_path, entry.include, entry.exclude)
    locked_files = tuple(
        LockedFile(path=f.path, size=f.size, sha256=f.sha256, git_sha1=None if f.sha256 else f.git_sha1)
        for f in sorted((by_path[p] for p in selected), key=lambda f: f.path)
    )
    return LockedEntry(
        repo=entry.repo,
        type=entry.type,
        revision=entry.revision,
        commit=commit,
        include=entry.include,
        exclude=entry.exclude,
        entry_digest=entry.digest(),
        files=locked_files,
    )


# ---------------------------------------------------------------------------------------------- public API
def sync(
    manifest_path: str | Path,
    *,
    settings: Settings | None = None,
    frozen: bool = False,
    dry_run: bool = False,
    upgrade: bool = False,
    upgrade_repos: tuple[str, ...] = (),
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> SyncResult:
    """Bring every manifest entry into the cache, verified, and write the lockfile last.

    Cancelling `cancel` (from another thread, or a signal handler) stops the run with `Cancelled`;
    its partial downloads are kept for the next run to resume.
    """
    run = Run(manifest_path, settings or Settings(), progress, cancel)
    try:
        resolved, failures = run.resolve(frozen=frozen, upgrade=upgrade, upgrade_repos=upgrade_repos)
        plans = run.plan(resolved)
        if run.offline:
            run.materialize(plans)
            return SyncResult(plans, run.old_lock or run.new_lock(resolved), run.lock_path, run.cache_dir)
        needing = [p for p in plans if p.missing]
        report = _check_access(run, needing, failures)
        lock = run.new_lock(resolved)
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
        )
        transfer.run(first)
        if later:
            transfer.run(later)
        result.stats = transfer.stats
        run.record_learned(plans, transfer.stats.learned)
        result.lock = lock = run.new_lock({**resolved, **{p.entry.key: p.locked for p in plans}})
        result.changes = lock_changes(run.old_lock, lock)
        run.materialize(plans)
        if not frozen:
            run.save_lock(lock)
        return result
    finally:
        run.close()


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
    for p in plans:
        info = p.to_json()
        run.progress.message(
            f"{p.entry.label} -> {p.locked.commit[:12]}: {info['files']} files ({human_bytes(info['bytes'])}), "
            f"{info['cached_files']} cached, {info['missing_files']} to fetch ({human_bytes(info['missing_bytes'])})"
        )
    run.progress.start(total, len(jobs))


def lock_changes(old: Lock | None, new: Lock) -> list[str]:
    """Human lines: entries added, removed, or moved to another commit."""
    before = {e.key: e for e in old.entries} if old else {}
    after = {e.key: e for e in new.entries}
    lines = [f"+ {key} {e.commit[:12]}" for key, e in after.items() if key not in before]
    lines += [f"- {key} {e.commit[:12]}" for key, e in before.items() if key not in after]
    lines += [
        f"~ {key} {before[key].commit[:12]} -> {e.commit[:12]}"
        for key, e in after.items()
        if key in before and before[key].commit != e.commit
    ]
    return lines


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
        resolved, failures = run.resolve(upgrade=upgrade, upgrade_repos=upgrade_repos)
        if failures:
            raise AccessReport(failures).error()
        new = run.new_lock(resolved)
        run.save_lock(new)
        return SyncResult([], new, run.lock_path, run.cache_dir, changes=lock_changes(run.old_lock, new))
    finally:
        run.close()


def check(
    manifest_path: str | Path, *, settings: Settings | None = None, cancel: CancelToken | None = None
) -> AccessReport:
    """The access check alone, for every entry: token, gating, visibility, revision."""
    run = Run(manifest_path, settings or Settings(), cancel=cancel)
    try:
        if run.offline:
            raise UsageError("`prefetch check` needs the network (HF_HUB_OFFLINE / --offline is set)")
        return check_entries(run.hub, [(e, run.token(e)) for e in run.manifest.entries])
    finally:
        run.close()
