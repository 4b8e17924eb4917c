"""The Hugging Face cache layout, owned here and nowhere else.

    {cache}/models--org--name/blobs/{etag}                  complete, verified bytes only
    {cache}/models--org--name/blobs/{etag}.prefetch-partial  bytes in flight (+ `.json` state: done ranges)
    {cache}/models--org--name/snapshots/{commit}/{path}     relative symlink to ../../blobs/{etag}
    {cache}/models--org--name/refs/{revision}               commit hash, no trailing newline
    {cache}/models--org--name/trees/{commit}.json           huggingface_hub's listing (prefetch writes none)
    {cache}/.locks/models--org--name/{etag}.lock            the per-blob lock huggingface_hub takes too
    {cache}/.locks/.prefetch-staging/                       unbundle's blobs until they are verified

A bundle's members mirror this layout: a member's name is its path relative to the cache root
(`RepoCache.relpath`).

Order of visibility: blob (fsync, rename, fsync of blobs/) -> snapshot link -> ref. A reader
therefore never sees a link to a blob that is not complete and verified.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from prefetch.errors import DiskSpaceError, IntegrityError
from prefetch.files import atomic_write, file_mode, fsync_dir, is_disk_full
from prefetch.paths import unsafe_path_reason

log = logging.getLogger("prefetch")

PARTIAL_SUFFIX = ".prefetch-partial"
STATE_SUFFIX = ".prefetch-partial.json"
TYPE_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    """`models--org--name`, as huggingface_hub names it."""
    return "--".join([TYPE_PREFIX[repo_type], *repo_id.split("/")])


def repo_folders(root: Path) -> list[Path]:
    """The repo folders of a cache (`models--org--name`, ...), sorted; none when the cache is missing."""
    try:
        return sorted(p for p in root.iterdir() if "--" in p.name and p.is_dir())
    except FileNotFoundError:
        return []


def staging_dir(root: Path) -> Path:
    """Where unbundle stages blobs: under `.locks/`, which huggingface_hub's `scan_cache_dir` skips."""
    return root / ".locks" / ".prefetch-staging"


def safe_relpath(path: str) -> PurePosixPath:
    """A repo file path that cannot escape its snapshot folder; anything else is refused."""
    if unsafe_path_reason(path):
        raise IntegrityError(f"refusing unsafe file path from the server: {path!r}")
    return PurePosixPath(path)


READ_BLOCK = 8 * 1024 * 1024  # read size for hashing blobs at disk speed


def blob_hasher(lfs: bool, size: int) -> Any:
    """How the cache names a blob: sha256 of the content for LFS files, the git blob sha1 otherwise."""
    if lfs:
        return hashlib.sha256()
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % size)
    return h


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git blob sha1 of the git-LFS pointer file of content (sha256, size): the `oid` a mirror lists for
    an LFS file when it does not publish the file's `lfs` object. It commits to the content's sha256."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    h = blob_hasher(False, len(pointer))
    h.update(pointer)
    return str(h.hexdigest())


class GitOidHash:
    """The git blob sha1 and the sha256 of the same bytes, in one pass: a listed git object id is the
    content's blob sha1, or (a mirror's listing of an LFS file) its LFS pointer's, which names the sha256."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sha1 = blob_hasher(False, size)
        self.sha256 = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        self.sha1.update(data)
        self.sha256.update(data)

    def hexdigest(self) -> str:
        return str(self.sha1.hexdigest())

    def blob_name(self, oid: str) -> str | None:
        """The blob name for bytes expected to have git object id `oid`: `oid` itself for a regular file,
        the content's sha256 for an LFS file whose pointer has that id (the Hub's name for it); None: neither."""
        if self.hexdigest() == oid:
            return oid
        sha256 = self.sha256.hexdigest()
        return sha256 if lfs_pointer_oid(sha256, self.size) == oid else None


def hash_file(path: Path, lfs: bool, size: int) -> tuple[int, str]:
    """(bytes read, blob name) of a file, read in large blocks (hashlib releases the GIL meanwhile)."""
    h = blob_hasher(lfs, size)
    n = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


@functools.cache
def boot_id() -> str | None:
    """This boot's id: a partial file's state written under another boot only trusts fsynced ranges."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


class RepoCache:
    """One repo's folder in the cache."""

    def __init__(self, root: Path, repo_id: str, repo_type: str) -> None:
        self.root = root
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.folder = root / repo_folder_name(repo_id, repo_type)
        self.blobs = self.folder / "blobs"
        self.snapshots = self.folder / "snapshots"
        self.refs = self.folder / "refs"

    def relpath(self, path: Path) -> str:
        """A path in this cache as POSIX text relative to the cache root: the name of its bundle member."""
        return path.relative_to(self.root).as_posix()

    # blobs --------------------------------------------------------------------------------------
    def blob_path(self, etag: str) -> Path:
        return self.blobs / etag

    def has_blob(self, etag: str, size: int) -> bool:
        """A blob of the right size is present (content was verified when it was installed)."""
        if not etag:  # a file without a hash yet (hashed on first use) has no blob name
            return False
        try:
            return self.blob_path(etag).stat().st_size == size
        except FileNotFoundError:
            return False

    def partial_path(self, etag: str) -> Path:
        return self.blobs / (etag + PARTIAL_SUFFIX)

    def state_path(self, etag: str) -> Path:
        return self.blobs / (etag + STATE_SUFFIX)

    def read_partial_state(self, etag: str, size: int) -> list[tuple[int, int]]:
        """Byte ranges of the partial file already written and recorded, or [] if nothing usable.

        After a reboot (another boot id) only the ranges that were fsynced before the state was
        saved are trusted: the others may have been lost with the page cache.
        """
        try:
            state = json.loads(self.state_path(etag).read_text())
            partial_size = self.partial_path(etag).stat().st_size
            if not isinstance(state, dict) or state.get("size") != size:
                return []
            same_boot = state.get("boot_id") in (None, boot_id())
            ranges = state.get("done" if same_boot else "synced") or []
            limit = min(size, partial_size)
            return [(a, b) for a, b in ((int(a), int(b)) for a, b in ranges) if 0 <= a < b <= limit]
        except (OSError, ValueError, TypeError):  # missing, unreadable or malformed: start over
            return []

    def write_partial_state(
        self,
        etag: str,
        size: int,
        done: list[tuple[int, int]],
        synced: list[tuple[int, int]] | None = None,
    ) -> None:
        """Record the ranges written (`done`) and those already fsynced (`synced`), with the boot id.

        Not fsynced itself: across a process kill the page cache survives, so `done` holds; after a
        reboot `read_partial_state` falls back to `synced`, and the final hash check catches the rest.
        """
        state = {"size": size, "done": done, "synced": synced or [], "boot_id": boot_id()}
        try:
            atomic_write(self.state_path(etag), json.dumps(state).encode(), durable=False)
        except OSError as e:
            if is_disk_full(e):
                raise DiskSpaceError(f"disk full while saving download state in {self.blobs}") from e
            raise

    def discard_partial(self, etag: str) -> None:
        for path in (self.partial_path(etag), self.state_path(etag)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def has_partial(self, etag: str) -> bool:
        return self.partial_path(etag).exists() or self.state_path(etag).exists()

    def discard_stale_partial(self, etag: str, size: int) -> bool:
        """Remove a partial download whose blob is complete after all (another process finished it).

        Taken under the blob's lock, so a download in progress is never touched. Returns whether
        anything was removed.
        """
        if not self.has_partial(etag) or not self.has_blob(etag, size):
            return False
        with self.blob_lock(etag):
            if not self.has_blob(etag, size):
                return False
            self.discard_partial(etag)
        return True

    def install_bytes(self, etag: str, data: bytes | bytearray, *, name: str | None = None) -> None:
        """Make verified in-memory bytes (a small blob) the blob `name` (default `etag`): write the partial
        file, fsync, rename.

        One new file and no state or `chmod` (a new file gets the umask's mode: `file_mode()`).
        The folder's fsync is the caller's, as with `install_blob(sync_folder=False)`. For blobs
        without a partial file (one left by another user could not be truncated).
        """
        partial = self.partial_path(etag)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(partial, flags, 0o666)
        except FileNotFoundError:
            self.blobs.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, flags, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, self.blob_path(name or etag))

    def install_blob(self, etag: str, *, name: str | None = None, sync_folder: bool = True) -> None:
        """Make the verified partial file the blob `name` (default `etag`; another when the hash that named
        the download was learned from the bytes): fsync, set mode, rename, fsync the folder.

        `sync_folder=False` leaves the folder's fsync to the caller, who must do it (`fsync_dir`)
        before any snapshot link to the blob is written: one fsync for many blobs.
        """
        partial = self.partial_path(etag)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(partial, file_mode())
        os.replace(partial, self.blob_path(name or etag))
        if sync_folder:
            fsync_dir(self.blobs)
        with contextlib.suppress(FileNotFoundError):
            self.state_path(etag).unlink()

    def lock_path(self, etag: str) -> Path:
        """huggingface_hub's lock file for this blob (`.locks/{repo folder}/{etag}.lock`)."""
        return self.root / ".locks" / self.folder.name / f"{etag}.lock"

    @contextlib.contextmanager
    def blob_lock(
        self,
        etag: str,
        on_wait: Callable[[], None] | None = None,
        interrupt: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """Hold huggingface_hub's per-blob lock, so concurrent downloaders fetch each blob once.

        `on_wait` is called once if another process holds the lock; `interrupt` is called while
        waiting and may raise to give up (so Ctrl-C does not hang behind another process).
        """
        path = self.lock_path(etag)
        fd = _open_lock_file(path)
        try:
            locked = _wait_for(lambda: _try_flock(fd), etag, on_wait, interrupt)
            if locked:
                yield
        finally:
            os.close(fd)  # releases the lock
        if not locked:  # a filesystem without flock: the same fallback as huggingface_hub
            with _soft_lock(path, etag, on_wait, interrupt):
                yield

    # snapshots and refs --------------------------------------------------------------------------
    def snapshot_dir(self, commit: str) -> Path:
        return self.snapshots / commit

    def snapshot_path(self, commit: str, path: str) -> Path:
        return self.snapshot_dir(commit) / safe_relpath(path)

    def link_target(self, commit: str, path: str, etag: str) -> str:
        """The relative symlink target huggingface_hub writes: `../../blobs/{etag}` (+ `../` per folder)."""
        return "../" * (len(safe_relpath(path).parts) + 1) + f"blobs/{etag}"

    def is_linked(self, commit: str, path: str, etag: str) -> bool:
        link = self.snapshot_path(commit, path)
        try:
            return os.readlink(link) == self.link_target(commit, path, etag)
        except OSError:
            return False

    def link(self, commit: str, path: str, etag: str) -> None:
        """Point snapshots/{commit}/{path} at the blob."""
        self.link_all(commit, [(path, etag)])

    def link_all(self, commit: str, files: Iterable[tuple[str, str]]) -> None:
        """Point snapshots/{commit}/{path} at each (path, etag)'s blob.

        A new link is made in place (`symlink` is atomic); one that points elsewhere is replaced by
        a temp link renamed over it. Each folder is made and checked once: a symlinked folder on the
        way must not lead links outside the snapshot.
        """
        snapshot = self.snapshot_dir(commit)
        snapshot.mkdir(parents=True, exist_ok=True)
        real_snapshot = snapshot.resolve()
        checked: set[Path] = set()
        for path, etag in files:
            link = self.snapshot_path(commit, path)
            if link.parent not in checked:
                link.parent.mkdir(parents=True, exist_ok=True)
                parent = link.parent.resolve()
                if parent != real_snapshot and real_snapshot not in parent.parents:
                    raise IntegrityError(
                        f"refusing to link {path!r}: its folder leads outside {real_snapshot}"
                    )
                checked.add(link.parent)
            target = self.link_target(commit, path, etag)
            try:
                os.symlink(target, link)
            except FileExistsError:
                self._replace_link(link, target, path)

    @staticmethod
    def _replace_link(link: Path, target: str, path: str) -> None:
        with contextlib.suppress(OSError):
            if os.readlink(link) == target:
                return
        if link.is_dir() and not link.is_symlink():
            raise IntegrityError(f"cannot link {path}: a folder of that name exists in {link.parent}")
        tmp = link.with_name(f".{link.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def tree_path(self, commit: str) -> Path:
        """huggingface_hub's file listing of a commit (it writes one; prefetch does not, see docs/offline.md)."""
        return self.folder / "trees" / f"{commit}.json"

    def ref_path(self, revision: str) -> Path:
        return self.refs / safe_relpath(revision)

    def read_ref(self, revision: str) -> str | None:
        """The commit a ref names, as huggingface_hub reads it (verbatim); None when there is none."""
        try:
            return self.ref_path(revision).read_bytes().decode("utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write_ref(self, revision: str, commit: str) -> None:
        """refs/{revision} = commit, without newline; nothing to write when the revision is the commit."""
        if revision == commit or self.read_ref(revision) == commit:
            return
        ref = self.ref_path(revision)
        ref.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(ref, commit.encode())


class BlobIndex:
    """Which repo folders of a cache hold which blobs: listed once per run, then kept up to date by
    `add`, so a blob another repo already has is hard-linked instead of downloaded again."""

    def __init__(self) -> None:
        self._folders: dict[Path, dict[str, set[Path]]] = {}  # cache root -> etag -> repo folders
        self._lock = threading.Lock()

    def _index(self, root: Path) -> dict[str, set[Path]]:
        with self._lock:
            index = self._folders.get(root)
            if index is None:
                index = self._folders[root] = {}
                for folder in repo_folders(root):
                    for name in _blob_names(folder / "blobs"):
                        index.setdefault(name, set()).add(folder)
            return index

    def add(self, cache: RepoCache, etag: str) -> None:
        index = self._index(cache.root)
        with self._lock:
            index.setdefault(etag, set()).add(cache.folder)

    def find_elsewhere(self, cache: RepoCache, etag: str, size: int) -> Path | None:
        """The same blob (by name and size) in another repo's folder; checked on disk, not trusted."""
        index = self._index(cache.root)
        with self._lock:
            folders = sorted(index.get(etag, ()))
        for folder in folders:
            candidate = folder / "blobs" / etag
            if folder == cache.folder:
                continue
            with contextlib.suppress(OSError):
                info = candidate.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_size == size:
                    return candidate
        return None


def _blob_names(blobs: Path) -> list[str]:
    try:
        with os.scandir(blobs) as entries:
            return [
                e.name for e in entries if ".prefetch-" not in e.name and e.is_file(follow_symlinks=False)
            ]
    except OSError:
        return []


def is_regular_blob(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


LOCK_POLL = 0.2  # seconds between tries for a blob lock another process holds
LOCK_MODE = 0o664  # as huggingface_hub (filelock) makes lock files: any user of a shared cache can lock


def _open_lock_file(path: Path) -> int:
    """An fd of the blob's lock file, made (group-writable) if missing.

    The same file and the same `flock` as huggingface_hub's `filelock.FileLock`, so the two exclude
    each other, in 3 system calls instead of filelock's ~50 (it matters for thousands of small files).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, LOCK_MODE)
        with contextlib.suppress(OSError):
            os.fchmod(fd, LOCK_MODE)  # past the umask
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR)
        except PermissionError:  # another user's lock file: a read-only fd can hold a flock too
            fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _open_lock_file(path)
    return fd


def _try_flock(fd: int) -> bool | None:
    """Take the exclusive flock if free: True, False if held elsewhere, None if flock is unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def _wait_for(
    try_lock: Callable[[], bool | None],
    etag: str,
    on_wait: Callable[[], None] | None,
    interrupt: Callable[[], None] | None,
) -> bool:
    """Poll `try_lock` until it takes the lock (True) or cannot work here (False); `interrupt` may
    raise to give up, `on_wait` is told once that another process holds it."""
    waited_since: float | None = None
    last_log = 0.0
    while True:
        if interrupt is not None:
            interrupt()
        taken = try_lock()
        if taken is not False:
            return bool(taken)
        now = time.monotonic()
        if waited_since is None:
            waited_since = now
            if on_wait is not None:
                on_wait()
        if now - last_log >= 10:
            last_log = now
            log.info("waiting for another process to finish downloading %s", etag[:12])
        time.sleep(LOCK_POLL)


@contextlib.contextmanager
def _soft_lock(
    path: Path, etag: str, on_wait: Callable[[], None] | None, interrupt: Callable[[], None] | None
) -> Iterator[None]:
    from filelock import SoftFileLock, Timeout  # rarely needed: not imported by every run

    lock = SoftFileLock(str(path))

    def try_lock() -> bool:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    _wait_for(try_lock, etag, on_wait, interrupt)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.release()
