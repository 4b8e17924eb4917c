"""Durable, atomic file writes and the umask: shared by the cache, the lockfile and the CLI.

A reader sees a file's old content or its new content, never a torn one; a failed write
leaves no temporary file behind; new files get the mode `open()` would give (the umask applies),
so group-shared caches stay shared.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from prefetch.errors import UnsafeFolder

_UMASK_LOCK = threading.Lock()


def _umask_by_setting() -> int:
    """The umask via os.umask (set and restore): only where /proc is missing, and serialized."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_by_setting()  # at import, before any worker thread can create files


def current_umask() -> int:
    """The process umask, read without changing it.

    Why: `os.umask()` can only be read by setting it, and a worker thread creating a file in that
    instant would get the temporary mask. Linux publishes it in /proc/self/status instead.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


def file_mode() -> int:
    """Mode of new blobs and refs: what `open()` would give, so group-shared caches (umask 002) stay shared."""
    return 0o666 & ~current_umask()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _libc_function(name: str, *argtypes: Any) -> Any:
    """A libc function through ctypes (returning int, setting errno), or None where libc has none."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # not Linux (or not glibc)
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


# Writeback starts at the fsync where it is missing.
_SYNC_FILE_RANGE = cast(
    "Callable[[int, int, int, int], int] | None",
    _libc_function("sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint),
)
_SYNCFS = cast("Callable[[int], int] | None", _libc_function("syncfs", ctypes.c_int))
_SYNC_FILE_RANGE_WRITE = 2  # from linux/fs.h: start writeback of the range's dirty pages, do not wait


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing bytes just written to disk, without waiting (Linux `sync_file_range`).

    Why: the kernel otherwise holds a download's dirty pages until the fsync before the rename,
    which then writes the whole file while the CPU idles (~0.4 s per GiB here); started early,
    the writes overlap the download and that fsync has little left to do. Durability still comes
    from the fsync alone.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a failure only means no head start


def release_pages(fd: int, offset: int, length: int) -> None:
    """Drop [offset, offset + length) (0: to the end) of a file being written from the page cache, as far
    as it is on disk: pages still dirty or being written stay (`POSIX_FADV_DONTNEED` skips them).

    Why: nobody reads a download's bytes soon. Kept, 100 GB of models warming a node's cache evict
    the page cache of the workload running there; and on a VM whose host takes back free memory (here:
    virtio-balloon free page reporting), every fresh page costs the host a fault: writing 1 GiB took
    ~4 s of system time, against 0.3 s into pages freed a moment before. Dropped a little behind the
    writes, a download recycles the same few MiB of pages. Nothing waits for the disk here: a wait
    in the thread that hashes held back the hash of a 1 GiB file (1.3 x slower in one benchmark run).
    """
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def can_sync_filesystem() -> bool:
    return _SYNCFS is not None


def sync_filesystem(fd: int) -> None:
    """Make every write to the filesystem of `fd` durable (Linux `syncfs`): for a batch of new
    files, one flush instead of an fsync each. It flushes the writes of other processes too."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available here")
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- a folder others can write to -----------------------------------------------------------------
# In a group-shared cache any member can plant a symlink (or a file) under a name another member's
# run will open. So below a cache's root nothing is followed: folders are walked one component at a
# time with O_NOFOLLOW, files are opened relative to their folder's fd with O_NOFOLLOW, and new
# files are made with O_EXCL (which never follows a link, not even a dangling one).
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
NOFOLLOW_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a planted FIFO must not block


def open_folder(root: Path, parts: Iterable[str], *, create: bool = True) -> int:
    """An fd of `root/parts...`: `root` is the operator's (it may be a link), every part below it is
    opened without following links and made (umask applies) when missing and `create`.

    Raises UnsafeFolder when a part is a symlink or not a folder, FileNotFoundError when a part is
    missing and not `create`.
    """
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        where = root
        for name in parts:
            where = where / name
            try:
                child = os.open(name, FOLDER_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                child = _open_child_folder(fd, name, where)
            except OSError as e:
                raise _unsafe_folder(where, e) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child_folder(fd: int, name: str, where: Path) -> int:
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=fd)
    except OSError as e:
        raise _unsafe_folder(where, e) from None


def _unsafe_folder(where: Path, exc: OSError) -> OSError | UnsafeFolder:
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
        return exc
    try:
        what = "a symlink" if stat.S_ISLNK(where.lstat().st_mode) else "not a folder"
    except OSError:
        what = "not a folder"
    return UnsafeFolder(
        f"refusing to write through {where}: it is {what}, where the cache has a folder of its own (it "
        "could lead outside the cache; in a shared cache another user may have planted it). Remove it "
        "and run again."
    )


@contextlib.contextmanager
def opened_folder(root: Path, parts: Iterable[str], *, create: bool = True) -> Iterator[int]:
    """`open_folder` as a context manager: the fd is closed on exit."""
    fd = open_folder(root, parts, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def create_new(dir_fd: int, name: str, flags: int = os.O_WRONLY, mode: int = 0o666) -> int:
    """A new file `name` in the folder `dir_fd`, ours alone: O_EXCL, so a planted link is never
    followed. A name already there (litter of a killed run, or planted) is unlinked and made again."""
    try:
        return os.open(name, flags | NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return os.open(name, flags | NEW_FILE_FLAGS, mode, dir_fd=dir_fd)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """Write all of `data` to `fd` (`os.write` may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_at(dir_fd: int, *names: str) -> int:
    """Unlink these names of `dir_fd` (the names themselves: a link is never followed); how many were there."""
    removed = 0
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
            removed += 1
    return removed


def open_regular(name: str | Path, dir_fd: int | None = None, *, follow: bool = False) -> int:
    """A read-only fd of the regular file `name` (in `dir_fd`): never through a link (unless `follow`), and
    never waiting. Anything else under the name is an OSError: a link (ELOOP), or a FIFO, a device or a
    folder (EINVAL, "not a regular file"), checked on the open fd, so nothing can be swapped in between.

    Why: in a shared cache another user may plant anything under a name prefetch reads. A FIFO opened the
    usual way blocks until someone writes to it (a node-warming loop would wait forever), and one with a
    writer never ends; O_NONBLOCK opens it at once, and the type check refuses it before any read.
    """
    flags = NOFOLLOW_READ & ~(0 if not follow else os.O_NOFOLLOW)
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(name))
        os.set_blocking(fd, True)  # (a regular file never blocks; reads of it must not fail with EAGAIN)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(dir_fd: int | None, name: str | Path, limit: int, *, follow: bool = False) -> bytes:
    """The content of the regular file `name` in `dir_fd` (`open_regular`), at most `limit` bytes: a
    bigger file is an OSError (EFBIG), refused before it is read, so a planted file of gigabytes (or one
    that grows while it is read) costs nothing."""
    fd = open_regular(name, dir_fd, follow=follow)
    try:
        if os.fstat(fd).st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(name))
        chunks, total = [], 0
        while total <= limit and (chunk := os.read(fd, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(name))
        return b"".join(chunks)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Iterable[bytes], *, durable: bool = True) -> None:
    """Write `data` to `path` (whose folder must exist): temp file, [fsync], rename, [fsync folder]."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        atomic_write_at(dir_fd, path.name, data, durable=durable)
    finally:
        os.close(dir_fd)


def temp_name(name: str) -> str:
    """The temp file `atomic_write_at` writes `name` through: `.{name}.{pid}.{thread}.tmp`."""
    return f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"


def atomic_write_at(dir_fd: int, name: str, data: bytes | Iterable[bytes], *, durable: bool = True) -> None:
    """Write `data` (bytes, or chunks of them: a big lockfile is never one string in memory) to `name` in
    the folder `dir_fd`: temp file (O_EXCL), [fsync], rename, [fsync folder].

    The temporary file is removed when anything fails, Ctrl-C included (a full disk must not
    leave litter behind).
    """
    tmp = temp_name(name)
    fd = create_new(dir_fd, tmp)  # umask applies
    try:
        try:
            for chunk in [data] if isinstance(data, bytes) else data:
                write_all(fd, chunk)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if durable:
        os.fsync(dir_fd)
