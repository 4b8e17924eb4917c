"""A sync's blobs from an OCI image layout folder (`oci:DIR`), verified as the download engine verifies
the Hub's: each blob file of the layout is hashed as the lock names it (sha256 for an LFS file, the git
sha1 for a regular one) and installed under the lock's blob name only when it matches (else exit 5,
nothing installed for that file).

Where the layout is on the cache's filesystem, the verified file is hard-linked (no byte copied; the
same inode, so the link is checked to be the file that was hashed); elsewhere (a removable disk, another
mount), or where the link is refused, its bytes are copied into a partial file, hashed as they are
written, and that file is installed. Files are taken in parallel (hashing is bound by the disk and a
core each), under each blob's lock, as a download would be.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from prefetch.cancel import CancelToken
from prefetch.download.engine import Transfer
from prefetch.download.job import FileJob, TransferStats
from prefetch.errors import AccessError, DiskSpaceError, IntegrityError
from prefetch.files import NOFOLLOW_READ, fsync_dir, is_disk_full, write_all
from prefetch.hashing import READ_BLOCK
from prefetch.run import RunContext


class _LayoutInstall:
    """One run's installs from a layout: its counters, the blob folders to fsync, its stop signal."""

    def __init__(self, ctx: RunContext, file_of: Callable[[FileJob], Path]) -> None:
        self.ctx = ctx
        self.file_of = file_of
        self.stop = CancelToken(parent=ctx.cancel)  # the run's, and any file's failure: stop the others
        self.stats = TransferStats()
        self.folders: set[Path] = set()
        self._lock = threading.Lock()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.stats.bytes_fetched += nbytes
        self.ctx.progress.advance(nbytes)

    def one(self, job: FileJob) -> None:
        self.stop.raise_if_cancelled()
        with job.cache.blob_lock(job.etag, interrupt=self.stop.raise_if_cancelled):
            if Transfer.cached(
                job
            ):  # another process installed it meanwhile (or, `--verify`, it is whole now)
                how = "cached"
            else:
                self.ctx.progress.file_started(job)
                how = self.install(job, self.file_of(job))
        with self._lock:
            self.stats.files_fetched += (
                how != "cached"
            )  # (linked: from the layout, not another repo's folder)
            self.folders.add(job.cache.blobs)
        self.ctx.progress.file_done(job, how)

    def install(self, job: FileJob, source: Path) -> str:
        """Hash `source` and hard-link it ("linked"), or copy it while hashing ("fetched")."""
        try:
            fd = os.open(source, NOFOLLOW_READ)
        except FileNotFoundError:
            raise AccessError(
                f"{job.label}: the layout has no blob {source.name} (an incomplete copy?)"
            ) from None
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode) or found.st_size != job.size:
                raise IntegrityError(
                    f"{job.label}: {source} is not a file of the lock's {job.size} bytes; nothing was installed"
                )
            job.cache.blobs.mkdir(parents=True, exist_ok=True)
            if found.st_dev == os.stat(job.cache.blobs).st_dev:
                self.check(job, source, self.read(fd, job))
                if job.cache.installer.install_hard_link(job.etag, source, found):
                    return "linked"
                os.lseek(fd, 0, os.SEEK_SET)  # refused (permissions, links per inode): copied, hashed again
                self.copy(job, source, fd, counted=True)
            else:
                self.copy(job, source, fd, counted=False)
            return "fetched"
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskSpaceError(f"disk full while installing {job.label} into {job.cache.root}") from exc
            raise
        finally:
            os.close(fd)

    def read(self, fd: int, job: FileJob, out: int | None = None, counted: bool = False) -> Any:
        """Hash the file's bytes (and write them to `out`), at most its size plus one byte; the display
        advances unless they were `counted` already (read once to hash, then again to copy)."""
        hashed, left = job.new_hash(), job.size + 1
        while left and (block := os.read(fd, min(READ_BLOCK, left))):
            self.stop.raise_if_cancelled()
            hashed.update(block)
            if out is not None:
                write_all(out, block)
            left -= len(block)
            if not counted:
                self.advance(len(block))
        if left != 1:
            raise IntegrityError(
                f"{job.label}: the layout's blob changed size while it was read; nothing was installed"
            )
        return hashed

    @staticmethod
    def check(job: FileJob, source: Path, hashed: Any) -> None:
        if job.blob_name(hashed) != job.etag:
            raise IntegrityError(
                f"{job.label}: {source} does not match the lock's hash {job.etag}; nothing was installed"
            )

    def copy(self, job: FileJob, source: Path, fd: int, counted: bool) -> None:
        partials = job.cache.partials
        out, _ = partials.open_partial(job.etag, job.label)
        try:
            os.ftruncate(out, 0)  # (nothing of an earlier download is kept: the whole file is here)
            try:
                self.check(job, source, self.read(fd, job, out, counted))
            except BaseException:
                partials.discard_partial(job.etag)
                raise
            job.cache.installer.install_blob(job.etag, verified_fd=out, sync_folder=False)
        finally:
            os.close(out)


def install_from_layout(
    ctx: RunContext, jobs: list[FileJob], file_of: Callable[[FileJob], Path]
) -> TransferStats:
    """Install every job's blob from its layout file (`file_of(job)`), verified; the blob folders are
    fsynced before this returns (the snapshot links come next). The first failure stops the others and is
    raised once they ended."""
    run = _LayoutInstall(ctx, file_of)
    workers = max(1, min(ctx.settings.jobs, os.cpu_count() or 1, len(jobs)))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch-layout") as pool:
            futures = [pool.submit(run.one, job) for job in sorted(jobs, key=lambda j: -j.size)]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f.exception() for f in finished if f.exception() is not None), None)
            if failed is not None:
                run.stop.cancel()
                wait(futures)
                raise failed
    finally:
        for folder in sorted(run.folders):
            fsync_dir(folder)
    ctx.cancel.raise_if_cancelled()
    return run.stats
