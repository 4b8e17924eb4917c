"""`prefetch status` and `prefetch path`: what is locked, cached or missing, without the network.

`status` answers, per manifest entry, what `uv tree` and `hf cache ls` answer together: the requested
revision, the locked commit and content, whether the cache holds it, and whether the lock is stale.
`path` hands a locked entry's snapshot folder to tools that take a folder (`datasets`, llama.cpp).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefetch.cache import RepoCache
from prefetch.errors import LockOutdatedError, PrefetchError, UsageError, VerifyError
from prefetch.lockfile import LockedEntry, default_lock_path, diff_lock, load_lock
from prefetch.manifest import load_manifest
from prefetch.offline.shared import Report, cache_root, json_name, label
from prefetch.progress import human_bytes
from prefetch.settings import resolve_cache_dir

CACHED, PARTIAL, MISSING, UNLOCKED = "cached", "partial", "missing", "not locked"
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class EntryStatus:
    """One manifest entry's row."""

    repo: str
    type: str
    revision: str
    commit: str | None
    files: int
    bytes: int
    cache: str  # cached | partial | missing | not locked
    stale: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def name(self) -> str:
        return self.repo if self.type == "model" else f"{self.type}:{self.repo}"


@dataclass
class StatusReport(Report):
    manifest: Path
    lock_path: Path = field(metadata=json_name("lockfile"))
    cache_dir: Path
    rows: list[EntryStatus] = field(metadata=json_name(None))
    stale: list[str]  # why the lock is out of date with the manifest (empty: up to date)
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = not self.stale and all(r.cache == CACHED for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "entries": [r.to_json() for r in self.rows]}

    def render(self) -> str:
        header = ("repo", "revision", "locked commit", "files", "size", "cache", "lock")
        table = [header] + [
            (
                r.name,
                r.revision[:12] if COMMIT.fullmatch(r.revision) else r.revision,
                (r.commit or "-")[:12],
                str(r.files),
                human_bytes(r.bytes),
                r.cache,
                "stale" if r.stale else "ok",
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
        ]
        lines.append(f"lockfile {self.lock_path}; cache {self.cache_dir}")
        lines += [f"stale: {reason}" for reason in self.stale]
        return "\n".join(lines)

    def error(self) -> PrefetchError:
        """Exit 6 when the lock is stale (or missing), else exit 7 when something is not fully cached."""
        if self.stale:
            return _shown(LockOutdatedError(f"{self.lock_path} is out of date with {self.manifest}"))
        incomplete = [f"{r.name}: {r.cache}" for r in self.rows if r.cache != CACHED]
        return _shown(VerifyError(f"not fully cached: {', '.join(incomplete)}", incomplete))


def _shown(error: PrefetchError) -> PrefetchError:
    error.shown = True  # the report already said it
    return error


def status(
    manifest_path: str | Path, *, lock_path: str | Path | None = None, cache_dir: str | Path | None = None
) -> StatusReport:
    """One row per manifest entry: requested revision, locked commit and content, cache state, staleness."""
    manifest = load_manifest(manifest_path)
    lock_file = Path(lock_path) if lock_path else default_lock_path(manifest.path)
    root = resolve_cache_dir(cache_dir or manifest.cache_dir)
    if not lock_file.exists():
        rows = [EntryStatus(e.repo, e.type, e.revision, None, 0, 0, UNLOCKED, True) for e in manifest.entries]
        return StatusReport(
            manifest.path, lock_file, root, rows, [f"{lock_file} does not exist: run `prefetch lock`"]
        )
    lock = load_lock(lock_file)
    rows = []
    for entry in manifest.entries:
        locked = lock.entry(entry.key)
        if locked is None:
            rows.append(EntryStatus(entry.repo, entry.type, entry.revision, None, 0, 0, UNLOCKED, True))
            continue
        rows.append(
            EntryStatus(
                entry.repo,
                entry.type,
                entry.revision,
                locked.commit,
                len(locked.files),
                sum(f.size for f in locked.files),
                cache_state(RepoCache(root, locked.repo, locked.type), locked),
                locked.entry_digest != entry.digest(),
            )
        )
    return StatusReport(manifest.path, lock_file, root, rows, diff_lock(lock, manifest))


def cache_state(cache: RepoCache, locked: LockedEntry) -> str:
    """`cached`: every file's blob and snapshot link; `missing`: none of it; else `partial`."""
    present = [
        cache.has_blob(f.etag, f.size) and cache.is_linked(locked.commit, f.path, f.etag)
        for f in locked.files
    ]
    if all(present):
        return CACHED
    if any(present) or any(
        cache.has_blob(f.etag, f.size) or cache.partials.has_partial(f.etag) for f in locked.files
    ):
        return PARTIAL
    return MISSING


def snapshot_path(
    lock_path: str | Path,
    repo: str,
    repo_type: str = "model",
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> Path:
    """The snapshot folder of a locked entry (`huggingface_hub.snapshot_download`'s answer, offline)."""
    lock_path = Path(lock_path)
    lock = load_lock(lock_path)
    matches = [
        e
        for e in lock.entries
        if e.repo == repo and e.type == repo_type and (revision is None or revision in (e.revision, e.commit))
    ]
    wanted = f"{'' if repo_type == 'model' else repo_type + ':'}{repo}" + (f"@{revision}" if revision else "")
    if not matches:
        listed = ", ".join(label(e) for e in lock.entries) or "nothing"
        raise UsageError(
            f"{lock_path} does not lock {wanted} (it locks: {listed}); add it with `prefetch add`"
        )
    if len(matches) > 1:
        raise UsageError(
            f"{lock_path} locks {wanted} more than once: name the revision ({', '.join(map(label, matches))})"
        )
    locked = matches[0]
    cache = RepoCache(cache_root(lock, lock_path, cache_dir), locked.repo, locked.type)
    folder = cache.snapshot_dir(locked.commit)
    if cache_state(cache, locked) != CACHED:
        raise VerifyError(
            f"{label(locked)} ({locked.commit[:12]}) is not fully in the cache {cache.root}: run `prefetch sync`",
            [label(locked)],
        )
    return Path(os.path.abspath(folder))  # absolute, as huggingface_hub's `snapshot_download` returns it
