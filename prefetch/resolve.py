"""Stage 1, resolve: manifest + lockfile + the Hub -> the locked content of every entry.

Locks are sticky, as in uv or Cargo: an entry whose manifest line is unchanged keeps its locked commit
and file list until `--upgrade`, so a warm re-sync makes no request at all. `--locked` (and an offline
run) takes the lock, which must match the manifest; `--frozen` takes it as it is. What is resolved
against the endpoint is the revision's commit (revision info) and its files (the tree listing), the
entry's patterns applied; at a commit the lock already holds, the lock's hashes win (the lock is the
root of trust, and a mirror's listing is not).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from prefetch import __version__
from prefetch.access import AccessReport, AccessResult, precheck, row_for_error
from prefetch.errors import LockOutdatedError, UsageError
from prefetch.hfhub import select_paths
from prefetch.lockfile import Lock, LockedEntry, LockedFile, diff_lock, require_hashes
from prefetch.manifest import Entry, Manifest
from prefetch.paths import unmatched_pattern_message

if TYPE_CHECKING:
    from prefetch.hub import RemoteFile
    from prefetch.run import RunContext


@dataclass(frozen=True)
class LockMode:
    """How the lockfile is used, as uv and Cargo use theirs."""

    locked: bool = False  # the lock must exist and match the manifest (exit 6); used as is
    frozen: bool = False  # the lock as it is, its entries replacing the manifest's
    upgrade: bool = False  # re-resolve every entry
    upgrade_repos: tuple[str, ...] = ()  # re-resolve these repos

    @property
    def writes_lock(self) -> bool:
        """`--locked` and `--frozen` never write the lockfile."""
        return not (self.locked or self.frozen)


@dataclass
class Resolution:
    """What resolving gave: the run's entries and their locked content (an entry that failed to resolve
    has an access verdict in `failures` instead)."""

    entries: tuple[Entry, ...]  # the manifest's, or under --frozen the lock's
    locked: dict[str, LockedEntry]  # Entry.key -> locked content
    failures: list[AccessResult] = field(default_factory=list)
    hub_gated: dict[str, bool | str] = field(default_factory=dict)  # gating the Hub reported, by key
    resolved_here: bool = False  # some content was resolved against this run's endpoint


def resolve(
    ctx: RunContext, manifest: Manifest, old: Lock | None, lock_path: Path, mode: LockMode
) -> Resolution:
    """Locked content for every entry: kept from the lock when its line is unchanged, else resolved."""
    if mode.frozen:
        return _frozen(manifest, _existing(old, lock_path, "--frozen"), lock_path)
    if mode.locked or ctx.offline:
        flag = "--locked" if mode.locked else "--offline"
        return Resolution(
            manifest.entries, _checked_lock(manifest, _existing(old, lock_path, flag), lock_path, flag)
        )
    unknown = set(mode.upgrade_repos) - {e.repo for e in manifest.entries}
    if unknown:
        raise UsageError(f"--upgrade-repo: not in the manifest: {', '.join(sorted(unknown))}")
    kept: dict[str, LockedEntry] = {}
    todo: list[Entry] = []
    for entry in manifest.entries:
        before = old.entry(entry.key) if old else None
        sticky = not mode.upgrade and entry.repo not in mode.upgrade_repos
        if before is not None and sticky and before.entry_digest == entry.digest():
            kept[entry.key] = before
        else:
            todo.append(entry)
    failures = [r for r in (precheck(e, ctx.token(e)) for e in todo) if r is not None]
    if failures:  # knowable without the network: report before any request
        raise AccessReport(failures).error()
    upgraded = {e.key for e in todo if mode.upgrade or e.repo in mode.upgrade_repos}
    resolution = _resolve_remote(ctx, todo, old, upgraded)
    resolution.locked.update(kept)
    return resolution


def lock_may_change(old: Lock | None, manifest: Manifest, mode: LockMode) -> bool:
    """Will this run (probably) rewrite the lockfile? Not when it matches the manifest and nothing is
    upgraded (so a read-only lock that stays the same does not stop a sync)."""
    if not mode.writes_lock:
        return False
    return old is None or mode.upgrade or bool(mode.upgrade_repos) or bool(diff_lock(old, manifest))


def _existing(old: Lock | None, lock_path: Path, flag: str) -> Lock:
    if old is None:
        raise LockOutdatedError(
            f"{flag} needs a lockfile, and {lock_path} does not exist; run `prefetch lock`"
        )
    return old


def _checked_lock(manifest: Manifest, lock: Lock, lock_path: Path, flag: str) -> dict[str, LockedEntry]:
    """The lock's entries, after checking that the lock matches the manifest (exit 6 if not)."""
    differences = diff_lock(lock, manifest)
    if differences:
        raise LockOutdatedError(
            f"{flag}: {lock_path} is out of date with {manifest.path}; run `prefetch lock`:\n  - "
            + "\n  - ".join(differences)
        )
    if flag == "--locked":
        require_hashes(lock, f"--locked ({lock_path})")
    return {e.key: e for e in lock.entries}


def _frozen(manifest: Manifest, lock: Lock, lock_path: Path) -> Resolution:
    """The lock's entries as the run's entries; the manifest only lends per-entry token names."""
    require_hashes(lock, f"--frozen ({lock_path})")
    by_key = {e.key: e for e in manifest.entries}
    entries = tuple(
        replace(
            by_key.get(e.key) or Entry(e.repo, e.type, e.revision),
            index=i,
            include=e.include,
            exclude=e.exclude,
        )
        for i, e in enumerate(lock.entries)
    )
    return Resolution(entries, {e.key: e for e in lock.entries})


def _resolve_remote(
    ctx: RunContext, entries: list[Entry], old: Lock | None, upgraded: set[str]
) -> Resolution:
    """Revision info + tree listing per entry, concurrently; access problems become report rows. At a
    commit the lock holds, the lock's hashes are kept, except for the entries being upgraded: an upgrade
    takes what this endpoint lists."""
    resolution = Resolution(ctx.manifest.entries, {}, resolved_here=bool(entries))
    if not entries:
        return resolution
    hub = ctx.hub

    def one(entry: Entry) -> LockedEntry:
        token = ctx.token(entry)
        info = hub.repo_info(entry.repo, entry.type, entry.revision, token)
        resolution.hub_gated[entry.key] = info.gated
        files = hub.list_files(entry.repo, entry.type, info.commit, token)
        trusted = old.entry(entry.key) if old and entry.key not in upgraded else None
        return trust_lock(locked_entry(entry, info.commit, files), trusted)

    with cf.ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
        futures = {entry.key: (entry, pool.submit(one, entry)) for entry in entries}
        for key, (entry, future) in futures.items():
            try:
                resolution.locked[key] = future.result()
            except Exception as exc:
                resolution.failures.append(row_for_error(hub, entry, ctx.token(entry), exc))
    return resolution


# -------------------------------------------------------------------------------- an entry's lock record
def locked_entry(entry: Entry, commit: str, files: list[RemoteFile]) -> LockedEntry:
    """An entry's lock record: the commit and the files its include/exclude select."""
    by_path = {f.path: f for f in files}
    selected = select_paths(by_path, entry.include, entry.exclude)
    check_selection(entry, list(by_path), selected)
    locked_files = tuple(
        LockedFile(
            path=f.path,
            size=f.size,
            sha256=f.sha256,
            git_sha1=None if f.sha256 else f.git_sha1,
            xet_hash=f.xet_hash,
        )
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


def check_selection(entry: Entry, paths: list[str], selected: list[str]) -> None:
    """An entry's own pattern that matches no file, or an entry left with no file (without
    `allow_empty: true`), is a manifest error (exit 2): it is a typo far more often than an intent."""
    for key, patterns in (("include", entry.own_include), ("exclude", entry.own_exclude)):
        for index, pattern in enumerate(patterns):
            if not select_paths(paths, [pattern], []):
                raise entry.error(f"{key}[{index}]", unmatched_pattern_message(pattern, paths))
    if not selected and not entry.allow_empty:
        what = (
            "has no file" if not paths else "selects no file of the repo (include/exclude, defaults included)"
        )
        raise entry.error(
            "", f"{entry.repo} {what}; add 'allow_empty: true' to the entry if that is intended"
        )


def trust_lock(new: LockedEntry, old: LockedEntry | None) -> LockedEntry:
    """The lock is the root of trust: at the commit it locked, its hashes win over what this endpoint lists
    now (a lock made against the Hub keeps a mirror to the Hub's hashes). A locked file the lock knew no
    Xet hash of takes the listing's, when both agree on its sha256 (how it is fetched, not what it is)."""
    if old is None or old.commit != new.commit:
        return new
    before = {f.path: f for f in old.files}
    kept = [before.get(f.path) for f in new.files]
    return replace(
        new,
        files=tuple(
            _with_xet_hash(k, f) if k is not None and k.etag and k.size == f.size else f
            for k, f in zip(kept, new.files, strict=True)
        ),
    )


def _with_xet_hash(kept: LockedFile, listed: LockedFile) -> LockedFile:
    if kept.xet_hash is None and listed.xet_hash is not None and kept.sha256 == listed.sha256:
        return replace(kept, xet_hash=listed.xet_hash)
    return kept


# ------------------------------------------------------------------------------------------ the new lock
def new_lock(
    manifest: Manifest,
    entries: tuple[Entry, ...],
    locked: dict[str, LockedEntry],
    lock_path: Path,
    endpoint: str | None,
) -> Lock:
    """The lockfile's content for `entries` (in their order). `endpoint`: what its content was resolved
    against (see `lock_endpoint`)."""
    cache_dir = manifest.cache_dir_text
    if cache_dir and manifest.cache_dir and not os.path.isabs(os.path.expanduser(cache_dir)):
        # Relative in the manifest: keep it relative, to the lock's folder, so the lock travels.
        cache_dir = os.path.relpath(manifest.cache_dir, lock_path.absolute().parent)
    return Lock(
        manifest_digest=manifest.digest(),
        tool_version=__version__,
        entries=tuple(locked[e.key] for e in entries if e.key in locked),
        cache_dir=cache_dir,
        endpoint=endpoint,
    )


def lock_endpoint(old: Lock | None, resolved_here: bool, endpoint: str) -> str | None:
    """The endpoint the lock's content was resolved against: this run's when it resolved or hashed
    anything, else the old lock's (a warm run through a mirror keeps a lock made against the Hub, and a
    lock older than this field is not rewritten just to add it: it may be read-only)."""
    if old is not None and not resolved_here:
        return old.endpoint
    return endpoint_for_lock(endpoint)


def endpoint_for_lock(endpoint: str) -> str:
    """The endpoint as the lock records it: without credentials (a URL's user:password never goes there)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)).rstrip("/")


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
