"""The download engine: which file goes where, and what became of each.

Big files are the file workers' (`prefetch.workers`): each thread takes the next one and does all of
it (blob lock, fetch, hash, install). Files under `job.SMALL_FILE` are the lane's
(`prefetch.download.lane`): one thread with several requests in flight, so that a file costs no
hand-off of the interpreter lock between threads; they are fetched into memory without a blob lock,
verified, and installed in durable batches (`new_blobs`). Many small files are shared with a second
process (`prefetch.download.helper`). A file's bytes are fetched by `ranges` (Range segments into a
resumable partial file, the source URL, the body stream); connections per host adapt to the measured
rate within `jobs` (`scheduler`). A Xet-backed file's bytes come from the Hub's Xet storage instead
(`prefetch.xet.reader`, on the same segment pool and connection limits; the lane hands its small
ones over in batches). A blob another repo's folder holds is hard-linked, once verified; the blobs
folders are fsynced once per run.

A file's failure is named here (disk full, the network, the filesystem) and kept: the run raises the
most severe once the others ended. Cancellation is the run's `CancelToken` (and a child of it, which
a fatal failure of one file cancels for the others).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from prefetch import settings
from prefetch.auth import Secrets
from prefetch.cache import BlobIndex, RepoCache, each_once, folders_kept_open
from prefetch.cancel import CancelToken
from prefetch.download.helper import SmallFileHelper
from prefetch.download.job import FileJob, LaneTry, Reporter, SilentReporter, TransferStats
from prefetch.download.lane import BigAndSmall, SmallFileLane
from prefetch.download.new_blobs import NewBlobs
from prefetch.download.ranges import RangeFetcher, SegmentPool
from prefetch.download.scheduler import HostLimits
from prefetch.errors import (
    AccessError,
    Cancelled,
    DiskSpaceError,
    HubHttpError,
    IntegrityError,
    LockOutdatedError,
    NetworkError,
    PrefetchError,
    TransportError,
    filesystem_error,
)
from prefetch.files import fsync_dir, is_disk_full
from prefetch.gcpause import young_objects_collected
from prefetch.hashing import hash_file
from prefetch.net.retry import describe, is_retryable
from prefetch.net.session import Http, network_error
from prefetch.terminal import EVENT_ATTRIBUTE
from prefetch.workers import Workers
from prefetch.xet.reader import XetReader

log = logging.getLogger("prefetch")


class Transfer:
    """Fetch many blobs with `jobs` concurrent connections; big ones as parallel Range segments."""

    def __init__(
        self,
        http: Http,
        *,
        jobs: int = settings.DEFAULT_JOBS,
        segment_threshold: int = settings.DEFAULT_SEGMENT_THRESHOLD,
        segment_size: int = settings.DEFAULT_SEGMENT_SIZE,
        reporter: Reporter | None = None,
        cancel: CancelToken | None = None,
        processes: int | None = None,
        secrets: Secrets | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """`secrets`: the run's (the CAS tokens join them); `warn`: where the Xet path says it gave up."""
        self.http = http
        self.jobs = max(1, jobs)
        # 1 or 2 processes for many small files; None: a second one once this one is CPU-bound.
        self.processes = settings.processes() if processes is None else processes
        self.reporter = reporter or SilentReporter()
        # Cancelled with the run's token, or by a fatal failure of one file (to stop the others).
        self.cancel = CancelToken(parent=cancel or http.retry.cancel)
        self.stats = TransferStats()
        self.ranges = RangeFetcher(
            http,
            self.cancel,
            self.reporter,
            self.advanced,
            HostLimits(self.jobs),  # replaced by each run's (`run_items`)
            segment_threshold=segment_threshold,
            segment_size=segment_size,
        )
        self._blob_index = BlobIndex()  # listed anew per `run`: a second pass sees the first's blobs
        self._new_blobs = NewBlobs(self._fetched, self.failed)
        self._stats_lock = threading.Lock()
        self._blob_folders: set[Path] = set()  # renamed blobs into these: fsync them before `run` returns
        self.xet = XetReader(self, secrets, warn)

    # -- the pool ---------------------------------------------------------------------------------
    def run(self, jobs: list[FileJob]) -> TransferStats:
        """Fetch every job; raises the most severe error after the others finished or stopped."""
        ordered = sorted(jobs, key=lambda j: -j.size)  # big files first: their segments fill the pool
        caches = each_once(job.cache for job in ordered)
        helper = None
        if self.processes != 1:  # (None: 2 once this process is bound by its CPU)
            helper = SmallFileHelper.start(self, ordered, caches, at_once=self.processes == 2)
        if helper is None:
            self.run_items(ordered, caches, len(ordered), HostLimits(self.jobs))
        else:
            try:
                self.run_items(helper.items(ordered), caches, len(ordered), helper.connections)
            finally:
                left = helper.finish()
            if left and not self.cancel.cancelled:  # the helper ended before its files: fetched here
                self.run_items(left, caches, len(left), HostLimits(self.jobs))
            self._sync_blob_folders()  # the helper's too (it did, unless it was killed)
        if self.stats.errors:
            raise _most_severe(self.stats.errors)
        self.cancel.raise_if_cancelled()  # the run was cancelled: some files may not have been fetched
        return self.stats

    def run_items(
        self, items: Iterable[FileJob], caches: Iterable[RepoCache], count: int, connections: HostLimits
    ) -> None:
        """Fetch the jobs `items` yields (at most `count`, from the repo folders `caches`) within
        `connections` (`jobs`, less what a helper process took); failures go to `stats.errors`."""
        self.ranges.connections = connections
        self._blob_index = BlobIndex()
        self.ranges.segments = SegmentPool(self.jobs)
        files = BigAndSmall(items)
        workers = Workers(
            min(connections.ceiling, count),
            self.fetch_file,
            self.failed,
            lambda: self.cancel.cancelled,
        )
        try:
            with young_objects_collected(), folders_kept_open(caches):
                try:
                    workers.run(files.big(), alongside=lambda: SmallFileLane(self).run(files.take))
                except BaseException:
                    self.cancel.cancel()
                    raise
                finally:
                    self.ranges.segments.shutdown()
                    # The last small blobs (verified: installed whatever the end), while the folders
                    # are kept open: a batch's timer thread may be naming blobs in one right now.
                    self._new_blobs.install()
        finally:
            self._sync_blob_folders()

    # -- what became of each file (the helper's files are reported here too) ----------------------
    def installed(self, job: FileJob, name: str) -> None:
        """`job`'s bytes are in the cache as blob `name` (its folder still to be fsynced)."""
        with self._stats_lock:
            self._blob_folders.add(job.cache.blobs)
            if name != job.etag:
                self.stats.learned[job.learned_key] = name

    def _fetched(self, job: FileJob, name: str) -> None:
        self.installed(job, name)
        self.done(job, "fetched")

    def _sync_blob_folders(self) -> None:
        """Make this run's blob renames durable: once per folder, not once per blob, and before the
        caller writes snapshot links to them (a link must never outlive its blob's rename)."""
        with self._stats_lock:
            folders, self._blob_folders = self._blob_folders, set()
        for folder in sorted(folders):
            fsync_dir(folder)

    def failed(self, exc: BaseException, job: FileJob) -> None:
        if isinstance(exc, Cancelled):
            return
        if isinstance(exc, HubHttpError):  # a final answer: named with the file, its attempts and routes
            exc = network_error(exc, self.http, f"downloading {job.label}")
        elif not isinstance(exc, PrefetchError):
            named = filesystem_error(exc, f"{job.label} into {job.cache.root}")
            if is_disk_full(exc):  # a full disk anywhere in the pipeline (state, fsync, rename) is exit 8
                exc = DiskSpaceError(f"disk full while downloading {job.label} into {job.cache.root}: {exc}")
            elif named is not None:
                exc = named
            elif is_retryable(exc) or isinstance(exc, TransportError):
                exc = network_error(exc, self.http, f"downloading {job.label}")
            else:
                exc = PrefetchError(f"downloading {job.label}: {describe(exc)}")
        self.record(exc)

    def record(self, exc: PrefetchError) -> None:
        """A file failed for good: the run raises the most severe failure once the others ended."""
        with self._stats_lock:
            self.stats.errors.append(exc)
        if not isinstance(exc, IntegrityError):  # network/access/disk problems stop everything else
            self.cancel.cancel()

    def advanced(self, nbytes: int) -> None:
        with self._stats_lock:
            self.stats.bytes_fetched += nbytes
        self.reporter.advance(nbytes)

    # -- one file ---------------------------------------------------------------------------------
    def fetch_file(self, job: FileJob) -> None:
        cache = job.cache
        self.cancel.raise_if_cancelled()
        if self.unlocked_small(job):
            if self.cached(job):
                return self.done(job, "cached")
            return self._fetch_new(job, locked=False)
        waiting = functools.partial(self.reporter.file_waiting, job)
        with cache.blob_lock(job.etag, on_wait=waiting, interrupt=self.cancel.raise_if_cancelled):
            if self.cached(job):  # another process fetched (or repaired) it while we waited
                cache.partials.discard_partial(job.etag)  # our own earlier partial of it is garbage now
                return self.done(job, "cached")
            if self._link_from_other_repo(job):
                return self.done(job, "linked")
            self._fetch_new(job, locked=True)

    def unlocked_small(self, job: FileJob) -> bool:
        """Fetched without a lock (a lock file is one more new inode per blob): into memory, written to
        an unnamed file and named with its batch (`NewBlobs`). Two processes fetching it at once both
        install the same verified bytes."""
        return (
            job.small
            and not job.replace
            and self._blob_index.find_elsewhere(job.cache, job.etag, job.size) is None
        )

    def fetch_after_lane(self, job: FileJob, tried: LaneTry) -> None:
        """The rest of a small file's attempts after the lane's (`SmallFileLane`) failed (`tried`);
        failures are the run's, as a worker's are."""
        try:
            self._fetch_new(job, locked=False, lane=tried)
        except BaseException as exc:
            self.failed(exc, job)

    def _fetch_new(self, job: FileJob, *, locked: bool, lane: LaneTry | None = None) -> None:
        """Download the file (a small one whole, into memory: no resume state) and install it.

        After the lane's try (`fetch_after_lane`), that try was the first attempt: it failed with
        `lane.failure` (retried as any attempt's failure) or its bytes did not match (None). A small file
        is one request: all its attempts, the lane's and both rounds' here, share one time budget.
        """
        if lane is None:  # (else the lane said so when it sent the request)
            self.reporter.file_started(job)
        since = lane.started if lane is not None else time.monotonic()
        for attempt in (1, 2):
            if attempt == 1 and lane is not None and lane.failure is None:
                pass
            elif job.small:
                lane_failure = lane.failure if attempt == 1 and lane is not None else None
                if self._download_small(job, locked, lane_failure, since):
                    return
            else:
                name = self.xet.download(job, reuse=attempt == 1)  # (a Xet file; else /resolve's ranges)
                if name is not None:
                    return self._fetched(job, name)
                job.cache.partials.discard_partial(job.etag)  # never resume from bytes that failed their hash
            if attempt == 1:
                message = f"hash mismatch for {job.label}: discarded, fetching it again"
                log.warning(message, extra={EVENT_ATTRIBUTE: "retry"})
                self.reporter.retry(message)
        raise IntegrityError(
            f"{job.label}: downloaded bytes do not match the expected hash {job.etag} twice; nothing was "
            "stored. The server or a proxy is corrupting data."
        )

    @staticmethod
    def cached(job: FileJob) -> bool:
        """The blob is in place; for a repair, also with the bytes its name promises."""
        if not job.cache.has_blob(job.etag, job.size):
            return False
        return not job.replace or _hashes_to(job.cache.blob_path(job.etag), job)

    def done(self, job: FileJob, how: str) -> None:
        with self._stats_lock:
            if how == "fetched":
                self.stats.files_fetched += 1
            elif how == "linked":
                self.stats.files_linked += 1
        self.reporter.file_done(job, how)

    def _link_from_other_repo(self, job: FileJob) -> bool:
        """Hard-link a verified identical blob from another repo instead of downloading it again."""
        source = self._blob_index.find_elsewhere(job.cache, job.etag, job.size)
        if source is None:
            return False
        before = source.lstat()
        if not _hashes_to(source, job):
            return False
        if not job.cache.installer.install_hard_link(job.etag, source, before):
            return False
        self.installed(job, job.etag)
        return True

    def _download_small(
        self, job: FileJob, locked: bool, lane_failure: Exception | None, since: float
    ) -> bool:
        """Fetch a small file into memory (`RangeFetcher.fetch_small`) and install it (`install_small`);
        False: the bytes cannot be this file. `lane_failure`: its first attempt was the lane's, and
        failed so; `since`: when its first attempt began (its time budget counts from there)."""
        data = self.xet.fetch_small(job, lane_failure, since)  # (a Xet file; else /resolve's ranges)
        return data is not None and self.install_small(job, data, locked)

    def install_small(self, job: FileJob, data: bytearray, locked: bool) -> bool:
        """Install a small file's bytes once their hash matched: with its batch (`NewBlobs`), or where
        the filesystem has no unnamed files, at once under the blob's lock (`locked`: held already).
        False: the bytes cannot be this file."""
        h = job.new_hash()
        h.update(data)
        name = job.blob_name(h)
        if name is None:
            return False
        new = job.cache.installer.write_new_blob(name, data)
        if new is not None:
            self._new_blobs.add(job, new)
            return True
        with contextlib.ExitStack() as held:
            if not locked:
                held.enter_context(job.cache.blob_lock(job.etag, interrupt=self.cancel.raise_if_cancelled))
            job.cache.installer.install_bytes(job.etag, data, name=name)
        self._fetched(job, name)
        return True


def _hashes_to(path: Path, job: FileJob) -> bool:
    """`path` is a regular file whose bytes are `job`'s blob (anything planted there since it was looked at,
    a FIFO in a shared cache, is not)."""
    try:
        return hash_file(path, job.lfs, job.size) == (job.size, job.etag)
    except OSError:
        return False


_SEVERITY = (DiskSpaceError, LockOutdatedError, AccessError, NetworkError, IntegrityError)


def _most_severe(errors: list[PrefetchError]) -> PrefetchError:
    for kind in _SEVERITY:
        same = [e for e in errors if isinstance(e, kind)]
        if same:
            if len(same) == 1:
                return same[0]
            return type(same[0]).with_message("\n".join(str(e) for e in same))
    return errors[0]
