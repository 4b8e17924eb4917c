"""Small blobs made durable in batches: each written to an unnamed file (`RepoCache.write_new_blob`),
then one `syncfs` for many of them instead of an fsync each, then each given its blob name.

Why: for thousands of small files the fsync before each rename was a journal commit per file. The
order a reader relies on holds: no blob name appears before its bytes are durable, and the blobs
folder is fsynced (by the engine, once per run) before any snapshot link to them is written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from prefetch.cache import NewBlob
from prefetch.download.job import FileJob
from prefetch.files import can_sync_filesystem, sync_filesystem

# A batch is installed once it holds this many blobs (each an open fd until then)...
BATCH_FILES = 64
BATCH_BYTES = 64 * 1024 * 1024  # ... or this many bytes (what a kill -9 can cost at most: fetched again)
BATCH_WAIT = 0.5  # ... or its first blob has waited this long (seconds: the progress shows it done soon)
# While one thread installs a batch the others go on fetching; one that adds a blob waits only when
# this many are pending (open fds, bytes in memory: the bound on what a slow flush lets pile up).
MAX_PENDING = 4 * BATCH_FILES


class NewBlobs:
    """The small blobs written but not yet named, for one transfer. `add` installs a full batch (in
    the thread that filled it, unless another thread is installing: that one takes the next full
    batch too), a timer one that waited `BATCH_WAIT`, and `install` the rest when the transfer ends
    (whatever its end; it waits for an install in progress).

    Why not wait for the installer: a thread that waits fetches nothing meanwhile, and while one
    batch was flushed (a `syncfs` can take tens of milliseconds) every thread that added a blob
    queued behind it."""

    def __init__(
        self,
        installed: Callable[[FileJob, str], None],
        failed: Callable[[BaseException, FileJob], None],
    ) -> None:
        self._fsync_each = not can_sync_filesystem()  # then a batch is one blob, fsynced
        self._installed = installed
        self._failed = failed
        self._lock = threading.Lock()  # the pending list
        self._installing = threading.Lock()  # one install at a time: the last one waits for the others
        self._pending: list[tuple[FileJob, NewBlob]] = []
        self._bytes = 0
        self._timer: threading.Timer | None = None

    def add(self, job: FileJob, new: NewBlob) -> None:
        with self._lock:
            self._pending.append((job, new))
            self._bytes += new.size
            full = self._full()
            if not full and self._timer is None:
                self._timer = threading.Timer(BATCH_WAIT, self.install)
                self._timer.daemon = True
                self._timer.start()
            wait = len(self._pending) >= MAX_PENDING
        if full:
            self.install(wait=wait)

    def _full(self) -> bool:
        return self._fsync_each or len(self._pending) >= BATCH_FILES or self._bytes >= BATCH_BYTES

    def install(self, *, wait: bool = True) -> None:
        """Make the pending blobs durable (one `syncfs` per filesystem), then name each; again while
        a full batch piled up meanwhile. A failure is its job's; if the flush fails, no blob of the
        batch is named (the kernel frees them). `wait=False`: return at once if another thread is
        installing (it will take this batch)."""
        if not self._installing.acquire(blocking=wait):
            return
        try:
            while True:
                with self._lock:
                    batch, self._pending, self._bytes = self._pending, [], 0
                    timer, self._timer = self._timer, None
                if timer is not None and timer is not threading.current_thread():
                    timer.cancel()
                if batch:
                    self._install(batch)
                with self._lock:  # released under it: an `add` that fills a batch after this installs it
                    if not self._full():
                        self._installing.release()
                        return
        except BaseException:
            self._installing.release()
            raise

    def _install(self, batch: list[tuple[FileJob, NewBlob]]) -> None:
        try:
            if self._fsync_each:
                for _, new in batch:
                    os.fsync(new.fd)
            else:
                for fd in {os.fstat(new.fd).st_dev: new.fd for _, new in batch}.values():
                    sync_filesystem(fd)
        except BaseException as exc:
            for job, new in batch:
                new.cache.installer.discard_new_blob(new)
                if isinstance(exc, Exception):
                    self._failed(exc, job)
            if not isinstance(exc, Exception):
                raise
            return
        for i, (job, new) in enumerate(batch):
            try:
                new.cache.installer.install_new_blob(new)
            except Exception as exc:
                self._failed(exc, job)
            except BaseException:
                for _, unnamed in batch[i + 1 :]:
                    unnamed.cache.installer.discard_new_blob(unnamed)
                raise
            else:
                self._installed(job, new.name)
