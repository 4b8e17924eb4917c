"""The download engine: a bounded pool fetching files as parallel Range segments into one partial
file per blob, with resumable on-disk state, streaming hash verification and atomic install; files
under `SMALL_FILE` are fetched into memory and written once, verified. Cancellation is the run's
`CancelToken` (and a child of it, which a fatal failure of one file cancels for the others).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefetch import settings
from prefetch.cache import BlobIndex, hash_file
from prefetch.cancel import CancelToken
from prefetch.download.job import FileJob, Reporter, TransferStats
from prefetch.download.partial import CHUNK, PartialFile
from prefetch.errors import (
    AccessError,
    BadBytes,
    Cancelled,
    DiskSpaceError,
    HubHttpError,
    IntegrityError,
    NetworkError,
    PrefetchError,
    RangeIgnored,
    StaleUrl,
    TransportError,
    TruncatedBody,
)
from prefetch.files import fsync_dir, is_disk_full
from prefetch.net.connection import Response
from prefetch.net.retry import describe, is_retryable
from prefetch.net.session import FILE_HEADERS, Http, network_error

log = logging.getLogger("prefetch")

FLUSH_AFTER = 0.5  # seconds: a slow connection's bytes are written (and reported) at least this often
SMALL_FILE = CHUNK  # files below this size are fetched into memory and written once, without resume state
MAX_URL_REFRESHES = 5  # signed CDN URLs that expire mid-download are asked for again at most this often


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
    ) -> None:
        self.http = http
        self.jobs = max(1, jobs)
        self.segment_threshold = segment_threshold
        self.segment_size = segment_size
        self.reporter = reporter or Reporter()
        # Cancelled with the run's token, or by a fatal failure of one file (to stop the others).
        self.cancel = CancelToken(parent=cancel or http.retry.cancel)
        self.stats = TransferStats()
        self._slots = threading.BoundedSemaphore(self.jobs)
        self._buffers = _Buffers(CHUNK)
        self._blob_index = BlobIndex()
        self._stats_lock = threading.Lock()
        self._blob_folders: set[Path] = set()  # renamed blobs into these: fsync them before `run` returns

    # -- the pool ---------------------------------------------------------------------------------
    def run(self, jobs: list[FileJob]) -> TransferStats:
        """Fetch every job; raises the most severe error after the others finished or stopped."""
        ordered = sorted(jobs, key=lambda j: -j.size)  # big files first: their segments fill the pool
        files = cf.ThreadPoolExecutor(max_workers=self.jobs * 2, thread_name_prefix="prefetch-file")
        self._segments = _SegmentPool(self.jobs)
        try:
            futures = {files.submit(self._fetch_file, job): job for job in ordered}
            # as_completed waits on all futures at once; cf.wait in a loop would re-register a
            # waiter on every pending future per completion: quadratic in the number of files.
            for future in cf.as_completed(futures):
                exc = future.exception()
                if exc is not None:
                    self._failed(exc, futures[future])
        except BaseException:
            self.cancel.cancel()
            raise
        finally:
            files.shutdown(wait=True, cancel_futures=True)
            self._segments.shutdown()
            self._sync_blob_folders()
        if self.stats.errors:
            raise _most_severe(self.stats.errors)
        self.cancel.raise_if_cancelled()  # the run was cancelled: some files may not have been fetched
        return self.stats

    def _installed(self, job: FileJob, name: str) -> None:
        self._blob_index.add(job.cache, name)
        with self._stats_lock:
            self._blob_folders.add(job.cache.blobs)
            if name != job.etag:
                self.stats.learned[(job.cache.folder.name, job.etag)] = name

    def _sync_blob_folders(self) -> None:
        """Make this run's blob renames durable: once per folder, not once per blob, and before the
        caller writes snapshot links to them (a link must never outlive its blob's rename)."""
        with self._stats_lock:
            folders, self._blob_folders = self._blob_folders, set()
        for folder in sorted(folders):
            fsync_dir(folder)

    def _failed(self, exc: BaseException, job: FileJob) -> None:
        if isinstance(exc, Cancelled):
            return
        if isinstance(exc, HubHttpError):  # a final answer: named with the file, its attempts and routes
            exc = network_error(exc, self.http, f"downloading {job.label}")
        elif not isinstance(exc, PrefetchError):
            if is_disk_full(exc):  # a full disk anywhere in the pipeline (state, fsync, rename) is exit 8
                exc = DiskSpaceError(f"disk full while downloading {job.label} into {job.cache.root}: {exc}")
            elif is_retryable(exc) or isinstance(exc, TransportError):
                exc = network_error(exc, self.http, f"downloading {job.label}")
            else:
                exc = PrefetchError(f"downloading {job.label}: {describe(exc)}")
        self.stats.errors.append(exc)
        if not isinstance(exc, IntegrityError):  # network/access/disk problems stop everything else
            self.cancel.cancel()

    # -- one file ---------------------------------------------------------------------------------
    def _fetch_file(self, job: FileJob) -> None:
        cache = job.cache
        self.cancel.raise_if_cancelled()
        if cache.has_blob(job.etag, job.size) and not cache.has_partial(job.etag):
            return self._done(job, "cached")
        with cache.blob_lock(job.etag, interrupt=self.cancel.raise_if_cancelled):
            if cache.has_blob(job.etag, job.size):  # another process fetched it while we waited
                cache.discard_partial(job.etag)  # our own earlier partial of it is garbage now
                return self._done(job, "cached")
            if self._link_from_other_repo(job):
                return self._done(job, "linked")
            self.reporter.file_started(job)
            small = job.size < SMALL_FILE and not cache.has_partial(job.etag)
            for attempt in (1, 2):
                name = self._download_small(job) if small else self._download(job)
                if name is not None:
                    self._installed(job, name)
                    return self._done(job, "fetched")
                cache.discard_partial(job.etag)  # never resume from bytes that failed their hash
                if attempt == 1:
                    message = f"hash mismatch for {job.label}: discarded, fetching it again"
                    log.warning(message)
                    self.reporter.retry(message)
            raise IntegrityError(
                f"{job.label}: downloaded bytes do not match the expected hash {job.etag} twice; nothing was "
                "stored. The server or a proxy is corrupting data."
            )

    def _done(self, job: FileJob, how: str) -> None:
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
        if hash_file(source, job.lfs, job.size)[1] != job.etag:
            return False
        partial = job.cache.partial_path(job.etag)
        job.cache.discard_partial(job.etag)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, partial)
        except OSError:
            return False
        os.replace(partial, job.cache.blob_path(job.etag))
        self._installed(job, job.etag)
        return True

    def _download(self, job: FileJob) -> str | None:
        """Bring the partial file to full size and install it as the blob if its hash matches.

        Returns the blob's name (None: the server sent bytes that cannot be this file).
        """
        done = job.cache.read_partial_state(job.etag, job.size)
        partial = PartialFile(job, done)
        hashed: Any = None
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
        except BadBytes as e:
            log.warning("%s", e)
            return None
        finally:
            # Resume state only for a rerun's sake: a hashed file is either installed (its fsync
            # makes it durable) or discarded.
            partial.close(keep_state=hashed is None)
        name = job.blob_name(hashed)
        if name is not None:
            job.cache.install_blob(job.etag, name=name, sync_folder=False)
        return name

    def _download_small(self, job: FileJob) -> str | None:
        """Fetch a small file into memory; install it as the blob once its hash matched.

        Per file this saves the resume state, the per-chunk bookkeeping and the read-back: for
        thousands of small files, the filesystem work was most of the time.
        """
        memory = _MemoryFile(job.size)
        try:
            self._fetch_segment(job, memory, _Source(job), 0, job.size, use_range=False)
        except BadBytes as e:
            log.warning("%s", e)
            return None
        h = job.new_hash()
        h.update(memory.data)
        name = job.blob_name(h)
        if name is not None:
            job.cache.install_bytes(job.etag, memory.data, name=name)
        return name

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
            self._segments.submit(a, self._fetch_segment, job, partial, source, a, b, True) for a, b in pieces
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
        partial: PartialFile | _MemoryFile,
        source: _Source,
        start: int,
        end: int,
        use_range: bool,
    ) -> None:
        """Fetch [start, end) into the partial file; a retry resumes at the first byte not yet written."""
        cursor = _Cursor(start)

        def attempt() -> None:
            self.cancel.raise_if_cancelled()
            ranged = use_range or cursor.position > 0
            headers = dict(FILE_HEADERS)
            if ranged:
                headers["range"] = f"bytes={cursor.position}-{end - 1}"
            url, generation = source.current()
            try:
                with self._slots, contextlib.closing(self.http.open(url, job.token, headers)) as response:
                    source.served_from(response.url, generation)
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
                    self._stream(job, partial, response, cursor, end)
            except HubHttpError as e:
                if e.status in (401, 403, 410) and source.refresh(generation, e.url):
                    raise StaleUrl(
                        f"{job.label}: the download URL was refused ({e.status}); got a new one"
                    ) from e
                raise
            if cursor.position < end:
                raise TruncatedBody(f"{job.label}: connection ended at byte {cursor.position} of {end}")

        self.http.retry.call(
            attempt, lambda: f"GET {job.label} bytes {cursor.position}-{end - 1}", cancel=self.cancel
        )

    def _stream(
        self,
        job: FileJob,
        partial: PartialFile | _MemoryFile,
        response: Response,
        cursor: _Cursor,
        end: int,
    ) -> None:
        """Read the body into the partial file, advancing `cursor` with every write.

        Socket reads land in one reused buffer, written out when full (or every FLUSH_AFTER seconds
        on a slow connection). Bytes received before a failure (reset, timeout, cancel) are still
        written, so the retry or the next run resumes exactly where the connection stopped.
        """
        with self._buffers.lease() as buffer:
            filled = 0
            last_flush = time.monotonic()

            def flush() -> None:
                nonlocal filled, last_flush
                if filled:
                    partial.write(cursor.position, buffer[:filled])
                    cursor.position += filled
                    with self._stats_lock:
                        self.stats.bytes_fetched += filled
                    self.reporter.advance(filled)
                    filled = 0
                last_flush = time.monotonic()

            try:
                while n := response.readinto(buffer[filled:]):
                    if cursor.position + filled + n > end:
                        raise BadBytes(
                            f"{job.label}: the server sent more bytes than the file has; discarded"
                        )
                    filled += n
                    if filled == len(buffer) or time.monotonic() - last_flush >= FLUSH_AFTER:
                        flush()
                    self.cancel.raise_if_cancelled()
            finally:
                flush()


class _SegmentPool:
    """Worker threads that fetch segments lowest file offset first, across all files.

    Every file's contiguous prefix, which is what its hash can take, then grows while the rest is
    still downloading; in submission order, each file's segments would finish together at the end
    and all the hashing would be left for after the last byte.
    """

    def __init__(self, workers: int) -> None:
        self._queue: queue.PriorityQueue[tuple[float, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, name=f"prefetch-seg-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, offset: int, fn: Callable[..., None], *args: Any) -> cf.Future[None]:
        future: cf.Future[None] = cf.Future()
        self._queue.put((offset, next(self._order), (future, fn, args)))
        return future

    def _work(self) -> None:
        while True:
            _, _, task = self._queue.get()
            if task is None:
                return
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the waiting file thread, as an executor does
                future.set_exception(e)

    def shutdown(self) -> None:
        """Cancel what has not started, wait for what has."""
        while True:
            try:
                _, _, task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self._threads:
            self._queue.put((math.inf, next(self._order), None))
        for thread in self._threads:
            thread.join()


class _Buffers:
    """Read buffers, reused: one per active connection (fresh pages cost more than the bytes' copy)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[memoryview] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[memoryview]:
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = memoryview(bytearray(self.size))
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)


class _MemoryFile:
    """A small file's bytes, collected in memory (the partial file's stand-in in `_stream`).

    Nothing of it is on disk until it is complete and verified: a kill loses less than one CHUNK,
    which is what a partial file's resume state would have saved.
    """

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def write(self, offset: int, data: memoryview) -> None:
        self.data[offset : offset + len(data)] = data


@dataclass
class _Cursor:
    """The next byte a segment will write (shared by its attempts)."""

    position: int


class _Source:
    """Where one file's bytes come from, shared by its segments: its /resolve URL, until a request's
    redirects showed where the bytes are served (the Hub's signed CDN URL), which later segments then ask
    directly. Nothing is asked just to learn that URL: through a pull-through mirror, a GET opened only to
    see whether it redirects would start a second upstream fetch. A signed URL expires, so a refused one
    (401/403/410 from the CDN) is dropped for /resolve again, a bounded number of times.
    """

    def __init__(self, job: FileJob) -> None:
        self.job = job
        self.url = job.url
        self.generation = 0
        self._lock = threading.Lock()

    def current(self) -> tuple[str, int]:
        with self._lock:
            return self.url, self.generation

    def served_from(self, url: str, generation: int) -> None:
        """A request made in `generation` was answered from `url` (after redirects)."""
        with self._lock:
            if generation == self.generation:
                self.url = url

    def refresh(self, seen: int, refused: str) -> bool:
        """Forget the refused URL (unless another segment already did); False when pointless: /resolve
        itself refused, or the bound is reached."""
        with self._lock:
            if seen != self.generation:
                return True
            if refused == self.job.url or self.generation >= MAX_URL_REFRESHES:
                return False
            self.url = self.job.url
            self.generation += 1
            return True


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


_SEVERITY = (DiskSpaceError, AccessError, NetworkError, IntegrityError)


def _most_severe(errors: list[PrefetchError]) -> PrefetchError:
    for kind in _SEVERITY:
        same = [e for e in errors if isinstance(e, kind)]
        if same:
            if len(same) == 1:
                return same[0]
            return type(same[0])("\n".join(str(e) for e in same))
    return errors[0]
