"""`prefetch prune`: remove what no given lockfile needs, inside the repo folders those lockfiles name; with
`unlocked`, also the repo folders no given lockfile names, whole."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prefetch.cache import (
    MAX_REF_BYTES,
    PARTIAL_SUFFIX,
    STATE_SUFFIX,
    STATE_TEMP,
    XET_SUFFIX,
    RepoCache,
    repo_folders,
)
from prefetch.errors import UnsafeFolder, UsageError
from prefetch.files import FOLDER_FLAGS, open_folder, read_regular, unlink_at
from prefetch.lockfile import load_lock
from prefetch.offline.shared import Report, cache_root, json_name
from prefetch.progress import human_bytes

MAX_DEPTH = 64  # folders below `refs/` or a snapshot that prune enters (the Hub's paths are shallower)


@dataclass
class PruneReport(Report):
    cache_dir: Path
    dry_run: bool
    repos: list[str]  # repo folders some lock names: pruned of what no lock needs
    untouched: list[str]  # other repo folders in the cache, left alone (without `unlocked`)
    snapshots: list[str] = field(  # "{folder}@{commit}"
        default_factory=list, metadata=json_name("removed_snapshots")
    )
    links: int = field(default=0, metadata=json_name("removed_links"))  # stray links in kept snapshots
    refs: list[str] = field(default_factory=list, metadata=json_name("removed_refs"))
    blobs: int = field(default=0, metadata=json_name("removed_blobs"))
    partials: int = field(default=0, metadata=json_name("removed_partials"))
    freed_bytes: int = 0
    busy: list[str] = field(default_factory=list)  # blobs written while prune ran: left in place
    skipped: list[str] = field(default_factory=list)  # what prune would not read or enter (a link...): left
    unlocked: bool = False  # the repo folders no lockfile names are removed whole (`untouched` is empty)
    removed_repos: list[str] = field(default_factory=list)  # those folders (with `unlocked`)
    untouched_bytes: dict[str, int] = field(default_factory=dict, metadata=json_name(None))  # their blobs

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
        lines += [f"  left alone: {s}" for s in self.skipped]
        lines += [f"  repo {r} (whole: no lockfile names it)" for r in self.removed_repos]
        if self.unlocked:
            lines.append(
                f"pruned within the {len(self.repos)} repo(s) the lockfiles name; {verb} whole the "
                f"{len(self.removed_repos)} repo(s) no lockfile names"
            )
        else:
            lines.append(f"pruned only within the {len(self.repos)} repo(s) the lockfiles name")
        if self.untouched:
            sizes = ", ".join(
                f"{name} ({human_bytes(self.untouched_bytes.get(name, 0))})" for name in self.untouched
            )
            lines.append(
                f"left alone, no lockfile names them: {sizes}. Give their lockfiles with --lock to prune "
                "within them, or remove them whole with `prefetch prune --unlocked` (a shared cache holds "
                "other projects' repos too: with --unlocked, name every lockfile whose repos must stay)"
            )
        return "\n".join(lines)


@dataclass
class _Keep:
    """What the lockfiles need in one repo folder."""

    cache: RepoCache
    commits: set[str] = field(default_factory=set)
    links: set[tuple[str, str]] = field(default_factory=set)  # (commit, path)
    blobs: dict[str, int] = field(default_factory=dict)  # etag -> size


def prune(
    lock_paths: list[Path],
    *,
    cache_dir: str | Path | None = None,
    dry_run: bool = False,
    unlocked: bool = False,
) -> PruneReport:
    """Remove what no given lockfile needs, inside the repo folders those lockfiles name.

    In those folders: snapshots of other commits, links inside kept snapshots that no lock lists (their
    blobs go too, so no link dangles: scan_cache_dir would flag the repo), refs to removed commits, and
    blobs no locked file uses (with their partial files and Xet records). Other repos are left alone (the
    cache may be shared with other projects and tools), and said with their size; with `unlocked` they
    are removed whole (an entry `prefetch remove` took out of the manifest and the lock). Each blob is
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
    others = [name for name in present if name not in keep]
    report = PruneReport(root, dry_run, sorted(keep), [] if unlocked else others, unlocked=unlocked)
    removed_inodes: dict[tuple[int, int], tuple[int, int, int]] = {}  # inode -> (size, nlink, removed)
    for name in sorted(keep):
        if name in present:
            _prune_repo(keep[name], report, started, removed_inodes)
    for name in others:
        if unlocked:  # nothing of it is needed: pruned as a named repo that keeps nothing, then its folders
            _prune_repo(_Keep(_unnamed_repo(root, name)), report, started, removed_inodes)
            report.removed_repos.append(name)
            if not dry_run:
                _remove_emptied(root, name, report)
        else:
            report.untouched_bytes[name] = _blob_bytes(root, name)
    report.freed_bytes += sum(size for size, nlink, n in removed_inodes.values() if n >= nlink)
    return report


def _remove_emptied(root: Path, name: str, report: PruneReport) -> None:
    """The folders of a repo pruned of everything: its snapshots' and refs' leftovers (a link prune would
    not read is removed itself), huggingface_hub's `.no_exist/` and `trees/`, then `blobs/` and the repo
    folder if empty (a blob written meanwhile keeps them)."""
    with _folder(_unnamed_repo(root, name)) as repo:
        if repo is None:
            return
        for sub in ("snapshots", "refs", "trees", ".no_exist"):
            _remove_tree(repo, sub, report)
        with contextlib.suppress(OSError):
            os.rmdir("blobs", dir_fd=repo)
    with contextlib.suppress(OSError):
        (root / name).rmdir()  # (never follows a link: a folder of that name only, and only if empty)


def _blob_bytes(root: Path, name: str) -> int:
    """The bytes of the regular files in a repo folder's `blobs/` (not followed through a link)."""
    total = 0
    with contextlib.suppress(OSError, UnsafeFolder), _folder(_unnamed_repo(root, name), "blobs") as fd:
        for entry in os.listdir(fd) if fd is not None else ():
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _unnamed_repo(root: Path, name: str) -> RepoCache:
    """A repo folder of the cache known by its name only (no lockfile names its repo): its blob locks
    and folders are reached by that name."""
    return RepoCache(root, name, "model", folder_name=name)


def _prune_repo(
    k: _Keep, report: PruneReport, started: float, removed_inodes: dict[tuple[int, int], tuple[int, int, int]]
) -> None:
    """Refs first, then snapshots, then blobs: the reverse of the order in which sync makes them visible.

    Every folder is reached without following a link (`files.open_folder`: the repo's `blobs/`,
    `snapshots/`, `refs/` or `trees/` as a link is refused, exit 5) and every name is judged by its
    `lstat` and removed by its folder's fd: a link planted below them (a ref to another user's file, a
    folder of a kept snapshot linked elsewhere) is named in the report and left alone, never followed.
    """
    for sub in ("blobs", "snapshots", "refs", "trees"):
        with _folder(k.cache, sub):
            pass
    _prune_refs(k, report)
    _prune_snapshots(k, report)
    _prune_blobs(k, report, started, removed_inodes)


@contextlib.contextmanager
def _folder(cache: RepoCache, *parts: str) -> Iterator[int | None]:
    """The fd of a folder of the repo, reached without following links (None: there is none)."""
    try:
        fd = open_folder(cache.root, (cache.folder.name, *parts), create=False)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _walk(
    dir_fd: int, report: PruneReport, label: str, where: str = "", depth: int = 0
) -> Iterator[tuple[int, str, str]]:
    """(folder fd, path below the walked folder, name) of every entry that is not a folder, sorted, never
    through a link; deeper than MAX_DEPTH is left alone (and said, under `label`, the walked folder's
    name). With a writing prune, folders left empty are removed on the way back."""
    for name in sorted(os.listdir(dir_fd)):
        path = f"{where}/{name}" if where else name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield dir_fd, path, name
            continue
        if depth >= MAX_DEPTH:
            report.skipped.append(f"{label}/{path}: more than {MAX_DEPTH} folders deep")
            continue
        try:
            child = os.open(name, FOLDER_FLAGS, dir_fd=dir_fd)  # swapped for a link meanwhile: ELOOP
        except OSError as exc:
            report.skipped.append(f"{label}/{path}: {exc.strerror or exc}")
            continue
        try:
            yield from _walk(child, report, label, path, depth + 1)
        finally:
            os.close(child)
        if not report.dry_run:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=dir_fd)  # only if empty


def _prune_refs(k: _Keep, report: PruneReport) -> None:
    """Refs to commits no lock needs; a ref prune cannot read (a link, a FIFO, bigger than a ref) stays."""
    cache = k.cache
    with _folder(cache, "refs") as refs:
        if refs is None:
            return
        for dir_fd, path, name in _walk(refs, report, f"{cache.folder.name}/refs"):
            where = f"{cache.folder.name}/refs/{path}"
            try:
                commit = read_regular(dir_fd, name, MAX_REF_BYTES).decode(errors="replace").strip()
            except OSError as exc:
                report.skipped.append(f"{where}: {_why_unread(dir_fd, name, exc)}")
                continue
            if commit not in k.commits:
                report.refs.append(f"{where} ({commit[:12]})")
                if not report.dry_run:
                    unlink_at(dir_fd, name)


def _prune_snapshots(k: _Keep, report: PruneReport) -> None:
    """Snapshots of commits no lock needs (with their `trees/` listing), and links no lock lists in kept ones."""
    cache = k.cache
    with _folder(cache, "snapshots") as snapshots:
        if snapshots is None:
            return
        for commit in sorted(os.listdir(snapshots)):
            if commit in k.commits:
                _prune_stray_links(k, report, snapshots, commit)
                continue
            report.snapshots.append(f"{cache.folder.name}@{commit}")
            if report.dry_run:
                continue
            _remove_tree(snapshots, commit, report)
            with _folder(cache, "trees") as trees:
                if trees is not None:
                    unlink_at(trees, f"{commit}.json")


def _prune_stray_links(k: _Keep, report: PruneReport, snapshots: int, commit: str) -> None:
    label = f"{k.cache.folder.name}/snapshots/{commit}"
    try:
        snapshot = os.open(commit, FOLDER_FLAGS, dir_fd=snapshots)
    except OSError as exc:
        report.skipped.append(f"{label}: {exc.strerror or exc}")
        return
    try:
        for dir_fd, path, name in _walk(snapshot, report, label):
            if (commit, path) not in k.links:
                report.links += 1
                if not report.dry_run:
                    unlink_at(dir_fd, name)
    finally:
        os.close(snapshot)


def _remove_tree(parent: int, name: str, report: PruneReport) -> None:
    """Remove the folder `name` of `parent` and what it holds, by fd, never through a link (a link to
    a folder is removed itself); a non-folder is unlinked."""
    try:
        fd = os.open(name, FOLDER_FLAGS, dir_fd=parent)
    except OSError:
        unlink_at(parent, name)  # a link or a file where a snapshot folder should be
        return
    try:
        for dir_fd, _, entry in _walk(fd, report, name):
            unlink_at(dir_fd, entry)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent)


def _prune_blobs(
    k: _Keep, report: PruneReport, started: float, removed_inodes: dict[tuple[int, int], tuple[int, int, int]]
) -> None:
    cache = k.cache
    with _folder(cache, "blobs") as blobs:
        if blobs is None:
            return
        for name in sorted(os.listdir(blobs)):
            etag = _etag_of(name)
            if etag is None or _needed(name, etag, k):
                continue  # not ours to judge, or needed
            with contextlib.ExitStack() as stack:
                if not report.dry_run:
                    stack.enter_context(cache.blob_lock(etag))
                try:
                    st = os.stat(name, dir_fd=blobs, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                temp = STATE_TEMP.fullmatch(name) is not None  # litter by its exact name, even as a link
                if not (stat.S_ISREG(st.st_mode) or (temp and stat.S_ISLNK(st.st_mode))):
                    continue
                ours = (st.st_dev, st.st_ino) in removed_inodes  # unlinking a hard link updates the ctime
                if st.st_ctime > started and not ours:  # installed or linked while we ran: a sync may need it
                    report.busy.append(f"{cache.folder.name}/blobs/{name}")
                    continue
                if name == etag:
                    report.blobs += 1
                    size, nlink, n = removed_inodes.get((st.st_dev, st.st_ino), (st.st_size, st.st_nlink, 0))
                    removed_inodes[(st.st_dev, st.st_ino)] = (size, nlink, n + 1)
                elif name == etag + XET_SUFFIX:  # the Xet record of a blob no lock needs: goes with it
                    report.freed_bytes += st.st_size
                else:
                    report.partials += 1
                    report.freed_bytes += st.st_size if st.st_nlink == 1 and stat.S_ISREG(st.st_mode) else 0
                if not report.dry_run:
                    unlink_at(blobs, name)


def _why_unread(dir_fd: int, name: str, exc: OSError) -> str:
    """Why a ref was not read: a link is named with its target (the link's own text, not what it points at)."""
    if exc.errno == errno.ELOOP:
        with contextlib.suppress(OSError):
            return f"a symlink to {os.readlink(name, dir_fd=dir_fd)!r} (not followed)"
    return str(exc.strerror or exc)


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
