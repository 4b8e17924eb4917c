"""How many connections the engine uses per host: adaptive limits, tuned on the measured rate.

Each host (`HostLimits`) gets a limit that starts at `--jobs` and is tuned every
`WINDOW` seconds on the rate of the last window (bytes, plus `REQUEST_COST` per finished request so
that thousands of small files count; a window also waits for about one report per busy connection).
A hill climb, one step (a doubling or a halving) per window:

- it starts at the ceiling because starting lower (8) and doubling lost to a fixed pool of 32 on a
  CDN that caps each connection (4 x 256 MiB at 20 MB/s per connection: 4.1 s against 3.5 s,
  bench/run.py, one run on a quiet machine);
- a step is judged on the first window once it is in effect (a halving waits for requests in flight
  to end): a doubling is kept if the rate rose by `GROW_GAIN`, a halving if the rate stayed above
  `KEEP_SHARE` of the last rate seen with more connections. A kept step is followed by another in
  the same direction; a step that did not pay is undone, and the next one, after `HOLD` windows
  (longer after each failure in a row), goes the other way;
- a halving is tried only while requests are short (their mean time under a window): then it costs a
  window at most. Big segments take seconds each, and there a halving that did not pay cost the
  time those took to end (1 x 1 GiB, loopback: 4.6 s against 3.4 s without it);
- so where connections are the bottleneck (a CDN that caps each one, a far server) the limit stays
  at or climbs back to `--jobs` (the hard ceiling, for all hosts together), and where they are not
  (loopback, a full link, the CPU: with 2 cores, 4 threads fetched 2,000 small files in 0.84 of the
  time of 32) it comes down to where fewer connections do as well;
- a rate that falls below `SHRINK_LOSS` times the best seen at the current limit while requests
  wait (the link got worse: more connections only compete) halves the limit at once.

A helper process that takes some of the files (`download.helper`) takes its share of `--jobs` from
this process's `HostLimits` (`resize`) and gives it back when it ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

WINDOW = 0.25  # seconds of transfer between two decisions
REQUEST_COST = 64 * 1024  # a finished request counts as this many bytes of progress
GROW_GAIN = 1.2  # a doubling is kept when the rate rose at least this much
KEEP_SHARE = 0.9  # a halving is kept when the rate stayed above this share of the rate before it
SHRINK_LOSS = 0.5  # the limit halves when the rate falls below this share of its best
HOLD = 8  # windows to stay at a limit after a step that did not pay (doubled per failure in a row, to 8x)


class RateClimber:
    """The hill climb of a host's connection limit (see the module docstring): fed the rate of each
    window, it answers the limit for the next. No clock, no threads: the tests drive it alone."""

    def __init__(self, ceiling: int, start: int | None = None) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = max(1, min(start or self.ceiling, self.ceiling))
        self._best: dict[int, float] = {}  # limit -> best rate measured at it
        self._last: dict[int, float] = {}  # limit -> the last rate measured at it
        self._probe_from: int | None = None  # the limit before the step being judged
        self._direction = -1 if self.limit == self.ceiling else 1  # of the next step: -1 halves
        self._failures = 0  # steps in a row that did not pay
        self._hold = 1  # windows before the first step: the first window is the run's warm-up

    def observe(self, rate: float, waiting: bool, short: bool) -> int:
        """One window's rate (`waiting`: requests were waiting for a connection; `short`: requests
        ended within a window, so a halving takes effect at once); the new limit."""
        best = self._best.get(self.limit, 0.0)
        self._best[self.limit] = max(best, rate)
        self._last[self.limit] = rate
        if self._probe_from is not None and self._undo_unpaid(self._probe_from, rate):
            return self.limit
        if self._hold:
            self._hold -= 1
        elif self._step(waiting, short):
            return self.limit
        if waiting and best and rate < SHRINK_LOSS * best and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            self._best, self._last = {}, {}  # the link changed: rates measured before no longer hold
        return self.limit

    def resize(self, change: int) -> int:
        """The ceiling moved by `change`: a limit at the old ceiling (its cap), a halving from it still
        being judged, and a limit above the new one follow it; other limits stay for the climb to move."""
        old = self.ceiling
        self.ceiling = max(1, old + change)
        if self.limit == old or self._probe_from == old or self.limit > self.ceiling:
            self.limit, self._probe_from = self.ceiling, None
        return self.limit

    def _undo_unpaid(self, before: int, rate: float) -> bool:
        """Judge the last step: kept (False), or undone and the next one the other way (True)."""
        self._probe_from = None
        if self.limit > before:
            paid = rate >= GROW_GAIN * self._best.get(before, 0.0)
        else:  # as good as with more connections: the last rate seen at any larger limit
            paid = rate >= KEEP_SHARE * max((v for k, v in self._last.items() if k >= before), default=0.0)
        if paid:
            self._failures = 0
            return False
        self.limit, self._direction = before, -self._direction
        self._hold = HOLD << min(self._failures, 3)
        self._failures += 1
        return True

    def _step(self, waiting: bool, short: bool) -> bool:
        """Double or halve the limit, to be judged on the next window (False: no step possible)."""
        for direction in (self._direction, -self._direction):
            if direction > 0 and waiting and self.limit < self.ceiling:
                self._probe_from, self.limit = self.limit, min(self.ceiling, self.limit * 2)
            elif direction < 0 and short and self.limit > 1:
                self._probe_from, self.limit = self.limit, max(1, self.limit // 2)
            else:
                continue
            self._direction = direction
            return True
        return False


class HostLimit:
    """A counting semaphore whose size a `RateClimber` sets from the host's measured rate."""

    def __init__(self, ceiling: int, total: Budget | None = None) -> None:
        self._climber = RateClimber(ceiling)
        self.limit = self._climber.limit
        # shared by all hosts: --jobs in all
        self._total = total or Budget(self._climber.ceiling)
        self.peak = 0  # most connections in use at once
        self._active = 0
        self._waiting = 0
        self._cond = threading.Condition()
        self._window_start = time.monotonic()
        self._progress = 0
        self._events = 0  # calls to `progress` in this window
        self._settling = False  # a lower limit not yet in effect (requests in flight end first)
        self._wanted = False  # a request found no connection free in this window (`acquire(wait=False)`)
        self._busy = 0.0  # seconds taken by the requests that ended in this window...
        self._ended = 0  # ... and how many they were

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            self.release(started)

    def acquire(self, wait: bool = True) -> bool:
        """Take a connection of this host (and of the total); `wait=False`: only if one is free now
        (False otherwise, and the climb counts it as a request that waited)."""
        with self._cond:
            if not wait and self._active >= self.limit:
                self._wanted = True
                return False
            self._waiting += 1
            while self._active >= self.limit:
                self._cond.wait()
            self._waiting -= 1
            self._active += 1
            self.peak = max(self.peak, self._active)
        if self._total.enter(wait):
            return True
        with self._cond:
            self._active -= 1
            self._wanted = True
            self._cond.notify()
        return False

    def give_back(self) -> None:
        """Give back a connection `acquire` took for a request that was not sent (its rate-limit window
        was spent): not a request that ended."""
        self._total.leave()
        with self._cond:
            self._active -= 1
            self._cond.notify()

    def release(self, started: float) -> None:
        """Give back a connection `acquire` took (`started`: when its request began)."""
        self._total.leave()
        with self._cond:
            self._active -= 1
            self._busy += time.monotonic() - started
            self._ended += 1
            self._cond.notify()

    def resize(self, change: int) -> None:
        with self._cond:
            self.limit = self._climber.resize(change)
            self._cond.notify_all()

    def _new_window(self, now: float) -> None:
        self._progress, self._events, self._window_start, self._busy, self._ended = 0, 0, now, 0.0, 0
        self._wanted = False

    def progress(self, nbytes: int, requests: int = 0) -> None:
        """Count transferred work; at the end of a window, retune the limit."""
        with self._cond:
            self._progress += nbytes + requests * REQUEST_COST
            self._events += 1
            now = time.monotonic()
            if self._settling:  # a step is judged on a window that starts once it is in effect
                if self._active > self.limit:
                    return
                self._settling = False
                self._new_window(now)
                return
            elapsed = now - self._window_start
            # A window holds about one report per busy connection (a flush of a buffer, a finished
            # request): slow connections flush seldom, and fewer reports made the rate mostly noise.
            if elapsed < WINDOW or self._events < min(self.limit, max(self._active, 1)):
                return
            rate = self._progress / elapsed
            short = self._ended > 0 and self._busy / self._ended <= WINDOW
            self._new_window(now)
            before = self.limit
            self.limit = self._climber.observe(rate, self._waiting > 0 or self._wanted, short)
            self._settling = self.limit != before
            if self.limit > before:
                self._cond.notify_all()


class Budget:
    """Connections all hosts may use at once (a semaphore whose size may change while in use)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._used = 0
        self._cond = threading.Condition()

    def enter(self, wait: bool = True) -> bool:
        """Take one (`wait=False`: only if one is free now)."""
        with self._cond:
            if not wait and self._used >= self.size:
                return False
            while self._used >= self.size:
                self._cond.wait()
            self._used += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._used -= 1
            self._cond.notify()

    def resize(self, change: int) -> None:
        with self._cond:
            self.size = max(1, self.size + change)
            self._cond.notify_all()


class HostLimits:
    """One `HostLimit` per host (the Hub and its CDN are tuned apart); `ceiling` bounds them all together."""

    def __init__(self, ceiling: int) -> None:
        self._total = Budget(max(1, ceiling))
        self._hosts: dict[str, HostLimit] = {}
        self._lock = threading.Lock()

    def for_url(self, url: str) -> HostLimit:
        host = urlsplit(url).netloc
        with self._lock:
            limit = self._hosts.get(host)
            if limit is None:
                limit = self._hosts[host] = HostLimit(self.ceiling, self._total)
            return limit

    @property
    def ceiling(self) -> int:
        return self._total.size

    def resize(self, change: int) -> None:
        """`change` more (or fewer) connections in all: a helper process took or gave back its share.
        Fewer take effect as requests in flight end."""
        with self._lock:  # a host added from now on starts at the new ceiling; those before are resized
            self._total.resize(change)
            hosts = list(self._hosts.values())
        for host in hosts:
            host.resize(change)

    def peak(self) -> int:
        """Most connections one host had at once."""
        with self._lock:
            return max((h.peak for h in self._hosts.values()), default=0)
