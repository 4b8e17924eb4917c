"""Blob locks as huggingface_hub takes them: an exclusive `flock` on `.locks/{repo folder}/{etag}.lock`
(`filelock.FileLock`), falling back to its `SoftFileLock` where the filesystem has no flock. Which
file is whose is `cache.RepoCache`'s; this module only opens, takes and waits."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prefetch.errors import IntegrityError
from prefetch.files import NEW_FILE_FLAGS, NOFOLLOW_READ, unlink_at

log = logging.getLogger("prefetch")

LOCK_POLL = 0.2  # seconds between tries for a blob lock another process holds
LOCK_MODE = 0o664  # as huggingface_hub (filelock) makes lock files: any user of a shared cache can lock


def open_lock_file(dir_fd: int, name: str) -> int:
    """An fd of the blob's lock file `name` in `dir_fd`, made (group-writable) if missing.

    The same file and the same `flock` as huggingface_hub's `filelock.FileLock`, so the two exclude
    each other, in a few system calls instead of filelock's ~50 (it matters for thousands of small
    files). Never through a link: a symlink or a non-file planted under the name is replaced.
    """
    for _ in range(3):  # a name replanted in between is met again, a bounded number of times
        try:
            fd = os.open(name, os.O_RDWR | NEW_FILE_FLAGS, LOCK_MODE, dir_fd=dir_fd)
            with contextlib.suppress(OSError):
                os.fchmod(fd, LOCK_MODE)  # past the umask
            return fd
        except FileExistsError:
            pass
        try:
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except PermissionError:  # another user's lock file: a read-only fd can hold a flock too
            fd = os.open(name, NOFOLLOW_READ, dir_fd=dir_fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOENT):
                raise
            unlink_at(dir_fd, name)
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        unlink_at(dir_fd, name)
    raise IntegrityError(f"cannot take the lock {name}: something keeps replacing it")


def try_flock(fd: int) -> bool | None:
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


def wait_for(
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
def soft_lock(
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

    wait_for(try_lock, etag, on_wait, interrupt)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.release()
