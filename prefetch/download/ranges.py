"""Fetching one file's bytes: a big file as parallel Range segments into its partial file (resumable),
a small one whole into memory (`fetch_small`); the lane of small files reads its answers' bodies here
too (`take_body`).

- **Where from** (`_Source`): the file's /resolve URL, until an answer's redirects showed where the
  bytes are served (the Hub's signed CDN URL), which its later segments ask directly; a refused signed
  URL is dropped for /resolve again, a bounded number of times.
- **The body stream** (`RangeFetcher._stream`): socket reads into one reused buffer per connection
  (`_Buffers`), written out when full or every `FLUSH_AFTER` seconds; bytes received before a failure
  are written, so a retry resumes where the connection stopped. A body slower than
  `settings.MIN_BODY_RATE` over a window is dropped (`RateFloor`).
- **Segments** (`SegmentPool`): big files' Range segments, lowest file offset first across all files.

The answers are checked against the lock first (`answer_checks`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prefetch import settings
from prefetch.cancel import CancelToken
from prefetch.download.answer_checks import check_content_range, check_lock_against_hub, redirect_check
from prefetch.download.job import FileJob, Reporter
from prefetch.download.partial import CHUNK, Cursor, MemoryFile, PartialFile
from prefetch.download.scheduler import HostLimit, HostLimits
from prefetch.errors import (
    BadBytes,
    Cancelled,
    DiskSpaceError,
    HubHttpError,
    RangeIgnored,
    ReadTimeout,
    StaleUrl,
    TruncatedBody,
)
from prefetch.net.connection import Response
from prefetch.net.session import FILE_HEADERS, Http
from prefetch.urls import loggable_url

log = logging.getLogger("prefetch")

FLUSH_AFTER = 0.5  # seconds: a slow connection's bytes are written (and reported) at least this often
SMALL_READ_SLACK = 4096  # a small read's buffer has this much room past the expected end
MAX_URL_REFRESHES = 5  # signed CDN URLs that expire mid-download are asked for again at most this often
LEARN_POLL = 0.1  # seconds between cancellation checks while a file's first request learns its URL


class RangeFetcher:
    """One file's bytes from the server (see the module docstring), for the engine (`engine.Transfer`),
    which gives it each run's connection limits (`connections`) and segment pool (`segments`)."""

    def __init__(
        self,
        http: Http,
        cancel: CancelToken,
        reporter: Reporter,
        advanced: Callable[[int], None],
        connections: HostLimits,
        *,
        segment_threshold: int,
        segment_size: int,
    ) -> None:
        self.http = http
        self.cancel = cancel
        self.reporter = reporter
        self.advanced = advanced  # bytes written: counted and reported by the engine
        self.connections = connections
        self.segments: SegmentPool  # each run's
        self.segment_threshold = segment_threshold
        self.segment_size = segment_size
        self._buffers = _Buffers(CHUNK)
        # A body slower than MIN_BODY_RATE over this many seconds is dropped.
        self.min_rate_window = settings.min_rate_window()

    def download(self, job: FileJob) -> str | None:
        """Bring the partial file to full size and install it as the blob if its hash matches.

        Returns the blob's name (None: the server sent bytes that cannot be this file).
        """
        done = job.cache.partials.read_partial_state(job.etag, job.size)
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
                self.reporter.resumed(partial.done.total())
            try:
                self._run_segments(job, partial, source, self._split(missing, job.size), use_range=True)
            except RangeIgnored:
                log.warning("%s: server ignored the Range request; starting the file over", job.label)
                partial.close(keep_state=False)
                job.cache.partials.discard_partial(job.etag)
                partial = PartialFile(job, [])
                self._run_segments(job, partial, source, [(0, job.size)], use_range=False)
            hashed = partial.hashed()
            name = job.blob_name(hashed)
            if name is not None:  # installed while open: only the very file that was hashed can be
                job.cache.installer.install_blob(
                    job.etag, name=name, sync_folder=False, verified_fd=partial.fd
                )
        except BadBytes as e:
            log.warning("%s", e)
            return None
        finally:
            # Resume state only for a rerun's sake: a hashed file is either installed (its fsync
            # makes it durable) or discarded.
            partial.close(keep_state=hashed is None)
        return name

    def fetch_small(
        self, job: FileJob, lane_failure: Exception | None = None, since: float | None = None
    ) -> bytearray | None:
        """A small file's bytes, fetched whole into memory; None: they cannot be this file.
        `lane_failure`: its first attempt was the lane's, and failed so; `since`: when its first attempt
        began, where its time budget counts from (`RetryPolicy.call`).

        Per file this saves the resume state, the per-chunk bookkeeping, the read-back and (batched)
        the fsync: for thousands of small files, the filesystem work was most of the time.
        """
        memory = MemoryFile(job.size)
        try:
            self._fetch_segment(job, memory, _Source(job), 0, job.size, False, lane_failure, since)
        except BadBytes as e:
            log.warning("%s", e)
            return None
        return memory.data

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
        since: float | None = None,
    ) -> None:
        """Fetch [start, end) into the partial file; a retry resumes at the first byte not yet written.
        `lane_failure`: the first attempt was the lane's, and failed so (raised as this call's first);
        `since`: when the request's first attempt began (else: this call's)."""
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
                check = redirect_check(job) if url == job.url else None
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
            attempt,
            lambda: f"GET {job.label} bytes {cursor.position}-{end - 1}",
            cancel=self.cancel,
            since=since,
        )

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
            check_content_range(response, cursor.position, job)
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
            floor = RateFloor(self.min_rate_window)

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


def log_source(job: FileJob, url: str) -> None:
    """-v: what is fetched from where (the URL the bytes come from, after redirects, without its query)."""
    if log.isEnabledFor(logging.INFO):
        log.info("fetching %s (%s bytes) from %s", job.label, f"{job.size:,}", loggable_url(url))


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
        """A request made in `generation` was answered from `url` (after redirects); -v says so, once."""
        with self._cond:
            if generation == self.generation:
                if not self._known:
                    log_source(self.job, url)
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


class RateFloor:
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


class SegmentPool:
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
