"""Small files fetched by one thread with several requests in flight.

Why: each small file costs the engine about half a millisecond of interpreter time, and with one
thread per connection every socket call handed the interpreter lock to another thread. On 2,000
files from the test Hub, one thread with one request at a time took 0.63 ms of CPU per file, two
threads ~0.9 ms, 32 threads ~1.0 ms (docs/benchmarks.md, eighth round). So the lane is a single
thread: it sends the next files' requests, each on a connection of its own, before it reads the
oldest answer, and while it hashes and writes one file the server is already answering the next
ones. The host's connection limit (`HostLimit`) bounds how many are in flight. A request that
needs a new connection is sent by a connector thread, which makes it meanwhile: from a far server,
32 connections made one after another by the lane would take seconds before the first answer.

A file is the lane's only while all goes well: an answer that is not the file's bytes (an error
status, a reset, a timeout, bytes that do not match) makes the lane's try the file's first attempt,
and the rest of its attempts are made by the segment pool's threads, as a worker makes them
(`Transfer.fetch_after_lane`): retries with backoff, proxy failover, a new signed URL. The lane
goes on with the next files meanwhile. A redirect (a small LFS file's, to its CDN) is checked as
`Http.open` checks it, and its target's request joins the others in flight.

The workers take the big files (`BigAndSmall.big`) and the lane the small ones (`BigAndSmall.take`),
from the start and at the same time; once no small file is left, the lane takes big ones too.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from prefetch.cancel import CancelToken
from prefetch.download.answer_checks import redirect_check
from prefetch.download.job import FileJob, LaneTry, Reporter
from prefetch.download.partial import Cursor, MemoryFile
from prefetch.download.ranges import RangeFetcher, log_source
from prefetch.download.scheduler import HostLimit
from prefetch.errors import BadBytes, QuotaClosed
from prefetch.net.session import FILE_HEADERS, Http, InFlight, redirect_target
from prefetch.xet.batches import SmallXetBatches
from prefetch.xet.reader import XetReader

log = logging.getLogger("prefetch")


class EngineForLane(Protocol):
    """What the lane needs of the engine that runs it (`engine.Transfer`): the run's session,
    connections and segment pool (`ranges`), how a file is judged, fetched the worker's way or
    installed, and where a file's end or failure goes."""

    jobs: int
    http: Http
    cancel: CancelToken
    reporter: Reporter
    ranges: RangeFetcher
    xet: XetReader

    def unlocked_small(self, job: FileJob) -> bool: ...

    def cached(self, job: FileJob) -> bool: ...

    def fetch_file(self, job: FileJob) -> None: ...

    def fetch_after_lane(self, job: FileJob, tried: LaneTry) -> None: ...

    def install_small(self, job: FileJob, data: bytearray, locked: bool) -> bool: ...

    def done(self, job: FileJob, how: str) -> None: ...

    def failed(self, exc: BaseException, job: FileJob) -> None: ...


class BigAndSmall:
    """The run's files (big ones first, then small ones: the engine's order) split between the workers
    and the lane from the start: workers take the big ones (`big`), the lane the small ones (`take`), at
    the same time. Once no small file is left, the lane takes big ones too, as one more worker.

    Why: the lane used to take whatever came next, so at the start it took a big file as a worker and
    the small files (most of a repo's files, few of its bytes) waited for it: a progress of `files
    0/205` until ~90 % of the bytes. The small files' requests cost little next to the big files'
    segments, so they go alongside them.
    """

    def __init__(self, items: Iterable[FileJob]) -> None:
        self._items = iter(items)
        self._big: collections.deque[FileJob] = collections.deque()  # read past by the lane, for workers
        self._small: FileJob | None = None  # read past by a worker, for the lane
        self._lock = threading.Lock()

    def take(self) -> FileJob | None:
        """The lane's next file: the next small one (big ones before it are left to the workers), or,
        once there is none, a big one."""
        with self._lock:
            job, self._small = self._small, None
            while job is None:
                job = next(self._items, None)
                if job is None:
                    return self._big.popleft() if self._big else None
                if not job.small:
                    self._big.append(job)
                    job = None
            return job

    def big(self) -> Iterator[FileJob]:
        """The workers' files: the big ones, until the first small one."""
        while True:
            with self._lock:
                if self._big:
                    job: FileJob | None = self._big.popleft()
                elif self._small is None:
                    job = next(self._items, None)
                    if job is not None and job.small:
                        self._small, job = job, None
                else:
                    job = None
            if job is None:
                return
            yield job


@dataclass
class _Request:
    """A small file's GET of `url` (after `hop` redirects) in flight: its connection of the host
    (`limit`, the /resolve URL's) is held until the file is read. `sent` is a future while a
    connector thread makes a new connection for it."""

    job: FileJob
    sent: InFlight | cf.Future[InFlight | None]
    limit: HostLimit
    started: float
    url: str
    hop: int = 0

    def in_flight(self) -> InFlight:
        if isinstance(self.sent, InFlight):
            return self.sent
        sent = self.sent.result()
        assert sent is not None  # (a connector connects)
        return sent


class SmallFileLane:
    """One thread's files (see the module docstring), for one `Transfer.run_items`."""

    def __init__(self, transfer: EngineForLane) -> None:
        self._transfer = transfer
        self._ranges = transfer.ranges
        # (looked up once: used for every file; the run's, which are set before its lane is made)
        self._connections = self._ranges.connections
        self._take_body = self._ranges.take_body
        self._in_flight: collections.deque[_Request] = collections.deque()
        self._gate = transfer.http.gate  # the Hub's rate-limit buckets (None: not paced)
        self._again: collections.deque[FileJob] = collections.deque()  # met a closed window: sent again
        self._handed_on: list[cf.Future[None]] = []  # files whose next attempts the segment pool makes
        self._connectors: cf.ThreadPoolExecutor | None = None  # made at the first new connection
        self._xet = SmallXetBatches(transfer)  # small Xet-backed files: batched, not sent one by one

    def run(self, take: Callable[[], FileJob | None]) -> None:
        """Fetch what `take` gives until it gives None or the run is cancelled; return once every file
        it took is done (or, cancelled, abandoned)."""
        transfer = self._transfer
        try:
            job = take()
            while not transfer.cancel.cancelled and (job is not None or self._in_flight or self._again):
                if job is None:
                    if self._in_flight:
                        self._finish(self._in_flight.popleft())
                    else:
                        job = self._again.popleft()
                    continue
                if not job.small or not transfer.unlocked_small(job):
                    self._as_a_worker(job)  # a big file, a repair, a blob to link from another repo
                elif transfer.cached(job):
                    transfer.done(job, "cached")
                elif self._xet.takes(job):
                    self._xet.add(job)
                else:
                    while not self._send(job, wait=not self._in_flight):
                        self._finish(self._in_flight.popleft())  # none free: the oldest gives one back
                job = self._again.popleft() if self._again else take()
        finally:
            self._xet.finish()  # (cancelled: only what has started, to its end)
            for request in self._in_flight:  # cancelled: their answers are not read
                with contextlib.suppress(Exception):
                    request.in_flight().sent.abandon()
                request.limit.release(request.started)
            self._in_flight.clear()
            if self._connectors is not None:
                self._connectors.shutdown()
            for future in self._handed_on:
                future.exception()  # (their failures went to the run already)

    def _as_a_worker(self, job: FileJob) -> None:
        """Fetch `job` the way a worker does, once the requests in flight are read: it may need a
        connection they hold."""
        while self._in_flight:
            self._finish(self._in_flight.popleft())
        try:
            self._transfer.fetch_file(job)
        except BaseException as exc:  # every failure is the run's to judge
            self._transfer.failed(exc, job)

    def _send(self, job: FileJob, wait: bool) -> bool:
        """Send `job`'s request; False: no connection was free, or its rate-limit bucket's window is spent
        (`wait=False`: the requests in flight are read first)."""
        transfer = self._transfer
        url = job.url
        limit = self._connections.for_url(url)
        if not limit.acquire(wait):
            return False
        ticket = self._gate.take(url, block=wait, cancel=transfer.cancel) if self._gate is not None else 0
        if ticket is None:
            limit.give_back()
            return False
        started = time.monotonic()
        transfer.reporter.file_started(job)
        try:
            sent = self._sent(job, url, ticket)
        except Exception as exc:
            limit.release(started)
            self._hand_on(job, LaneTry(exc, started))
            return True
        self._in_flight.append(_Request(job, sent, limit, started, url))
        return True

    def _sent(self, job: FileJob, url: str, ticket: int) -> InFlight | cf.Future[InFlight | None]:
        """GET `url` for `job` (`ticket`: its place in its rate-limit bucket): at once on a kept-alive
        connection, else by a connector thread."""
        transfer = self._transfer
        sent = transfer.http.send(url, job.token, FILE_HEADERS, connect=False, ticket=ticket)
        if sent is not None:
            return sent
        if self._connectors is None:
            self._connectors = cf.ThreadPoolExecutor(transfer.jobs, thread_name_prefix="prefetch-connect")
        return self._connectors.submit(transfer.http.send, url, job.token, FILE_HEADERS, ticket=ticket)

    def _finish(self, request: _Request) -> None:
        """Read the oldest request's answer and install its file; or send its redirect's target, to
        be read in turn (a small LFS file's bytes are on its CDN); or hand the file on."""
        transfer, job = self._transfer, request.job
        redirected = False
        try:
            try:
                response = transfer.http.answer(request.in_flight())
                check = redirect_check(job)
                target = redirect_target(request.url, response, request.hop, check)
                if target is not None:  # (a redirect to the Hub's own origin waits for its window)
                    ticket = self._gate.take(target, cancel=transfer.cancel) if self._gate is not None else 0
                    sent = self._sent(job, target, ticket or 0)
                    self._in_flight.append(replace(request, sent=sent, url=target, hop=request.hop + 1))
                    redirected = True  # (its connection stays held)
                    return
                log_source(job, request.url)
                memory = MemoryFile(job.size)
                with contextlib.closing(response):
                    self._take_body(job, memory, response, Cursor(0), 0, job.size, False, request.limit)
            finally:
                if not redirected:
                    request.limit.release(request.started)
            request.limit.progress(0, requests=1)
        except BadBytes as e:
            log.warning("%s", e)
            return self._hand_on(job, LaneTry(None, request.started))
        except QuotaClosed:  # not a failed attempt: sent again once its window opens (the loop waits)
            self._again.append(job)
            return None
        except Exception as exc:
            return self._hand_on(job, LaneTry(exc, request.started))
        try:
            installed = transfer.install_small(job, memory.data, locked=False)
        except BaseException as exc:
            transfer.failed(exc, job)
            return
        if not installed:
            self._hand_on(job, LaneTry(None, request.started))

    def _hand_on(self, job: FileJob, tried: LaneTry) -> None:
        """The lane's try of `job` failed (`tried`): its next attempts go to the segment pool (with the
        same time budget), and the lane goes on."""
        self._handed_on.append(self._ranges.segments.submit(0, self._transfer.fetch_after_lane, job, tried))
