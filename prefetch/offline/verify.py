"""`prefetch verify`: prove, without the network, that the cache holds every locked file intact."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefetch.cache import RepoCache
from prefetch.errors import UnsafeFolder
from prefetch.gcpause import paused_gc
from prefetch.lockfile import LockedEntry, load_lock
from prefetch.offline.shared import (
    LockedBlob,
    Report,
    cache_root,
    json_name,
    label,
    locked_blobs,
    mismatches,
    verify_error,
)
from prefetch.progress import human_bytes


@dataclass
class VerifyReport(Report):
    ok: bool = field(default=True, init=False)  # with problems, verify raises VerifyError instead
    lock_path: Path = field(metadata=json_name("lockfile"))
    cache_dir: Path
    entries: int
    files: int
    blobs: int
    bytes: int
    fast: bool
    seconds: float = field(metadata=json_name(None))
    problems: list[str] = field(default_factory=list, init=False)

    def render(self) -> str:
        how = "sizes checked (--fast)" if self.fast else "hashed"
        return (
            f"ok: {self.files} files of {self.entries} entries verified in {self.cache_dir} "
            f"({self.blobs} blobs, {human_bytes(self.bytes)} {how}, {self.seconds:.1f}s)"
        )


@paused_gc()
def verify(
    lock_path: str | Path, *, cache_dir: str | Path | None = None, fast: bool = False, jobs: int | None = None
) -> VerifyReport:
    """Prove, without the network, that the cache holds every locked file intact; VerifyError lists all problems.

    Checks blobs (present, regular file, size, and unless `fast` the hash), snapshot links (relative, to the
    right blob) and refs (the commit, no trailing newline: huggingface_hub reads the file verbatim).
    """
    started = time.monotonic()
    lock_path = Path(lock_path)
    lock = load_lock(lock_path)
    root = cache_root(lock, lock_path, cache_dir)
    problems: list[str] = []
    for entry in lock.entries:
        problems += _check_links(RepoCache(root, entry.repo, entry.type), entry)
    blobs = locked_blobs(lock, root)
    to_hash: list[LockedBlob | list[LockedBlob]] = []  # hard-linked copies share an item: hashed once
    linked: dict[int, list[LockedBlob]] = {}  # those, by (device, inode, kind)
    for blob in blobs:
        try:
            st = os.lstat(blob.file)
        except FileNotFoundError:
            problems.append(f"missing blob {blob.etag} ({blob.size} bytes) for {blob.who()}")
            continue
        except OSError as exc:
            problems.append(f"cannot read blob {blob.etag} for {blob.who()}: {exc.strerror or exc}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"blob {blob.etag} for {blob.who()} is not a regular file: {blob.path}")
        elif st.st_size != blob.size:
            problems.append(
                f"blob {blob.etag} for {blob.who()} has {st.st_size} bytes, the lock says {blob.size}: {blob.path}"
            )
        elif fast:
            continue
        elif st.st_nlink == 1:  # the usual blob: no key, no list (for 100k files they cost ~13 MB)
            to_hash.append(blob)
        else:
            key = st.st_dev << 65 | st.st_ino << 1 | blob.lfs
            if key not in linked:
                to_hash.append(linked.setdefault(key, []))
            linked[key].append(blob)
    problems += _hash_all(to_hash, jobs)
    if problems:
        hint = (
            f"repair: `prefetch verify --repair {lock_path}` fetches again from the Hub what is missing or "
            "corrupt (as `prefetch sync --frozen --verify MANIFEST` does)"
        )
        raise verify_error(f"verify {lock_path}", root, problems, hint)
    return VerifyReport(
        lock_path=lock_path,
        cache_dir=root,
        entries=len(lock.entries),
        files=sum(len(e.files) for e in lock.entries),
        blobs=len(blobs),
        bytes=sum(b.size for b in blobs),
        fast=fast,
        seconds=time.monotonic() - started,
    )


def _check_links(cache: RepoCache, entry: LockedEntry) -> list[str]:
    """Snapshot links and the ref of one entry."""
    problems = []
    name = label(entry)
    snapshot = cache.snapshot_dir(entry.commit)
    for f in entry.files:
        expected = cache.link_target(entry.commit, f.path, f.etag)  # (checks the path)
        link = f"{snapshot}/{f.path}"  # text: a `Path` per file cost more than its `readlink`
        try:
            target = os.readlink(link)
        except (FileNotFoundError, NotADirectoryError):
            problems.append(f"{name}: {f.path}: missing snapshot link {link}")
            continue
        except OSError:
            problems.append(f"{name}: {f.path}: {link} is not a symlink (expected -> {expected})")
            continue
        if target != expected:
            problems.append(
                f"{name}: {f.path}: snapshot link {link} points at {target!r}, expected {expected!r}"
            )
    if entry.revision != entry.commit:
        where = cache.ref_path(entry.revision)
        try:
            ref = cache.read_ref(entry.revision)
        except OSError as exc:  # (planted in a shared cache: a FIFO, a file of gigabytes)
            return [*problems, f"{name}: cannot read the ref {where}: {exc.strerror or exc}"]
        except UnsafeFolder as exc:
            return [*problems, f"{name}: cannot read the ref {where}: {exc}"]
        if ref is None:
            problems.append(f"{name}: missing ref {where} (should contain {entry.commit})")
        elif ref.rstrip("\r\n") == entry.commit and ref != entry.commit:
            problems.append(
                f"{name}: ref {where} ends with a newline: huggingface_hub would look for a snapshot "
                f"named {ref!r}; it must contain exactly {entry.commit}"
            )
        elif ref != entry.commit:
            problems.append(f"{name}: ref {where} points at {ref.strip()!r}, the lock says {entry.commit}")
    return problems


def _hash_all(copies: list[LockedBlob | list[LockedBlob]], jobs: int | None) -> list[str]:
    """Hash each distinct file once (hard-linked copies share a result) and describe every mismatch."""
    problems = []
    found = mismatches([g[0] if isinstance(g, list) else g for g in copies], jobs)
    for i, result in sorted(found.items()):
        group = copies[i]
        for blob in group if isinstance(group, list) else [group]:
            if isinstance(result, OSError):
                problems.append(f"cannot read blob {blob.etag} for {blob.who()}: {result.strerror or result}")
            elif result[0] != blob.size:
                problems.append(f"blob {blob.etag} for {blob.who()} changed size while being read")
            else:
                problems.append(
                    f"corrupt blob {blob.etag} for {blob.who()}: {blob.hash_name} is {result[1]}: {blob.path}"
                )
    return problems
