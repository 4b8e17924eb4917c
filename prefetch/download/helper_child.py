"""The second process for many small files itself (`helper` is the parent's side, and says why and
how the two work together): `serve` gets its order and then its files a batch at a time over the
socket, fetches them with an engine of its own (`engine.Transfer`), and sends back, every
`RELAY_EVERY` seconds, what happened: progress, files done, retries, log records, and at the end its
failures by class. Only the helper process imports this module.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from multiprocessing.connection import Connection
from typing import Any

from prefetch.cancel import CancelToken
from prefetch.download.engine import Transfer
from prefetch.download.helper import BATCH, HelperOrder
from prefetch.download.job import FileJob, Reporter
from prefetch.download.scheduler import HostLimits
from prefetch.net.ratelimit import RateGate
from prefetch.net.retry import RetryPolicy
from prefetch.net.session import Http

RELAY_EVERY = 0.05  # seconds: the helper reports what happened at most this often (not once per file)


class _Outbox:
    """What the helper has to tell, sent in batches every RELAY_EVERY seconds (`send_now`: at once)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._events: list[tuple[Any, ...]] = []
        self._bytes = 0
        self._lock = threading.Lock()  # the pending events
        self._sending = threading.Lock()  # one message on the pipe at a time
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send_often, name="prefetch-helper-outbox", daemon=True)
        self._sender.start()

    def put(self, *event: Any) -> None:
        with self._lock:
            self._events.append(event)

    def add_bytes(self, nbytes: int) -> None:
        with self._lock:
            self._bytes += nbytes

    def send_now(self, *events: tuple[Any, ...]) -> None:
        with self._sending, contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            self._connection.send(list(events))

    def _send_often(self) -> None:
        while not self._stop.wait(RELAY_EVERY):
            self._send()

    def _send(self, *last: tuple[Any, ...]) -> None:
        with self._lock:
            batch, self._events = self._events, []
            if self._bytes:
                batch.append(("advance", self._bytes))
                self._bytes = 0
        batch.extend(last)
        if batch:
            self.send_now(*batch)

    def close(self, *last: tuple[Any, ...]) -> None:
        self._stop.set()
        self._sender.join()
        self._send(*last)


class _Given:
    """The helper's next files: asked of the parent in batches, the next before this one runs out."""

    def __init__(self, outbox: _Outbox) -> None:
        self._outbox = outbox
        self._ready: collections.deque[FileJob] = collections.deque()
        # id of a job given -> its index in the parent's list, until it is reported done
        self.index: dict[int, int] = {}
        self._asked = False
        self._over = False  # the parent has none left, or the run was cancelled
        self._cond = threading.Condition()

    def next(self) -> FileJob | None:
        with self._cond:
            if len(self._ready) <= BATCH // 4 and not self._asked and not self._over:
                self._asked = True
                self._outbox.send_now(("more",))
            while not self._ready and not self._over:
                self._cond.wait()
            return self._ready.popleft() if self._ready else None

    def receive(self, given: list[tuple[int, FileJob]]) -> None:
        with self._cond:
            for index, job in given:
                self.index[id(job)] = index
                self._ready.append(job)
            self._asked = False
            self._over = self._over or not given
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._ready.clear()
            self._over = True
            self._cond.notify_all()


class _RelayReporter(Reporter):
    """The engine's reports, by the parent's index of each file; a file's end says under which name
    it was installed (`TransferStats.learned`: it may have been learned from the bytes)."""

    def __init__(self, outbox: _Outbox, given: _Given, learned: dict[tuple[str, str], str]) -> None:
        self._outbox = outbox
        self._index = given.index
        self._learned = learned

    def file_started(self, job: FileJob) -> None:
        self._outbox.put("started", self._index[id(job)])

    def advance(self, nbytes: int) -> None:
        self._outbox.add_bytes(nbytes)

    def file_done(self, job: FileJob, how: str) -> None:
        name = self._learned.get(job.learned_key, job.etag)
        self._outbox.put("done", self._index.pop(id(job)), how, name)

    def retry(self, message: str) -> None:
        self._outbox.put("retry", message)


class _RelayHandler(logging.Handler):
    """The helper's log records, sent to the parent's `prefetch` logger (formatted there)."""

    def __init__(self, outbox: _Outbox) -> None:
        super().__init__()
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info, record.exc_text = record.getMessage(), None, None, None
        self._outbox.put("log", record)


def _listen(connection: Connection, given: _Given, cancel: CancelToken) -> None:
    """The parent's answers (files), until it says cancel or its end of the pipe closes (it ended or died)."""
    with contextlib.suppress(EOFError, OSError):
        while isinstance(message := connection.recv(), list):
            given.receive(message)
    cancel.cancel()
    given.stop()


def serve(fd: int) -> None:
    """The helper process (`helper.SERVE`): fetch the small files the parent gives, until it has none left."""
    connection = Connection(fd)
    try:
        order: HelperOrder = connection.recv()
    except (EOFError, OSError):  # the parent is gone
        return
    outbox = _Outbox(connection)
    logger = logging.getLogger("prefetch")
    logger.handlers = [_RelayHandler(outbox)]
    logger.setLevel(order.log_level)
    logger.propagate = False
    cancel = CancelToken()
    given = _Given(outbox)
    threading.Thread(target=_listen, args=(connection, given, cancel), daemon=True).start()
    learned: dict[tuple[str, str], str] = {}
    reporter = _RelayReporter(outbox, given, learned)
    retry = RetryPolicy(order.http.retry, on_retry=reporter.retry, cancel=cancel)
    gate = RateGate(
        order.http.endpoint, cancel, order.http.retry.max_time
    )  # (the parent stops sharing once paced)
    http = Http.from_recipe(order.http, retry, gate)
    transfer = Transfer(
        http,
        jobs=order.jobs,
        segment_threshold=order.segment_threshold,
        segment_size=order.segment_size,
        reporter=reporter,
        cancel=cancel,
        processes=1,
    )
    errors: list[tuple[str, str]] = []
    try:
        transfer.stats.learned = learned  # the reporter looks names up here
        transfer.run_items(iter(given.next, None), order.caches, order.jobs, HostLimits(order.jobs))
        errors = [(type(e).__name__, str(e)) for e in transfer.stats.errors]  # relayed by class
    except BaseException as e:  # a bug: reported as one, with what it was
        errors = [("PrefetchError", f"internal error in the helper process for small files: {e!r}")]
    finally:
        http.close()
        outbox.close(("end", errors))
        connection.close()
