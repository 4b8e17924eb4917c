"""The download engine: file workers fetching files as parallel Range segments into one partial
file per blob, with resumable on-disk state, streaming hash verification and atomic install; files
under `job.SMALL_FILE` are fetched into memory by one thread with several requests in flight
(`prefetch.download.lane`), verified, and installed in durable batches (`new_blobs`); the blobs
folder is fsynced once per run. Many small files are shared with a second process
(`prefetch.download.helper`). Big files are the file workers' (`prefetch.workers`): each thread takes
the next one and does all of it (lock, fetch, hash, install); small files are the lane's, so that a
file costs no hand-off of the interpreter lock between threads.
Connections per host adapt to the measured rate within `jobs` (`prefetch.download.scheduler`).
Cancellation is the run's `CancelToken` (and a child of it, which a fatal failure of one file
cancels for the others).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prefetch import settings
from prefetch.cache import BlobIndex, RepoCache, each_once, folders_kept_open
from prefetch.cancel import CancelToken
from prefetch.download.helper import SmallFileHelper
from prefetch.download.job import FileJob, Reporter, TransferStats
from prefetch.download.lane import SmallFileLane, SmallLast
from prefetch.download.new_blobs import NewBlobs
from prefetch.download.partial import CHUNK, Cursor, MemoryFile, PartialFile
from prefetch.download.scheduler import HostLimit, HostLimits, SegmentPool
from prefetch.errors import (
    AccessError,
    BadBytes,
    Cancelled,
    DiskSpaceError,
    HubHttpError,
    IntegrityError,
    LockOutdatedError,
    NetworkError,
    PrefetchError,
    RangeIgnored,
    ReadTimeout,
    StaleUrl,
    TransportError,
    TruncatedBody,
    filesystem_error,
)
from prefetch.files import fsync_dir, is_disk_full
from prefetch.gcpause import young_objects_collected
from prefetch.hashing import hash_file
from prefetch.net.connection import Headers, Response
from prefetch.net.retry import describe, is_retryable
from prefetch.net.session import FILE_HEADERS, Http, network_error
from prefetch.workers import Workers

log = logging.getLogger("prefetch")

FLUSH_AFTER = 0.5  # seconds: a slow connection's bytes are written (and reported) at least this often
SMALL_READ_SLACK = 4096  # a small read's buffer has this much room past the expected end
MAX_URL_REFRESHES = 5  # signed CDN URLs that expire mid-download are asked for again at most this often
LEARN_POLL = 0.1  # seconds between cancellation checks while a file's first request learns its URL


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
    ) -> None:
        self.http = http
        self.jobs = max(1, jobs)
        # 1 or 2 processes for many small files; None: a second one once this one is CPU-bound.
        self.processes = settings.processes() if processes is None else processes
        self.segment_threshold = segment_threshold
        self.segment_size = segment_size
        self.reporter = reporter or Reporter()
        # Cancelled with the run's token, or by a fatal failure of one file (to stop the others).
        self.cancel = CancelToken(parent=cancel or http.retry.cancel)
        self.stats = TransferStats()
        self.connections = HostLimits(self.jobs)  # replaced by each run's (`run_items`)
        self._buffers = _Buffers(CHUNK)
        self._blob_index = BlobIndex()  # listed anew per `run`: a second pass sees the first's blobs
        self._new_blobs = NewBlobs(self._fetched, self.failed)
        self._stats_lock = threading.Lock()
        self._blob_folders: set[Path] = set()  # renamed blobs into these: fsync them before `run` returns
        self.min_rate_window = (
            settings.min_rate_window()
        )  # a body slower than MIN_BODY_RATE over it is dropped

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
        self.connections = connections
        self._blob_index = BlobIndex()
        self.segments = SegmentPool(self.jobs)
        files = SmallLast(items)
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
                    self.segments.shutdown()
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
        with cache.blob_lock(job.etag, interrupt=self.cancel.raise_if_cancelled):
            if self.cached(job):  # another process fetched (or repaired) it while we waited
                cache.discard_partial(job.etag)  # our own earlier partial of it is garbage now
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

    def fetch_after_lane(self, job: FileJob, failure: Exception | None) -> None:
        """The rest of a small file's attempts after the lane's (`SmallFileLane`) failed with `failure`,
        or (None) brought bytes that did not match; failures are the run's, as a worker's are."""
        try:
            self._fetch_new(job, locked=False, lane_failure=failure, lane_mismatch=failure is None)
        except BaseException as exc:
            self.failed(exc, job)

    def _fetch_new(
        self,
        job: FileJob,
        *,
        locked: bool,
        lane_failure: Exception | None = None,
        lane_mismatch: bool = False,
    ) -> None:
        """Download the file (a small one whole, into memory: no resume state) and install it.

        After the lane's try (`fetch_after_lane`), that try was the first attempt: it failed with
        `lane_failure` (retried as any attempt's failure) or its bytes did not match (`lane_mismatch`).
        """
        if lane_failure is None and not lane_mismatch:  # (the lane said so when it sent the request)
            self.reporter.file_started(job)
        for attempt in (1, 2):
            if attempt == 1 and lane_mismatch:
                pass
            elif job.small:
                if self._download_small(job, locked, lane_failure if attempt == 1 else None):
                    return
            else:
                name = self._download(job)
                if name is not None:
                    return self._fetched(job, name)
                job.cache.discard_partial(job.etag)  # never resume from bytes that failed their hash
            if attempt == 1:
                message = f"hash mismatch for {job.label}: discarded, fetching it again"
                log.warning(message)
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
        return not job.replace or hash_file(job.cache.blob_path(job.etag), job.lfs, job.size)[1] == job.etag

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
        if hash_file(source, job.lfs, job.size)[1] != job.etag:
            return False
        if not job.cache.install_hard_link(job.etag, source, before):
            return False
        self.installed(job, job.etag)
        return True

    def _download(self, job: FileJob) -> str | None:
        """Bring the partial file to full size and install it as the blob if its hash matches.

        Returns the blob's name (None: the server sent bytes that cannot be this file).
        """
        done = job.cache.read_partial_state(job.etag, job.size)
        partial = PartialFile(job, done)
        hashed: Any = None
        name: str | None = None
        try:
            source = _Source(job)
            done = partial.done.ranges
            missing = partial.done.missing(job.size)
            if done:
                log.info(
                    "resuming %s: %d of %d bytes already on disk", job.label, partial.done.total(), job.size
                )
                self.reporter.advance(partial.done.total())
            try:
                self._run_segments(job, partial, source, self._split(missing, job.size), use_range=True)
            except RangeIgnored:
                log.warning("%s: server ignored the Range request; starting the file over", job.label)
                partial.close(keep_state=False)
                job.cache.discard_partial(job.etag)
                partial = PartialFile(job, [])
                self._run_segments(job, partial, source, [(0, job.size)], use_range=False)
            hashed = partial.hashed()
            name = job.blob_name(hashed)
            if name is not None:  # installed while open: only the very file that was hashed can be
                job.cache.install_blob(job.etag, name=name, sync_folder=False, verified_fd=partial.fd)
        except BadBytes as e:
            log.warning("%s", e)
            return None
        finally:
            # Resume state only for a rerun's sake: a hashed file is either installed (its fsync
            # makes it durable) or discarded.
            partial.close(keep_state=hashed is None)
        return name

    def _download_small(self, job: FileJob, locked: bool, lane_failure: Exception | None = None) -> bool:
        """Fetch a small file into memory and install it (`install_small`); False: the bytes cannot be
        this file. `lane_failure`: its first attempt was the lane's, and failed so.

        Per file this saves the resume state, the per-chunk bookkeeping, the read-back and (batched)
        the fsync: for thousands of small files, the filesystem work was most of the time.
        """
        memory = MemoryFile(job.size)
        try:
            self._fetch_segment(job, memory, _Source(job), 0, job.size, False, lane_failure)
        except BadBytes as e:
            log.warning("%s", e)
            return False
        return self.install_small(job, memory.data, locked)

    def install_small(self, job: FileJob, data: bytearray, locked: bool) -> bool:
        """Install a small file's bytes once their hash matched: with its batch (`NewBlobs`), or where
        the filesystem has no unnamed files, at once under the blob's lock (`locked`: held already).
        False: the bytes cannot be this file."""
        h = job.new_hash()
        h.update(data)
        name = job.blob_name(h)
        if name is None:
            return False
        new = job.cache.write_new_blob(name, data)
        if new is not None:
            self._new_blobs.add(job, new)
            return True
        with contextlib.ExitStack() as held:
            if not locked:
                held.enter_context(job.cache.blob_lock(job.etag, interrupt=self.cancel.raise_if_cancelled))
            job.cache.install_bytes(job.etag, data, name=name)
        self._fetched(job, name)
        return True

    def _split(self, missing: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
        if size < self.segment_threshold:
            return missing
        step = max(self.segment_size, 1)
        return [(a, min(a + step, b)) for start, b in missing for a in range(start, b, step)]

    def _run_segments(
        self,
        job: FileJob,
        partial: PartialFile,
        source: _Source,
        pieces: list[tuple[int, int]],
        use_range: bool,
    ) -> None:
        if len(pieces) == 1:
            self._fetch_segment(job, partial, source, *pieces[0], use_range)
            return
        futures = [
            self.segments.submit(a, self._fetch_segment, job, partial, source, a, b, True) for a, b in pieces
        ]
        errors = [f.exception() for f in futures]
        for kind in (DiskSpaceError, RangeIgnored, BadBytes):  # the most telling failure first
            for exc in errors:
                if isinstance(exc, kind):
                    raise exc
        for exc in errors:
            if exc is not None and not isinstance(exc, Cancelled):
                raise exc
        for exc in errors:
            if exc is not None:
                raise exc

    def _fetch_segment(
        self,
        job: FileJob,
        partial: PartialFile | MemoryFile,
        source: _Source,
        start: int,
        end: int,
        use_range: bool,
        lane_failure: Exception | None = None,
    ) -> None:
        """Fetch [start, end) into the partial file; a retry resumes at the first byte not yet written.
        `lane_failure`: the first attempt was the lane's, and failed so (raised as this call's first)."""
        cursor = Cursor(start)
        first = [lane_failure] if lane_failure is not None else []

        def attempt() -> None:
            self.cancel.raise_if_cancelled()
            if cursor.position >= end:  # the last attempt got every byte before the connection failed
                return
            ranged = use_range or cursor.position > 0
            headers = dict(FILE_HEADERS)
            if ranged:
                headers["range"] = f"bytes={cursor.position}-{end - 1}"
            url, generation = source.current(self.cancel)
            try:  # whatever happens, `source.asked` (finally) lets the file's other segments go on
                if first:
                    raise first.pop()
                check = self.redirect_check(job) if url == job.url else None
                limit = self.connections.for_url(url)
                with (
                    limit.slot(),
                    contextlib.closing(
                        self.http.open(url, job.token, headers, on_redirect=check)
                    ) as response,
                ):
                    source.served_from(response.url, generation)
                    self.take_body(job, partial, response, cursor, start, end, ranged, limit)
                limit.progress(0, requests=1)
            except HubHttpError as e:
                if e.status in (401, 403, 410) and source.refresh(generation, e.url):
                    raise StaleUrl(
                        f"{job.label}: the download URL was refused ({e.status}); got a new one"
                    ) from e
                raise
            finally:
                source.asked(generation)

        self.http.retry.call(
            attempt, lambda: f"GET {job.label} bytes {cursor.position}-{end - 1}", cancel=self.cancel
        )

    @staticmethod
    def redirect_check(job: FileJob) -> Callable[[Headers], None] | None:
        """What checks the first redirect of `job`'s /resolve URL (None: its hash is not published)."""
        return functools.partial(_check_redirect, job) if job.published else None

    def take_body(
        self,
        job: FileJob,
        partial: PartialFile | MemoryFile,
        response: Response,
        cursor: Cursor,
        start: int,
        end: int,
        ranged: bool,
        limit: HostLimit,
    ) -> None:
        """Check an answer for bytes [cursor, end) of `job` and read its body into `partial`."""
        if response.status_code == 200 and ranged:
            if start != 0 or end != job.size:
                raise RangeIgnored()
            if cursor.position > 0:  # a whole-file stream: take it from byte 0 again
                log.warning(
                    "%s: server ignored the Range request; restarting the file from byte 0",
                    job.label,
                )
                cursor.position = 0
        elif response.status_code == 206:
            _check_content_range(response, cursor.position, job)
        elif response.status_code != 200:
            raise TruncatedBody(f"{job.label}: unexpected answer {response.status_code}")
        if not job.lfs and job.published:  # the Hub serves it itself: its ETag is the git sha1
            check_lock_against_hub(job, response.headers.get("etag"), None)
        self._stream(job, partial, response, cursor, end, limit)
        if cursor.position < end:
            raise TruncatedBody(f"{job.label}: connection ended at byte {cursor.position} of {end}")

    def _stream(
        self,
        job: FileJob,
        partial: PartialFile | MemoryFile,
        response: Response,
        cursor: Cursor,
        end: int,
        limit: HostLimit,
    ) -> None:
        """Read the body into the partial file, advancing `cursor` with every write.

        Socket reads land in one reused buffer, written out when full (or every FLUSH_AFTER seconds
        on a slow connection). Bytes received before a failure (reset, timeout, cancel) are still
        written, so the retry or the next run resumes exactly where the connection stopped.
        """
        with self._buffers.lease(end - cursor.position) as buffer:
            filled = 0
            last_flush = time.monotonic()
            floor = _RateFloor(self.min_rate_window)

            def flush() -> None:
                nonlocal filled, last_flush
                if filled:
                    partial.write(cursor.position, buffer[:filled])
                    cursor.position += filled
                    self.advanced(filled)
                    limit.progress(filled)
                    filled = 0
                last_flush = time.monotonic()

            try:
                # Stop at the segment's end: a server may declare (and fail to send) a longer body.
                while cursor.position + filled < end and (n := response.readinto(buffer[filled:])):
                    if cursor.position + filled + n > end:
                        raise BadBytes(
                            f"{job.label}: the server sent more bytes than the file has; discarded"
                        )
                    filled += n
                    if filled == len(buffer) or time.monotonic() - last_flush >= FLUSH_AFTER:
                        flush()
                    self.cancel.raise_if_cancelled()
                    floor.check(n)
            finally:
                flush()


class _Buffers:
    """Read buffers, reused: one per active connection (fresh pages cost more than the bytes' copy).

    A read of fewer bytes gets a fresh buffer of its size (plus room to notice a longer body): small
    files would otherwise hold a full-size buffer on every connection for a few bytes each.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[memoryview] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self, needed: int) -> Iterator[memoryview]:
        if needed < self.size // 2:
            yield memoryview(bytearray(needed + SMALL_READ_SLACK))
            return
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = memoryview(bytearray(self.size))
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)


class _Source:
    """Where one file's bytes come from, shared by its segments: its /resolve URL, until a request's
    redirects showed where the bytes are served (the Hub's signed CDN URL), which later segments then ask
    directly. Nothing is asked just to learn that URL: through a pull-through mirror, a GET opened only to
    see whether it redirects would start a second upstream fetch. While the first request is on its way,
    the file's other segments wait for its answer's head instead of all asking /resolve too. A signed URL
    expires, so a refused one (401/403/410 from the CDN) is dropped for /resolve again, a bounded number
    of times.
    """

    def __init__(self, job: FileJob) -> None:
        self.job = job
        self.url = job.url
        self.generation = 0
        self._known = False  # an answer in this generation told where the bytes are served
        self._asking = False  # a request that will tell is on its way
        self._cond = threading.Condition()

    def current(self, cancel: CancelToken) -> tuple[str, int]:
        """The URL to ask, and its generation; waits while another segment's request is learning it."""
        with self._cond:
            while self._asking and not self._known:
                cancel.raise_if_cancelled()
                self._cond.wait(LEARN_POLL)
            self._asking = not self._known
            return self.url, self.generation

    def served_from(self, url: str, generation: int) -> None:
        """A request made in `generation` was answered from `url` (after redirects)."""
        with self._cond:
            if generation == self.generation:
                self.url, self._known = url, True
                self._cond.notify_all()

    def asked(self, generation: int) -> None:
        """A request of `generation` ended; if it failed before its answer, another segment may ask."""
        with self._cond:
            if generation == self.generation and self._asking:
                self._asking = False
                self._cond.notify_all()

    def refresh(self, seen: int, refused: str) -> bool:
        """Forget the refused URL (unless another segment already did); False when pointless: /resolve
        itself refused, or the bound is reached."""
        with self._cond:
            if seen != self.generation:
                return True
            if refused == self.job.url or self.generation >= MAX_URL_REFRESHES:
                return False
            self.url, self._known, self._asking = self.job.url, False, False
            self.generation += 1
            self._cond.notify_all()
            return True


class _RateFloor:
    """Abandons a body that averages less than MIN_BODY_RATE over a window (a drip-feed that the read
    timeout never catches): the attempt fails as a timeout, and is retried within `retry.max_time`."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.since = time.monotonic()
        self.received = 0

    def check(self, n: int) -> None:
        self.received += n
        elapsed = time.monotonic() - self.since
        if elapsed < self.window:
            return
        if self.received < settings.MIN_BODY_RATE * elapsed:
            raise ReadTimeout(
                f"too slow: {self.received} bytes in {elapsed:.0f}s (the floor is {settings.MIN_BODY_RATE} B/s)"
            )
        self.since, self.received = time.monotonic(), 0


def _check_redirect(job: FileJob, headers: Headers) -> None:
    """The Hub's redirect of an LFS file states its hash and size (`X-Linked-Etag`, `X-Linked-Size`)."""
    check_lock_against_hub(job, headers.get("x-linked-etag"), headers.get("x-linked-size"))


def check_lock_against_hub(job: FileJob, hub_etag: str | None, hub_size: str | None) -> None:
    """The Hub states the file's hash (and an LFS file's size) before its bytes: a lock that disagrees
    was edited or is corrupt, which no download can fix, so say so at once (exit 6)."""
    etag = (hub_etag or "").strip().removeprefix("W/").strip('"').lower()
    hash_differs = (
        bool(re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag))
        and len(etag) == len(job.etag)
        and etag != job.etag
    )
    size_differs = hub_size is not None and hub_size.strip().isdigit() and int(hub_size) != job.size
    if hash_differs or size_differs:
        hub_says = f"hash {etag}" if hash_differs else f"size {int(hub_size or 0)}"
        lock_says = f"hash {job.etag}" if hash_differs else f"size {job.size}"
        raise LockOutdatedError(
            f"{job.label}: the lockfile disagrees with the Hub: the lock says {lock_says}, the Hub says {hub_says} "
            "for this commit. Was the lockfile edited? Restore it, or re-resolve the repo with "
            "`prefetch lock --upgrade-repo REPO`; nothing was downloaded."
        )


def _check_content_range(response: Response, position: int, job: FileJob) -> None:
    match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("content-range", ""))
    if not match or int(match.group(1)) != position:
        raise TruncatedBody(
            f"{job.label}: unexpected Content-Range {response.headers.get('content-range')!r}"
        )
    if match.group(3) != "*" and int(match.group(3)) != job.size:
        raise BadBytes(
            f"{job.label}: the server's file is {match.group(3)} bytes, the lockfile says {job.size}; discarded"
        )


_SEVERITY = (DiskSpaceError, LockOutdatedError, AccessError, NetworkError, IntegrityError)


def _most_severe(errors: list[PrefetchError]) -> PrefetchError:
    for kind in _SEVERITY:
        same = [e for e in errors if isinstance(e, kind)]
        if same:
            if len(same) == 1:
                return same[0]
            return type(same[0]).with_message("\n".join(str(e) for e in same))
    return errors[0]
