"""The Hugging Face cache layout, owned here and nowhere else.

    {cache}/models--org--name/blobs/{etag}                  complete, verified bytes only
    {cache}/models--org--name/blobs/{etag}.prefetch-partial  bytes in flight (+ `.json` state: done ranges)
    {cache}/models--org--name/blobs/{sha256}.prefetch-xet    a Xet-backed blob's chunk runs (`xet.sources`)
    {cache}/models--org--name/snapshots/{commit}/{path}     relative symlink to ../../blobs/{etag}
    {cache}/models--org--name/refs/{revision}               commit hash, no trailing newline
    {cache}/models--org--name/trees/{commit}.json           huggingface_hub's listing (prefetch writes none)
    {cache}/.locks/models--org--name/{etag}.lock            the per-blob lock huggingface_hub takes too
    {cache}/.locks/.prefetch-staging/                       unbundle's blobs until they are verified

A bundle's members mirror this layout: a member's name is its path relative to the cache root
(`RepoCache.relpath`).

Order of visibility: blob (fsync; rename; fsync of blobs/; a small blob: unnamed file, `syncfs` of its
batch, link to its name) -> snapshot link -> ref. A reader therefore never sees a link to a blob that is
not complete and verified.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import posixpath
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from prefetch.errors import DiskSpaceError, IntegrityError, filesystem_error
from prefetch.files import (
    NOFOLLOW_READ,
    atomic_write_at,
    create_new,
    file_mode,
    is_disk_full,
    open_folder,
    open_regular,
    opened_folder,
    read_regular,
    release_pages,
    temp_name,
    unlink_at,
    write_all,
)
from prefetch.flock import open_lock_file, soft_lock, try_flock, wait_for
from prefetch.hashing import hash_fd
from prefetch.hfhub import repo_folder_name
from prefetch.paths import unsafe_path_reason

log = logging.getLogger("prefetch")

PARTIAL_SUFFIX = ".prefetch-partial"
STATE_SUFFIX = ".prefetch-partial.json"
XET_SUFFIX = (
    ".prefetch-xet"  # beside a blob fetched through Xet: where its chunks lie (what an update reuses)
)
# The resume state's temp file (`files.temp_name`), which a kill -9 mid-write leaves behind.
STATE_TEMP = re.compile(r"\.([0-9a-f]{40}|[0-9a-f]{64})\.prefetch-partial\.json\.\d+\.\d+\.tmp")
# The most bytes read of a file another member of a shared cache may have planted (`files.read_regular`):
MAX_REF_BYTES = 4096  # a ref holds a commit hash (40 hex digits)
MAX_STATE_BYTES = 8 * 1024 * 1024  # resume state: a range per segment (a 1 TB file in 16 MiB segments: ~2 MB)


_MISSING = -1  # a kept folder found missing (no fd)


def each_once(caches: Iterable[RepoCache]) -> list[RepoCache]:
    """These repo folders, each once (many files share one), in their first order."""
    return list({id(c): c for c in caches}.values())


@contextlib.contextmanager
def folders_kept_open(caches: Iterable[RepoCache]) -> Iterator[None]:
    """`RepoCache.folders_kept_open` for each of these (each once)."""
    with contextlib.ExitStack() as kept:
        for cache in each_once(caches):
            kept.enter_context(cache.folders_kept_open())
        yield


def repo_folders(root: Path) -> list[Path]:
    """The repo folders of a cache (`models--org--name`, ...), sorted; none when the cache is missing."""
    try:
        return sorted(p for p in root.iterdir() if "--" in p.name and p.is_dir())
    except FileNotFoundError:
        return []


def staging_dir(root: Path) -> Path:
    """Where unbundle stages blobs: under `.locks/`, which huggingface_hub's `scan_cache_dir` skips."""
    return root / ".locks" / ".prefetch-staging"


def check_relpath(path: str) -> str:
    """`path`, a repo file path that cannot escape its snapshot folder; anything else is refused."""
    if unsafe_path_reason(path):
        raise IntegrityError(f"refusing unsafe file path from the server: {path!r}")
    return path


def safe_relpath(path: str) -> PurePosixPath:
    """`check_relpath`, as a path."""
    return PurePosixPath(check_relpath(path))


@functools.cache
def boot_id() -> str | None:
    """This boot's id: a partial file's state written under another boot only trusts fsynced ranges."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class NewBlob:
    """A small blob written to an unnamed file (`RepoCache.write_new_blob`), open until it is named."""

    cache: RepoCache
    fd: int
    name: str  # its blob name: a sha256 (64 hex digits) or a git blob sha1
    size: int


class RepoCache:
    """One repo's folder in the cache."""

    def __init__(self, root: Path, repo_id: str, repo_type: str, folder_name: str | None = None) -> None:
        self.root = root
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.folder = root / (folder_name or repo_folder_name(repo_id, repo_type))
        self.blobs = self.folder / "blobs"
        self.snapshots = self.folder / "snapshots"
        self.refs = self.folder / "refs"
        self._kept: dict[tuple[str, ...], int] = {}  # folders opened once while `folders_kept_open`
        self._keepers = 0
        self._kept_lock = threading.Lock()
        self.partials = PartialFiles(self)
        self.installer = BlobInstaller(self)

    def __reduce__(self) -> tuple[type[RepoCache], tuple[Path, str, str, str]]:
        """Pickled as what names it (for another process): the fds it keeps open are this process's; its
        folder's name comes along, so the other process need not import huggingface_hub to name it."""
        return RepoCache, (self.root, self.repo_id, self.repo_type, self.folder.name)

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
        try:  # a str path: asked once per file per run, a Path's construction cost more than the lstat
            st = os.lstat(f"{self.blobs}/{etag}")
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def blobs_folder(self, *, create: bool = True) -> contextlib.AbstractContextManager[int]:
        """The fd of `blobs/`, reached without following any link below the cache root (see
        `files.open_folder`): every file of it is opened relative to this fd."""
        return self._folder((self.folder.name, "blobs"), create)

    @contextlib.contextmanager
    def folders_kept_open(self) -> Iterator[None]:
        """While held, `blobs/` and the lock folder are walked and opened once, not once per file
        (for thousands of small files, the walks were a third of the system calls). The folders
        reached are the same: opened the same way, only kept until the last holder leaves."""
        with self._kept_lock:
            self._keepers += 1
        try:
            yield
        finally:
            with self._kept_lock:
                self._keepers -= 1
                kept, self._kept = ({}, self._kept) if self._keepers else (self._kept, {})
            for fd in kept.values():
                if fd != _MISSING:
                    os.close(fd)

    @contextlib.contextmanager
    def _folder(self, parts: tuple[str, ...], create: bool = True) -> Iterator[int]:
        with self._kept_lock:
            fd = self._kept.get(parts) if self._keepers else None
            if self._keepers and (fd is None or (fd == _MISSING and create)):
                try:
                    fd = self._kept[parts] = open_folder(self.root, parts, create=create)
                except FileNotFoundError:
                    self._kept[parts] = _MISSING  # asked again per file: remembered until made
                    raise
            if fd == _MISSING:
                raise FileNotFoundError(errno.ENOENT, "no such folder", str(self.root.joinpath(*parts)))
        if fd is not None:
            yield fd
            return
        with opened_folder(self.root, parts, create=create) as fd:
            yield fd

    def partial_path(self, etag: str) -> Path:
        return self.blobs / (etag + PARTIAL_SUFFIX)

    def state_path(self, etag: str) -> Path:
        return self.blobs / (etag + STATE_SUFFIX)

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
        fd = self._open_lock_file(etag)
        try:
            locked = wait_for(lambda: try_flock(fd), etag, on_wait, interrupt)
            if locked:
                yield
        finally:
            os.close(fd)  # releases the lock
        if not locked:  # a filesystem without flock: the same fallback as huggingface_hub
            with soft_lock(path, etag, on_wait, interrupt):
                yield

    @contextlib.contextmanager
    def blob_lock_if_free(self, etag: str) -> Iterator[bool]:
        """Hold the blob's lock if nobody does (True), without waiting; False: busy, or no flock here."""
        fd = self._open_lock_file(etag)
        try:
            yield try_flock(fd) is True
        finally:
            os.close(fd)

    def _open_lock_file(self, etag: str) -> int:
        with self._folder((".locks", self.folder.name)) as dir_fd:
            return open_lock_file(dir_fd, f"{etag}.lock")

    # snapshots and refs --------------------------------------------------------------------------

    def snapshot_dir(self, commit: str) -> Path:
        return self.snapshots / commit

    def snapshot_path(self, commit: str, path: str) -> Path:
        return self.snapshot_dir(commit) / safe_relpath(path)

    def link_target(self, commit: str, path: str, etag: str) -> str:
        """The relative symlink target huggingface_hub writes: `../../blobs/{etag}` (+ `../` per folder)."""
        return _link_target(check_relpath(path), etag)  # checked, so its '/'s are its folders

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

        Each folder is walked without following links (a symlinked folder, planted or not, would
        lead links outside the snapshot: refused) and listed, once: a name it lacks gets its link in
        place (`symlink` is atomic), a name it has is read and, if it points elsewhere, replaced by
        a temp link renamed over it. A re-sync of an up-to-date snapshot is one `readlink` per file.
        """
        by_folder: dict[str, list[tuple[str, str]]] = {}
        for path, etag in files:
            parent, _, name = check_relpath(path).rpartition("/")
            by_folder.setdefault(parent, []).append((name, etag))
        snapshot = (self.folder.name, "snapshots", commit)
        for parent, links in by_folder.items():
            up = _blobs_from(parent)
            with opened_folder(self.root, (*snapshot, *(parent.split("/") if parent else ()))) as dir_fd:
                present = set(os.listdir(dir_fd))
                for name, etag in links:
                    target = up + etag
                    try:
                        if name not in present:
                            os.symlink(target, name, dir_fd=dir_fd)
                            continue
                        if os.readlink(name, dir_fd=dir_fd) == target:
                            continue
                    except OSError:
                        pass  # there after all, or not a link: looked at closely below
                    self._replace_link(dir_fd, commit, parent, name, target)

    def _replace_link(self, dir_fd: int, commit: str, parent: str, name: str, target: str) -> None:
        """Point an existing snapshot entry at its blob; say so when it was not a link into `blobs/`."""
        try:
            current: str | None = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            current = None
        if current == target:
            return
        where = self.snapshot_dir(commit) / parent / name
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:  # removed since the folder was listed: linked anew below
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IntegrityError(
                f"cannot link {parent}/{name}: a folder of that name exists in {where.parent}"
            )
        if st is None:
            found = ""
        elif current is None:
            found = "a regular file" if stat.S_ISREG(st.st_mode) else "not a symlink"
        elif not _is_blob_target(commit, parent, current):
            found = f"a symlink to {current!r}, outside this repo's blobs/"
        else:
            found = ""  # a link to another of its blobs: re-pointed without a word
        if found:
            log.warning("snapshot entry %s was %s; replaced by a link to its blob", where, found)
        tmp = f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        os.symlink(target, tmp, dir_fd=dir_fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def tree_path(self, commit: str) -> Path:
        """huggingface_hub's file listing of a commit (it writes one; prefetch does not, see docs/offline.md)."""
        return self.folder / "trees" / f"{commit}.json"

    def ref_path(self, revision: str) -> Path:
        return self.refs / safe_relpath(revision)

    def read_ref(self, revision: str) -> str | None:
        """The commit a ref names, as huggingface_hub reads it (verbatim); None when there is none.

        Reached without following a link below the cache root (`UnsafeFolder`), read only if it is a
        regular file of at most MAX_REF_BYTES (else OSError, `files.read_regular`): whatever another
        member of a shared cache planted there is reported, never waited on or read whole.
        """
        rel = safe_relpath(revision)
        try:
            with opened_folder(self.root, (self.folder.name, "refs", *rel.parts[:-1]), create=False) as fd:
                data = read_regular(fd, rel.name, MAX_REF_BYTES)
        except FileNotFoundError:
            return None
        return data.decode("utf-8", errors="replace")

    def write_ref(self, revision: str, commit: str) -> None:
        """refs/{revision} = commit, without newline; nothing to write when the revision is the commit."""
        if revision == commit:
            return
        rel = safe_relpath(revision)
        with opened_folder(self.root, (self.folder.name, "refs", *rel.parts[:-1])) as dir_fd:
            with contextlib.suppress(OSError):
                if read_regular(dir_fd, rel.name, MAX_REF_BYTES) == commit.encode():
                    return
            try:
                atomic_write_at(dir_fd, rel.name, commit.encode())
            except OSError as e:  # named by the ref, not by the temporary file renamed onto it
                raise (
                    filesystem_error(e, f"the ref {self.ref_path(revision)}", with_filename=False) or e
                ) from None


class PartialFiles:
    """A repo folder's partial downloads: `blobs/{etag}.prefetch-partial` and its resume state (the byte
    ranges written, and those fsynced), which the next run resumes from."""

    def __init__(self, cache: RepoCache) -> None:
        self.cache = cache

    def read_partial_state(self, etag: str, size: int) -> list[tuple[int, int]]:
        """Byte ranges of the partial file already written and recorded, or [] if nothing usable.

        After a reboot (another boot id) only the ranges that were fsynced before the state was
        saved are trusted: the others may have been lost with the page cache.
        """
        try:
            with self.cache.blobs_folder(create=False) as fd:
                state = json.loads(read_regular(fd, etag + STATE_SUFFIX, MAX_STATE_BYTES))
                partial = os.stat(etag + PARTIAL_SUFFIX, dir_fd=fd, follow_symlinks=False)
            partial_size = partial.st_size if stat.S_ISREG(partial.st_mode) else 0
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
        try:
            with self.cache.blobs_folder() as fd:
                atomic_write_at(fd, etag + STATE_SUFFIX, _state_json(size, done, synced), durable=False)
        except OSError as e:
            if is_disk_full(e):
                raise DiskSpaceError(f"disk full while saving download state in {self.cache.blobs}") from e
            raise

    def state_in_place(self, etag: str) -> StateInPlace:
        """A writer of `etag`'s resume state that rewrites it in place (see `StateInPlace`)."""
        return StateInPlace(self, etag)

    def discard_partial(self, etag: str) -> None:
        with contextlib.suppress(FileNotFoundError), self.cache.blobs_folder(create=False) as fd:
            unlink_at(fd, etag + PARTIAL_SUFFIX, etag + STATE_SUFFIX)

    def open_partial(self, etag: str, label: str) -> tuple[int, bool]:
        """A read-write fd of the blob's partial file, and whether its bytes may be resumed.

        Resumed only when what the name holds is a regular file with no other name: then, whoever
        made it (another member of a shared cache, whose partial files are group-writable), writing
        it cannot reach any file outside the cache. Anything else (a symlink, planted to make this
        run write a file of its choosing; a hard link; a private file of another user) is unlinked,
        said, and a new file of ours is made with O_EXCL.
        """
        name = etag + PARTIAL_SUFFIX
        with self.cache.blobs_folder() as dir_fd:
            try:
                fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                found = ""
            except PermissionError:  # left by a user whose umask kept it private
                found = "the private partial file of another user"
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                found = f"a symlink to {_readlink_at(dir_fd, name)!r} (not followed)"
            else:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    return fd, True
                os.close(fd)
                found = "a file with other hard links" if stat.S_ISREG(st.st_mode) else "not a regular file"
            if found:
                log.warning(
                    "%s: %s was %s; starting it over in a new file",
                    label,
                    self.cache.partial_path(etag),
                    found,
                )
            unlink_at(dir_fd, name, etag + STATE_SUFFIX)
            # Group-writable where the umask allows it, so another user of a shared cache can resume it.
            return create_new(dir_fd, name, os.O_RDWR, file_mode()), False

    def has_partial(self, etag: str) -> bool:
        """A partial file or its state is there (whatever it is: never followed). A question only:
        `lstat`s as in `has_blob`, not a walk of the folders."""
        for suffix in (PARTIAL_SUFFIX, STATE_SUFFIX):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.lstat(f"{self.cache.blobs}/{etag}{suffix}")
                return True
        return False

    def discard_stale_partial(self, etag: str, size: int) -> bool:
        """Remove a partial download whose blob is complete after all (another process finished it).

        Taken under the blob's lock, so a download in progress is never touched. Returns whether
        anything was removed.
        """
        if not self.has_partial(etag) or not self.cache.has_blob(etag, size):
            return False
        with self.cache.blob_lock(etag):
            if not self.cache.has_blob(etag, size):
                return False
            self.discard_partial(etag)
        return True

    def sweep_partials(self) -> set[str]:
        """List `blobs/` once: remove the resume-state temp files a run killed mid-write left
        (`STATE_TEMP`), and return the etags that have a partial file or its state (bytes to resume,
        or litter to discard when the blob is complete after all: `discard_stale_partial`).

        A temp file is removed only under its blob's lock, taken without waiting: whoever holds it
        may be writing one right now. Names are matched exactly and unlinked, never followed.
        """
        partials: set[str] = set()
        try:
            with self.cache.blobs_folder(create=False) as dir_fd:
                for name in os.listdir(dir_fd):
                    if name.endswith((PARTIAL_SUFFIX, STATE_SUFFIX)) and not name.startswith("."):
                        partials.add(name.split(".", 1)[0])
                    match = STATE_TEMP.fullmatch(name)
                    if match is None:
                        continue
                    # Best effort: a read-only cache cannot take the lock, a folder of that name is not ours.
                    with contextlib.suppress(OSError), self.cache.blob_lock_if_free(match.group(1)) as free:
                        if free:
                            unlink_at(dir_fd, name)
        except FileNotFoundError:
            pass
        return partials


def _state_json(size: int, done: list[tuple[int, int]], synced: list[tuple[int, int]] | None) -> bytes:
    state = {"size": size, "done": done, "synced": synced or [], "boot_id": boot_id()}
    return json.dumps(state).encode()


IN_PLACE_MAX = 4096  # bytes: a state of one page at most is rewritten in place (one write, never cut)


class StateInPlace:
    """A partial file's resume state rewritten in place: the same JSON as `write_partial_state`, in one
    `pwrite` at offset 0, padded with spaces over a longer earlier one (JSON allows them).

    Why: replacing a file by a rename costs ~0.33 ms on ext4 here (it flushes the new file's data first)
    where a `pwrite` costs 0.4 µs: saved every 256 KiB, as the Xet reader does to lose little to a
    `kill -9`, renames took a third of its CPU time. A kill cannot cut a write of one page in two (the
    kernel checks for a fatal signal between pages), so a state of at most `IN_PLACE_MAX` bytes is
    written so; a longer one, and the first one (which makes the file, as `write_partial_state` does:
    a temp file renamed over the name), go through the rename. Used by one writer at a time: the
    holder of the blob's lock.
    """

    def __init__(self, partials: PartialFiles, etag: str) -> None:
        self._partials = partials
        self._etag = etag
        self._fd: int | None = None
        self._length = 0  # of the longest state written in place: a shorter one is padded to it

    def write(self, size: int, done: list[tuple[int, int]], synced: list[tuple[int, int]] | None) -> None:
        data = _state_json(size, done, synced)
        try:
            if self._fd is None or len(data) > IN_PLACE_MAX:
                self.close()
                if len(data) <= IN_PLACE_MAX:
                    self._fd = self._made(data)
                    self._length = len(data)
                else:
                    self._partials.write_partial_state(self._etag, size, done, synced)
                return
            os.pwrite(self._fd, data + b" " * (self._length - len(data)), 0)
            self._length = max(self._length, len(data))
        except OSError as e:
            if is_disk_full(e):
                raise DiskSpaceError(
                    f"disk full while saving download state in {self._partials.cache.blobs}"
                ) from e
            raise

    def _made(self, data: bytes) -> int:
        """A new state file holding `data`, renamed over the name and kept open."""
        name = self._etag + STATE_SUFFIX
        tmp = temp_name(name)
        with self._partials.cache.blobs_folder() as dir_fd:
            fd = create_new(dir_fd, tmp, os.O_RDWR)
            try:
                write_all(fd, data)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
        return fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class BlobInstaller:
    """How verified bytes become a repo folder's blob: named only once complete, durable and verified,
    and checked to be the very file that was verified (a member of a shared cache could swap a name)."""

    def __init__(self, cache: RepoCache) -> None:
        self.cache = cache

    def write_new_blob(self, name: str, data: bytes | bytearray) -> NewBlob | None:
        """Write verified in-memory bytes (a small blob) to a new unnamed file in `blobs/` (O_TMPFILE),
        to be named by `install_new_blob` once durable. None where the filesystem cannot (NFS...):
        then `install_bytes`, under the blob's lock.

        No lock, no temp name: a kill leaves nothing behind (the kernel frees an unnamed file), and
        two writers of one blob each install the same verified bytes. No `chmod`: a new file gets
        the umask's mode (`file_mode()`).
        """
        with self.cache.blobs_folder() as dir_fd:
            try:
                fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    return None
                raise
        try:
            write_all(fd, data)
            return NewBlob(self.cache, fd, name, len(data))
        except BaseException:
            os.close(fd)
            raise

    def install_new_blob(self, new: NewBlob) -> None:
        """Give a `write_new_blob` file, made durable since, its blob name (and close it). A name
        already there is kept if it is that blob (another writer's, at the same time), else replaced."""
        try:
            with self.cache.blobs_folder() as dir_fd:
                for _ in range(2):
                    try:
                        os.link(f"/proc/self/fd/{new.fd}", new.name, dst_dir_fd=dir_fd, follow_symlinks=True)
                        return
                    except FileExistsError:
                        if _is_blob_at(dir_fd, new.name, new.size):
                            return
                        unlink_at(dir_fd, new.name)  # not that blob: planted, or a corrupt one repaired
            raise IntegrityError(
                f"cannot install {self.cache.blob_path(new.name)}: something keeps replacing it"
            )
        finally:
            os.close(new.fd)

    @staticmethod
    def discard_new_blob(new: NewBlob) -> None:
        """Drop a `write_new_blob` file unnamed (the kernel frees it)."""
        os.close(new.fd)

    def install_bytes(self, etag: str, data: bytes | bytearray, *, name: str | None = None) -> None:
        """Make verified in-memory bytes (a small blob) the blob `name` (default `etag`): write the partial
        file, fsync, rename.

        One new file and no state or `chmod` (a new file gets the umask's mode: `file_mode()`).
        The folder's fsync is the caller's, as with `install_blob(sync_folder=False)`. For blobs
        without a partial file (one left by another user could not be truncated).
        """
        partial = etag + PARTIAL_SUFFIX
        with self.cache.blobs_folder() as dir_fd:
            fd = create_new(dir_fd, partial)
            try:
                write_all(fd, data)
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self._rename_checked(dir_fd, partial, name or etag, st)

    def install_blob(
        self,
        etag: str,
        *,
        name: str | None = None,
        sync_folder: bool = True,
        verified_fd: int | None = None,
        source: Path | None = None,
    ) -> None:
        """Make the verified partial file the blob `name` (default `etag`; another when the hash that named
        the download was learned from the bytes): fsync, set mode, rename, fsync the folder.

        `verified_fd`: the open file that was hashed (the download's); else `source`, a verified file
        elsewhere on this filesystem (unbundle's staging), is opened and moved to the partial name;
        else the partial file is opened by name. Held open through the rename, that file is the only
        one that can be installed: another swapped in under the name (by a member of a shared cache)
        is found and refused. The mode is set on the file, never by path, and only on a file of ours.
        `sync_folder=False` leaves the folder's fsync to the caller, who must do it (`fsync_dir`)
        before any snapshot link to the blob is written: one fsync for many blobs.
        """
        partial = etag + PARTIAL_SUFFIX
        with self.cache.blobs_folder() as dir_fd, contextlib.ExitStack() as opened:
            fd = verified_fd
            if fd is None:
                fd = os.open(source or partial, NOFOLLOW_READ, dir_fd=None if source else dir_fd)
                opened.callback(os.close, fd)
            if source is not None:
                os.replace(source, partial, dst_dir_fd=dir_fd)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(f"{self.cache.partial_path(etag)} is not a regular file; not installed")
            os.fsync(fd)
            release_pages(fd, 0, 0)  # on disk now: nobody reads a download's bytes soon (see there)
            mode = file_mode()
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
            self._rename_checked(dir_fd, partial, name or etag, st)
            if sync_folder:
                os.fsync(dir_fd)
            unlink_at(dir_fd, etag + STATE_SUFFIX)

    def install_hard_link(self, etag: str, source: Path, expected: os.stat_result) -> bool:
        """Make a verified identical blob of another repo (`source`, whose lstat was `expected`
        before it was hashed) this repo's blob too, as a hard link; False if it is not that file."""
        self.cache.partials.discard_partial(etag)
        name = etag + PARTIAL_SUFFIX
        with self.cache.blobs_folder() as dir_fd:
            try:
                os.link(source, name, dst_dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                return False
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino) or not stat.S_ISREG(st.st_mode):
                unlink_at(dir_fd, name)  # swapped since it was hashed
                return False
            self._rename_checked(dir_fd, name, etag, st)
        return True

    def _rename_checked(self, dir_fd: int, name: str, etag: str, installed: os.stat_result) -> None:
        """Rename the partial file `name` to the blob, then make sure the blob is the file that was
        verified: a member of a shared cache could swap the name in between."""
        os.replace(name, etag, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        now = os.stat(etag, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (installed.st_dev, installed.st_ino):
            unlink_at(dir_fd, etag)
            raise IntegrityError(
                f"{self.cache.partial_path(etag)} was replaced by another file while it was being installed "
                "(another user of this shared cache?); nothing was installed"
            )


class BlobIndex:
    """Which repo folders of a cache hold which blobs, listed once when first asked, so a blob
    another repo already has is hard-linked instead of downloaded again. Not kept up to date (an
    entry per installed blob cost ~8 MB per 100k files): a new index sees the blobs added since."""

    def __init__(self) -> None:
        # cache root -> etag -> repo folders (a tuple: most blobs are in one folder, and a set costs ~200 B)
        self._folders: dict[Path, dict[str, tuple[Path, ...]]] = {}
        self._lock = threading.Lock()

    def _index(self, root: Path) -> dict[str, tuple[Path, ...]]:
        with self._lock:
            index = self._folders.get(root)
            if index is None:
                index = self._folders[root] = {}
                for folder in repo_folders(root):
                    for name in _blob_names(folder / "blobs"):
                        index[name] = (*index.get(name, ()), folder)
            return index

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


def _is_blob_at(dir_fd: int, name: str, size: int) -> bool:
    """Whether `name` in `dir_fd` is a regular file of `size` bytes that hash to `name` (a blob name)."""
    try:
        fd = open_regular(name, dir_fd)
    except OSError:
        return False
    try:
        return hash_fd(fd, len(name) == 64, size) == (size, name)
    finally:
        os.close(fd)


def _readlink_at(dir_fd: int, name: str) -> str:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return "?"


def _blobs_from(folder: str) -> str:
    """`blobs/` as a snapshot link in `folder` (of the snapshot; "" for its top) reaches it:
    `../../blobs/`, plus `../` per folder level."""
    return "../" * (folder.count("/") + 3 if folder else 2) + "blobs/"


def _link_target(path: str, etag: str) -> str:
    """`RepoCache.link_target` of a path already checked."""
    return _blobs_from(path.rpartition("/")[0]) + etag


def _is_blob_target(commit: str, parent: str, target: str) -> bool:
    """Whether a snapshot link's target, read as the link lies (in the folder `parent` of the
    snapshot), names a blob of its own repo."""
    where = posixpath.normpath(posixpath.join("snapshots", commit, parent, target))
    return re.fullmatch(r"blobs/(?:[0-9a-f]{40}|[0-9a-f]{64})", where) is not None
