"""What the offline commands share: the cache a lockfile names, the distinct blobs it needs (hashed in
parallel), problem lists, and one JSON form for every command's report.

The cache folder is, in order: the `cache_dir` argument, the lockfile's `cache_dir`, then
`resolve_cache_dir(None)` (HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefetch.cache import RepoCache
from prefetch.errors import VerifyError
from prefetch.hashing import hash_file
from prefetch.lockfile import Lock, LockedEntry, require_hashes
from prefetch.settings import resolve_cache_dir
from prefetch.workers import Workers


def cache_root(lock: Lock, lock_path: Path, explicit: str | Path | None) -> Path:
    """`--cache-dir` > the lock's `cache_dir` (relative: to the lock's folder) > HF_HUB_CACHE etc."""
    if explicit:
        return resolve_cache_dir(explicit)
    if lock.cache_dir:
        path = Path(lock.cache_dir).expanduser()
        return path if path.is_absolute() else Path(lock_path).parent / path
    return resolve_cache_dir(None)


def label(entry: LockedEntry) -> str:
    """How messages name an entry: `org/name@main`, `dataset:org/name@main`."""
    kind = "" if entry.type == "model" else f"{entry.type}:"
    return f"{kind}{entry.repo}@{entry.revision}"


@dataclass(slots=True)  # slots, and users as shared strings: verify of 100k files holds 100k of them
class LockedBlob:
    """One distinct blob of one repo folder, and the locked files that use it (for messages)."""

    cache: RepoCache
    etag: str
    size: int
    lfs: bool
    # entry label, file path, entry label, file path...: one flat tuple (most blobs have one user)
    users: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.cache.blob_path(self.etag)

    @property
    def file(self) -> str:
        """`path` as text, for system calls (a `Path` per blob costs more than its `stat`)."""
        return f"{self.cache.blobs}/{self.etag}"

    @property
    def member(self) -> str:
        """Its name in a bundle."""
        return self.cache.relpath(self.path)

    @property
    def hash_name(self) -> str:
        """What its name is the digest of, for messages."""
        return "its sha256" if self.lfs else "its git blob sha1"

    def who(self) -> str:
        count = len(self.users) // 2
        more = f" (+{count - 2} more)" if count > 2 else ""
        pairs = zip(self.users[0:4:2], self.users[1:4:2], strict=True)
        return ", ".join(f"{entry}: {path}" for entry, path in pairs) + more


def locked_blobs(lock: Lock, root: Path) -> list[LockedBlob]:
    """Every distinct (repo folder, etag) the lock needs, in a stable order (by folder, then etag)."""
    require_hashes(lock, "this command reads the cache by the lockfile's hashes")
    by_folder: dict[str, dict[str, LockedBlob]] = {}  # keyed by strings the lock holds: no tuple per file
    for entry in lock.entries:
        repo = RepoCache(root, entry.repo, entry.type)
        blobs = by_folder.setdefault(repo.folder.name, {})
        name = label(entry)
        for f in entry.files:
            blob = blobs.get(f.etag)
            if blob is None:
                blob = blobs[f.etag] = LockedBlob(repo, f.etag, f.size, f.is_lfs)
            blob.users += (name, f.path)
    return [blobs[etag] for _, blobs in sorted(by_folder.items()) for etag in sorted(blobs)]


def mismatches(blobs: list[LockedBlob], jobs: int | None = None) -> dict[int, tuple[int, str] | OSError]:
    """Hash the blobs in parallel, largest first: for each blob whose bytes are not its (size, name),
    by its index, what was read (bytes read, digest) or the read error. Only those are kept: a
    verify of 100k files held 100k results (~7 MB) to compare them afterwards."""
    found: dict[int, tuple[int, str] | OSError] = {}
    if not blobs:
        return found
    order = sorted(range(len(blobs)), key=lambda i: -blobs[i].size)

    def one(i: int) -> None:
        blob = blobs[i]
        try:
            result: tuple[int, str] | OSError = hash_file(blob.file, blob.lfs, blob.size)
        except OSError as exc:
            result = exc
        if result != (blob.size, blob.etag):
            found[i] = result

    bugs: list[BaseException] = []  # anything but a read error: raised here, as a bug
    Workers(max(1, min(jobs or os.cpu_count() or 1, len(blobs))), one, lambda exc, _: bugs.append(exc)).run(
        order
    )
    if bugs:
        raise bugs[0]
    return found


def bullets(problems: list[str], limit: int = 200) -> str:
    """One problem a line; a cache missing everything must not print a million lines (JSON has them all)."""
    shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
    return "".join(f"\n  - {p}" for p in shown)


def verify_error(what: str, root: Path, problems: list[str], hint: str = "") -> VerifyError:
    """The error listing `problems`; `hint`, when given, is its last line (what to do)."""
    last = f"\n{hint}" if hint else ""
    return VerifyError(
        f"{what}: {len(problems)} problem(s) in the cache {root}:{bullets(problems)}{last}", problems
    )


def json_name(name: str | None) -> dict[str, str | None]:
    """A report field's `metadata`: its key in the JSON form (None: left out of it)."""
    return {"json": name}


@dataclass
class Report:
    """The base of the commands' reports: each has `render()` for people and this `to_json()` for --json.

    The JSON form is every field, paths as text, keyed by its name or by `json_name` in its metadata.
    """

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            key = f.metadata.get("json", f.name)
            if key is not None:
                value = getattr(self, f.name)
                out[key] = str(value) if isinstance(value, Path) else value
        return out
