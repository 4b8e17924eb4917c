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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

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


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux (or not glibc): writeback starts at the fsync
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _sync_file_range()
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


def _syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux (or not glibc): files are fsynced one by one
        return None
    function.argtypes = (ctypes.c_int,)
    function.restype = ctypes.c_int
    return cast(Callable[[int], int], function)


_SYNCFS = _syncfs()


def sync_filesystem(path: Path) -> bool:
    """Make everything written to `path`'s filesystem durable with one call (Linux `syncfs`): for
    many small files, one flush instead of an fsync each. False where there is no `syncfs`."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
    return True


def fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable."""
    fsync_file(path)


def fsync_file(path: Path) -> None:
    """Make a file's data (or a folder's entries) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` (whose folder must exist): temp file, [fsync], rename, [fsync folder].

    The temporary file is removed when anything fails, Ctrl-C included (a full disk must not
    leave litter behind).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)  # umask applies
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)
