"""From an endpoint's listing to the lock's record of an entry: the files its patterns select (a
pattern that matches nothing is an error), the hashes the lock already trusts, and how a lock
changed."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from prefetch.hfhub import select_paths
from prefetch.hub import RemoteFile
from prefetch.lockfile import Lock, LockedEntry, LockedFile
from prefetch.manifest import Entry
from prefetch.paths import unmatched_pattern_message


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


def locked_entry(entry: Entry, commit: str, files: list[RemoteFile]) -> LockedEntry:
    """An entry's lock record: the commit and the files its include/exclude select."""
    by_path = {f.path: f for f in files}
    selected = select_paths(by_path, entry.include, entry.exclude)
    check_selection(entry, list(by_path), selected)
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
