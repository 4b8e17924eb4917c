"""How the engine spreads its work: adaptive connection limits per host, the file workers and the
segment workers.

**Connections** (`HostLimits`): each host gets a limit that starts at `--jobs` and is tuned every
`WINDOW` seconds on the rate of the last window (bytes, plus `REQUEST_COST` per finished request so
that thousands of small files count). It starts at the ceiling because starting lower (8) and
doubling lost to a fixed pool of 32 on a CDN that caps each connection (4 x 256 MiB at 20 MB/s per
connection: 4.1 s against 3.5 s, bench/run.py, one run on a quiet machine):

- while requests wait for a connection, the limit doubles, never above `--jobs` (the hard ceiling,
  for all hosts together);
- a doubling that did not raise the rate by `GROW_GAIN` (loopback, a full link, the CPU) is undone,
  and the limit stays there for `HOLD` windows before it probes again; a CDN that caps each
  connection's speed keeps rewarding more connections, so there the limit climbs to `--jobs`;
- a rate that falls below `SHRINK_LOSS` times the best seen at the current limit while requests
  wait (the link got worse: more connections only compete) halves the limit.

**Files** (`Workers`): a fixed set of threads, each taking the next file and doing all of it
(lock, fetch, hash, install), so a small file costs no hand-off between threads and no future.

**Segments** (`SegmentPool`): big files' Range segments, lowest file offset first across all files.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

WINDOW = 0.25  # seconds of transfer between two decisions
REQUEST_COST = 64 * 1024  # a finished request counts as this many bytes of progress
GROW_GAIN = 1.2  # a doubling is kept when the rate rose at least this much
SHRINK_LOSS = 0.5  # the limit halves when the rate falls below this share of its best
HOLD = 8  # windows to stay at a limit after a doubling that did not pay


class HostLimit:
    """A counting semaphore whose size follows the host's measured rate (see the module docstring)."""

    def __init__(
        self, ceiling: int, start: int | None = None, total: threading.Semaphore | None = None
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = max(1, min(start or self.ceiling, self.ceiling))
        self._total = total or threading.Semaphore(self.ceiling)  # shared by all hosts: --jobs in all
        self.peak = 0  # most connections in use at once
        self._active = 0
        self._waiting = 0
        self._cond = threading.Condition()
        self._window_start = time.monotonic()
        self._progress = 0
        self._best: dict[int, float] = {}  # limit -> best rate measured at it
        self._probe_from: int | None = None  # the limit before the doubling being judged
        self._hold = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._active >= self.limit:
                self._cond.wait()
            self._waiting -= 1
            self._active += 1
            self.peak = max(self.peak, self._active)
        try:
            with self._total:
                yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()

    def progress(self, nbytes: int, requests: int = 0) -> None:
        """Count transferred work; at the end of a window, retune the limit."""
        with self._cond:
            self._progress += nbytes + requests * REQUEST_COST
            now = time.monotonic()
            elapsed = now - self._window_start
            if elapsed < WINDOW:
                return
            rate = self._progress / elapsed
            self._progress, self._window_start = 0, now
            before = self.limit
            self._tune(rate)
            if self.limit > before:
                self._cond.notify_all()

    def _tune(self, rate: float) -> None:
        best = self._best.get(self.limit, 0.0)
        self._best[self.limit] = max(best, rate)
        if self._probe_from is not None:  # judge the last doubling
            smaller, self._probe_from = self._probe_from, None
            if rate < GROW_GAIN * self._best.get(smaller, 0.0):
                self.limit, self._hold = smaller, HOLD
                return
        if self._hold:
            self._hold -= 1
        elif self._waiting and self.limit < self.ceiling:
            self._probe_from, self.limit = self.limit, min(self.ceiling, self.limit * 2)
            return
        if self._waiting and best and rate < SHRINK_LOSS * best and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            self._best = {k: v for k, v in self._best.items() if k <= self.limit}


class HostLimits:
    """One `HostLimit` per host (the Hub and its CDN are tuned apart); `ceiling` bounds them all together."""

    def __init__(self, ceiling: int, start: int | None = None) -> None:
        self.ceiling, self.start = ceiling, start
        self._total = threading.Semaphore(max(1, ceiling))
        self._hosts: dict[str, HostLimit] = {}
        self._lock = threading.Lock()

    def for_url(self, url: str) -> HostLimit:
        host = urlsplit(url).netloc
        with self._lock:
            limit = self._hosts.get(host)
            if limit is None:
                limit = self._hosts[host] = HostLimit(self.ceiling, self.start, self._total)
            return limit

    def peak(self) -> int:
        """Most connections one host had at once."""
        with self._lock:
            return max((h.peak for h in self._hosts.values()), default=0)


class Workers:
    """`workers` threads, each taking the next item in the given order and doing all of it, until
    none is left or `stopped()`, then calling `finish` (in its own thread); failures go to `on_error`.

    No future per item: for 100k small files, futures and their hand-offs were most of the cost.
    """

    def __init__(
        self,
        workers: int,
        fetch: Callable[[Any], None],
        on_error: Callable[[BaseException, Any], None],
        stopped: Callable[[], bool] = lambda: False,
        finish: Callable[[], None] = lambda: None,
    ) -> None:
        self.workers, self._fetch, self._on_error, self._stopped = workers, fetch, on_error, stopped
        self._finish = finish

    def run(self, items: Iterable[Any]) -> None:
        todo = iter(items)
        take = threading.Lock()

        def work() -> None:
            while not self._stopped():
                with take:
                    item = next(todo, None)
                if item is None:
                    break
                try:
                    self._fetch(item)
                except BaseException as exc:  # every failure is the run's to judge
                    self._on_error(exc, item)
            self._finish()

        threads = [
            threading.Thread(target=work, name=f"prefetch-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


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
