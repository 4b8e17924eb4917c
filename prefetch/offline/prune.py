"""`prefetch prune`: remove what no given lockfile needs, only inside the repo folders those lockfiles name."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefetch.cache import PARTIAL_SUFFIX, STATE_SUFFIX, STATE_TEMP, XET_SUFFIX, RepoCache, repo_folders
from prefetch.errors import UsageError
from prefetch.files import opened_folder
from prefetch.lockfile import load_lock
from prefetch.offline.shared import Report, cache_root, json_name
from prefetch.progress import human_bytes


@dataclass
class PruneReport(Report):
    cache_dir: Path
    dry_run: bool
    repos: list[str]  # repo folders some lock names: the only ones pruned
    untouched: list[str]  # other repo folders in the cache, left alone
    snapshots: list[str] = field(  # "{folder}@{commit}"
        default_factory=list, metadata=json_name("removed_snapshots")
    )
    links: int = field(default=0, metadata=json_name("removed_links"))  # stray links in kept snapshots
    refs: list[str] = field(default_factory=list, metadata=json_name("removed_refs"))
    blobs: int = field(default=0, metadata=json_name("removed_blobs"))
    partials: int = field(default=0, metadata=json_name("removed_partials"))
    freed_bytes: int = 0
    busy: list[str] = field(default_factory=list)  # blobs written while prune ran: left in place

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [
            f"{verb} {len(self.snapshots)} snapshot(s), {self.links} stray link(s), {len(self.refs)} ref(s), "
            f"{self.blobs} blob(s) and {self.partials} partial download(s) from {self.cache_dir}: "
            f"{'would free' if self.dry_run else 'freed'} {human_bytes(self.freed_bytes)}",
        ]
        lines += [f"  snapshot {s}" for s in self.snapshots]
        lines += [f"  ref {r}" for r in self.refs]
        if self.busy:
            lines.append(f"  left {len(self.busy)} blob(s) written while prune ran: {', '.join(self.busy)}")
        lines.append(f"pruned only within the {len(self.repos)} repo(s) the lockfiles name")
        if self.untouched:
            lines.append(f"left alone (no lockfile names them): {', '.join(self.untouched)}")
        return "\n".join(lines)


@dataclass
class _Keep:
    """What the lockfiles need in one repo folder."""

    cache: RepoCache
    commits: set[str] = field(default_factory=set)
    links: set[tuple[str, str]] = field(default_factory=set)  # (commit, path)
    blobs: dict[str, int] = field(default_factory=dict)  # etag -> size


def prune(
    lock_paths: list[Path], *, cache_dir: str | Path | None = None, dry_run: bool = False
) -> PruneReport:
    """Remove what no given lockfile needs, only inside the repo folders those lockfiles name.

    In those folders: snapshots of other commits, links inside kept snapshots that no lock lists (their
    blobs go too, so no link dangles: scan_cache_dir would flag the repo), refs to removed commits, and
    blobs no locked file uses (with their partial files and Xet records). Other repos are never touched. Each blob is
    deleted under its per-blob lock, and a blob written after prune started is left alone (a concurrent
    sync may be about to link it).
    """
    if not lock_paths:
        raise UsageError("prune needs at least one --lock")
    locks = [(Path(p), load_lock(p)) for p in lock_paths]
    roots = {cache_root(lock, path, cache_dir) for path, lock in locks}
    if len(roots) > 1:
        listed = ", ".join(sorted(str(r) for r in roots))
        raise UsageError(f"the lockfiles name different caches ({listed}): choose one with --cache-dir")
    root = roots.pop()
    started = time.time()
    keep: dict[str, _Keep] = {}
    for _, lock in locks:
        for entry in lock.entries:
            cache = RepoCache(root, entry.repo, entry.type)
            k = keep.setdefault(cache.folder.name, _Keep(cache))
            k.commits.add(entry.commit)
            for f in entry.files:
                k.links.add((entry.commit, f.path))
                k.blobs[f.etag] = f.size
    present = [folder.name for folder in repo_folders(root)]
    report = PruneReport(root, dry_run, sorted(keep), [name for name in present if name not in keep])
    removed_inodes: dict[tuple[int, int], tuple[int, int, int]] = {}  # inode -> (size, nlink, removed)
    for name in sorted(keep):
        if name in present:
            _prune_repo(keep[name], report, started, removed_inodes)
    report.freed_bytes += sum(size for size, nlink, n in removed_inodes.values() if n >= nlink)
    return report


def _prune_repo(
    k: _Keep, report: PruneReport, started: float, removed_inodes: dict[tuple[int, int], tuple[int, int, int]]
) -> None:
    """Refs first, then snapshots, then blobs: the reverse of the order in which sync makes them visible."""
    cache = k.cache
    dry = report.dry_run
    _refuse_linked_folders(cache)
    if cache.refs.is_dir():
        for ref in sorted(p for p in cache.refs.rglob("*") if p.is_file() or p.is_symlink()):
            try:
                commit = ref.read_text(errors="replace").strip()
            except OSError:
                continue
            if commit not in k.commits:
                report.refs.append(f"{cache.relpath(ref)} ({commit[:12]})")
                if not dry:
                    ref.unlink()
        if not dry:
            _remove_empty_dirs(cache.refs, keep_top=True)
    if cache.snapshots.is_dir():
        for snap in sorted(cache.snapshots.iterdir()):
            if snap.name not in k.commits:
                report.snapshots.append(f"{cache.folder.name}@{snap.name}")
                if not dry:
                    if snap.is_dir() and not snap.is_symlink():
                        shutil.rmtree(snap)
                    else:
                        snap.unlink()
                    with contextlib.suppress(FileNotFoundError):
                        cache.tree_path(snap.name).unlink()
                continue
            for link in sorted(p for p in snap.rglob("*") if p.is_symlink() or p.is_file()):
                path = link.relative_to(snap).as_posix()
                if (snap.name, path) not in k.links:
                    report.links += 1
                    if not dry:
                        link.unlink()
            if not dry:
                _remove_empty_dirs(snap, keep_top=True)
    if not cache.blobs.is_dir():
        return
    for blob in sorted(cache.blobs.iterdir()):
        etag = _etag_of(blob.name)
        temp = STATE_TEMP.fullmatch(blob.name) is not None  # litter by its exact name, even as a link
        plain = blob.is_file() and not blob.is_symlink()
        if etag is None or not (plain or (temp and blob.is_symlink())) or _needed(blob.name, etag, k):
            continue  # not ours to judge, or needed
        with contextlib.ExitStack() as stack:
            if not dry:
                stack.enter_context(cache.blob_lock(etag))
            try:
                st = blob.lstat()
            except FileNotFoundError:
                continue
            ours = (st.st_dev, st.st_ino) in removed_inodes  # unlinking a hard link updates the ctime
            if st.st_ctime > started and not ours:  # installed or linked while we ran: a sync may need it
                report.busy.append(cache.relpath(blob))
                continue
            if blob.name == etag:
                report.blobs += 1
                size, nlink, n = removed_inodes.get((st.st_dev, st.st_ino), (st.st_size, st.st_nlink, 0))
                removed_inodes[(st.st_dev, st.st_ino)] = (size, nlink, n + 1)
            elif blob.name == etag + XET_SUFFIX:  # the Xet record of a blob no lock needs: goes with it
                report.freed_bytes += st.st_size
            else:
                report.partials += 1
                report.freed_bytes += st.st_size if st.st_nlink == 1 else 0
            if not dry:
                blob.unlink()


def _refuse_linked_folders(cache: RepoCache) -> None:
    """prune deletes by path: a folder of the repo replaced by a symlink (planted, in a shared cache)
    would lead it to delete files elsewhere, so that is refused (`UnsafeFolder`, exit 5)."""
    for sub in ("blobs", "snapshots", "refs", "trees"):
        with (
            contextlib.suppress(FileNotFoundError),
            opened_folder(cache.root, (cache.folder.name, sub), create=False),
        ):
            pass


def _is_hex(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _etag_of(name: str) -> str | None:
    """The blob a name of `blobs/` belongs to: the blob, its partial file, its state, or the state's
    temp file a killed run left; None for anything else (not prefetch's nor huggingface_hub's)."""
    temp = STATE_TEMP.fullmatch(name)
    etag = temp.group(1) if temp else name.split(".", 1)[0]
    return etag if _is_hex(etag) else None


def _needed(name: str, etag: str, k: _Keep) -> bool:
    """A locked blob, anything else of its name but prefetch's own partial files (huggingface_hub's
    `.incomplete` resumes too), or prefetch's partial of a locked blob still missing. A partial of a
    blob that is complete is stale, and so is a state temp file (prune holds the blob's lock)."""
    if etag not in k.blobs or STATE_TEMP.fullmatch(name):
        return False
    if name not in (etag + PARTIAL_SUFFIX, etag + STATE_SUFFIX):
        return True
    return not k.cache.has_blob(etag, k.blobs[etag])


def _remove_empty_dirs(top: Path, keep_top: bool = False) -> None:
    """Remove folders left empty under `top` (deepest first), and `top` itself unless `keep_top`."""
    for folder in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    if not keep_top:
        with contextlib.suppress(OSError):
            top.rmdir()
