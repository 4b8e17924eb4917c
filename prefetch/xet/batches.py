"""The lane's small Xet-backed files, in batches: one reconstruction call for up to
`cas.MAX_BATCH_FILES` files of a repo revision (at most `BATCH_BYTES` of them), their xorb ranges fetched
on the segment pool, several batches at once (`IN_FLIGHT`; the others wait their turn as lists of jobs,
so memory holds at most `IN_FLIGHT` batches' bytes), each file installed as the lane installs its own
(verified, in a durable batch of new blobs). The lane never waits for a batch before its last file.

Why: a small file fetched alone costs a reconstruction call and a xorb GET; in a batch it costs its share
of one call, and files uploaded together share xorb ranges (fetched once). A file a batch could not bring
(its range failed, its bytes did not match, the Xet path is off) is fetched again the way a worker
fetches it (`Transfer.fetch_file`: its own attempts, or /resolve), whose failures are the run's.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from typing import Protocol

from prefetch.cancel import CancelToken
from prefetch.download.job import FileJob, Reporter
from prefetch.download.ranges import RangeFetcher
from prefetch.errors import Cancelled
from prefetch.xet.cas import MAX_BATCH_FILES
from prefetch.xet.reader import XetReader

log = logging.getLogger("prefetch")

BATCH_BYTES = 16 * 1024 * 1024  # a batch's files are held in memory until each is installed
IN_FLIGHT = 4  # batches at once: the next one's reconstruction is asked while the last one's ranges come


class EngineForBatches(Protocol):
    """What the batches need of the engine (`engine.Transfer`)."""

    cancel: CancelToken
    reporter: Reporter
    ranges: RangeFetcher
    xet: XetReader

    def install_small(self, job: FileJob, data: bytearray, locked: bool) -> bool: ...

    def fetch_file(self, job: FileJob) -> None: ...

    def failed(self, exc: BaseException, job: FileJob) -> None: ...


class SmallXetBatches:
    """One lane's batches (see the module docstring): `add` each file, `finish` once the lane has no more."""

    def __init__(self, engine: EngineForBatches) -> None:
        self._engine = engine
        self._pending: dict[tuple[str, str, str], list[FileJob]] = {}  # by repo revision (and Hub token)
        self._pending_bytes: dict[tuple[str, str, str], int] = {}
        self._pool: cf.ThreadPoolExecutor | None = None  # made for the first batch
        self._handed_on: list[cf.Future[None]] = []
        self._lock = threading.Lock()

    def takes(self, job: FileJob) -> bool:
        return self._engine.xet.serves(job)

    def add(self, job: FileJob) -> None:
        token = getattr(job.token, "value", "")
        key = (job.cache.folder.name, job.resolve_url, token)
        self._pending.setdefault(key, []).append(job)
        self._pending_bytes[key] = self._pending_bytes.get(key, 0) + job.size
        if len(self._pending[key]) >= MAX_BATCH_FILES or self._pending_bytes[key] >= BATCH_BYTES:
            self._start(key)

    def finish(self) -> None:
        """Start what is pending (unless the run was cancelled), and return once every batch started (and
        every file handed on) ended."""
        if not self._engine.cancel.cancelled:
            for key in list(self._pending):
                self._start(key)
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=self._engine.cancel.cancelled)
        with self._lock:
            handed_on = list(self._handed_on)
        for future in handed_on:
            if not future.cancelled():
                future.exception()  # (their failures went to the run already)

    def _start(self, key: tuple[str, str, str]) -> None:
        jobs = self._pending.pop(key)
        self._pending_bytes.pop(key)
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="prefetch-xet-batch")
        self._pool.submit(self._run, jobs)

    def _run(self, jobs: list[FileJob]) -> None:
        try:
            self._fetch(jobs)
        except BaseException as exc:  # (a bug): the run must hear of its files, not lose them
            for job in jobs:
                self._engine.failed(exc, job)

    def _fetch(self, jobs: list[FileJob]) -> None:
        engine = self._engine
        if engine.cancel.cancelled:
            return
        for job in jobs:
            engine.reporter.file_started(job)
        try:
            got = engine.xet.fetch_batch(jobs)
        except Cancelled:
            return
        except Exception as e:  # (a failure of a file's own fetch below is the run's to judge)
            log.debug("a batch of %d Xet files failed: %s", len(jobs), e)
            got = [None] * len(jobs)
        for job, data in zip(jobs, got, strict=True):
            try:
                if data is not None and engine.install_small(job, data, locked=False):
                    continue
            except BaseException as exc:
                engine.failed(exc, job)
                continue
            self._hand_on(job)

    def _hand_on(self, job: FileJob) -> None:
        future = self._engine.ranges.segments.submit(0, self._as_a_worker, job)
        with self._lock:
            self._handed_on.append(future)

    def _as_a_worker(self, job: FileJob) -> None:
        try:
            self._engine.fetch_file(job)
        except BaseException as exc:  # every failure is the run's to judge
            self._engine.failed(exc, job)
