"""A second process for many small files.

Each small file costs the engine about half a millisecond of interpreter time, and one process runs
one thread of Python at a time: with thousands of them from a near server, the run is bound by its
own CPU, and more connections do not help (docs/benchmarks.md). So, where a run has many small
files (`AUTO_MIN_FILES`; `MIN_FILES` with `PREFETCH_PROCESSES=2`) and the machine more than one core,
a helper process is started with the run and, once this process is seen bound by its own CPU (or at
once, `PREFETCH_PROCESSES=2`), fetches some of them into
the same cache, as a second `prefetch sync` would: the cache is built for several processes at once
(blob locks, unnamed files named only once verified and durable). Where the files are slow for
another reason (a far server, a full link), a second process would only compete with the first for
the same link and hide it from the connection limits, so it is not given any and ends unused.

The parent owns the list: its workers take the next small file from it, and the helper asks for
the next few over its pipe before it runs out, so neither process idles while the other has a
backlog, and a helper that dies cannot leave a shared lock held.

This module is the parent's side; the helper's is `helper_child`, which alone imports the engine.
The helper is a fresh interpreter running `helper_child.serve`, started with `subprocess`: a fork
of a process with threads may inherit a lock another thread held, and `multiprocessing`'s spawn
would import the caller's main script again in the child (a library user's unguarded script would
run twice). It imports prefetch from the parent's own source tree, gets its share of the
connections and what it needs to open the same HTTP session (`HttpRecipe`), then its files a batch
at a time (it holds no list of them: memory stays flat with the file count), through a socket pair
(`multiprocessing.connection` frames the messages); tokens never reach a command line or an
environment. It runs in a session of its own: a Ctrl-C reaches the parent, which cancels it.

The parent relays what the helper reports: progress to the run's reporter, log records to the
`prefetch` logger (redacted by its handlers, like its own), failures as the errors of their exit
codes. Cancelling the run cancels the helper; the helper cancels itself when its pipe ends (the
parent died). If the helper ends without saying it finished, the parent fetches the files it was
given and did not report done.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prefetch.cache import RepoCache
from prefetch.cancel import CancelToken
from prefetch.download.job import FileJob, Reporter
from prefetch.download.ranges import RangeFetcher
from prefetch.download.scheduler import HostLimits
from prefetch.errors import PrefetchError, relayed_error
from prefetch.net.session import Http, HttpRecipe

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger("prefetch")

MIN_FILES = 512  # fewer small files than this: the helper's start (~0.2 s of a core) does not pay
# ... and by default (not `PREFETCH_PROCESSES=2`), fewer than this: with the lane of small files
# (`download.lane`), one process took 0.9 x the time of two on 2,000 files from the test Hub, two
# took 0.95 x the time of one on 5,000 and 0.93 x on 10,000 (docs/benchmarks.md, eighth round).
AUTO_MIN_FILES = 4096
BATCH = 32  # small files the helper is given at a time at most (fewer as the list runs out)
POLL = 0.02  # seconds between the parent's checks (cancellation, a helper waiting for files)
CPU_BOUND = 0.5  # of a core, over JUDGED seconds of transfer: this process is bound by its own CPU
JUDGED = 0.25  # seconds of small files over which the CPU share is measured
END_WAIT = 10.0  # seconds a cancelled helper has to end before it is stopped (its cache stays whole)
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds this `prefetch` package
# The helper's command: this very prefetch (argv[1]: the folder above), its socket's fd (argv[2]).
SERVE = (
    "import sys; sys.path[0] = sys.argv[1]; from prefetch.download.helper_child import serve; "
    "serve(int(sys.argv[2]))"
)


class EngineForHelper(Protocol):
    """What the parent's side needs of the engine that starts it (`engine.Transfer`): what the helper
    is given (its share of the connections, the segment settings, the HTTP session's recipe), the run's
    cancellation, and where what the helper reports goes."""

    jobs: int
    http: Http
    cancel: CancelToken
    reporter: Reporter
    ranges: RangeFetcher

    def advanced(self, nbytes: int) -> None: ...

    def installed(self, job: FileJob, name: str) -> None: ...

    def done(self, job: FileJob, how: str) -> None: ...

    def record(self, exc: PrefetchError) -> None: ...


class _Claims:
    """The small files not yet taken by either process (the parent's, behind a thread lock)."""

    def __init__(self, count: int) -> None:
        self._next = 0
        self.count = count
        self._lock = threading.Lock()

    def left(self) -> int:
        with self._lock:
            return self.count - self._next

    def take(self, most: int) -> range:
        with self._lock:
            start = self._next
            self._next = min(self.count, start + most)
            return range(start, self._next)

    def batch(self) -> range:
        """The helper's next files: BATCH, down to 1 near the end (so neither side waits for the other)."""
        return self.take(max(1, min(BATCH, self.left() // 8)))


class _CpuShare:
    """Is this process bound by its own CPU? Its CPU time over the last JUDGED seconds."""

    def __init__(self) -> None:
        self._since, self._cpu = time.monotonic(), time.process_time()

    def bound(self) -> bool:
        now = time.monotonic()
        if now - self._since < JUDGED:
            return False
        cpu = time.process_time()
        share = (cpu - self._cpu) / (now - self._since)
        self._since, self._cpu = now, cpu
        return share >= CPU_BOUND


@dataclass(frozen=True)
class HelperOrder:
    """What the helper process is given (its first message)."""

    caches: list[RepoCache]  # the repo folders of the files (each kept open while it works)
    jobs: int
    segment_threshold: int
    segment_size: int
    http: HttpRecipe
    log_level: int


class SmallFileHelper:
    """The parent's side: starts the helper, hands out the small files, relays what it reports."""

    @classmethod
    def start(
        cls, transfer: EngineForHelper, ordered: list[FileJob], caches: list[RepoCache], *, at_once: bool
    ) -> SmallFileHelper | None:
        """A started helper for `ordered`'s small files, given some `at_once` or once this process is
        bound by its CPU; None where it would not pay or cannot start."""
        files = [job for job in ordered if job.small and not job.xet_hash]  # (Xet files are batched here)
        if len(files) < (MIN_FILES if at_once else AUTO_MIN_FILES) or transfer.jobs < 2:
            return None
        here, there = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", SERVE, SOURCE_ROOT, str(there.fileno())],
                pass_fds=[there.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except (OSError, ValueError) as e:  # no second process here (limits, a sandbox, no interpreter)
            log.info("no helper process for small files (%s): fetching them in this one", e)
            here.close()
            return None
        finally:
            there.close()
        order = HelperOrder(
            caches,
            transfer.jobs // 2,
            transfer.ranges.segment_threshold,
            transfer.ranges.segment_size,
            transfer.http.recipe(),
            log.getEffectiveLevel(),
        )
        log.debug("a helper process for %d small files started (pid %d)", len(files), process.pid)
        from multiprocessing.connection import Connection  # only here: importing it costs every run ~10 ms

        helper = cls(transfer, process, Connection(here.detach()), order, files)
        if at_once:
            helper.share("two processes were asked for")
        return helper

    def __init__(
        self,
        transfer: EngineForHelper,
        process: subprocess.Popen[bytes],
        connection: Connection,
        order: HelperOrder,
        files: list[FileJob],
    ) -> None:
        # This process's connections: `jobs`, less the helper's share while it has files.
        self.connections = HostLimits(transfer.jobs)
        self._helper_jobs = order.jobs
        self._sharing = threading.Event()  # the helper may have files
        self._over = False  # the relay ended: the helper gets nothing more
        self._share_lock = threading.Lock()  # `_sharing` and `_over` change together with the connections
        self._asked = False  # it asked for files, not answered yet
        self._transfer = transfer
        self._process = process
        self._connection = connection
        self._files = files
        self._claims = _Claims(len(files))
        self._unsettled: set[int] = set()  # given to the helper, not reported done: redone here if it dies
        self._ended = False  # the helper said it finished (else it died: its files are redone here)
        self._relay = threading.Thread(
            target=self._relay_events, args=(order,), name="prefetch-helper-relay", daemon=True
        )
        self._relay.start()

    def items(self, ordered: list[FileJob]) -> Iterator[FileJob]:
        """The parent's share: the big files and the Xet-backed ones, then the small files the helper has
        not taken (which it may, once this process is bound by its CPU)."""
        yield from (job for job in ordered if not job.small or job.xet_hash)
        cpu = _CpuShare()
        while index := self._claims.take(1):
            if (
                not self._sharing.is_set()
                and not self._quota_bound()
                and cpu.bound()
                and self._claims.left() >= 2 * BATCH
            ):
                self.share("this process is bound by its own CPU")
            yield self._files[index[0]]

    def _quota_bound(self) -> bool:
        """The Hub stated a quota for its resolvers: the run is bound by it, not by this process's CPU,
        and a second process pacing on its own would only meet the quota's 429s."""
        gate = self._transfer.http.gate
        return gate is not None and gate.policy("resolvers") is not None

    def share(self, why: str) -> None:
        """From now on the helper gets files, and its share of the connections."""
        with self._share_lock:
            if self._over or self._sharing.is_set():
                return
            self.connections.resize(-self._helper_jobs)
            self._sharing.set()
        log.info("sharing the small files with a helper process (pid %d): %s", self._process.pid, why)

    def finish(self) -> list[FileJob]:
        """Wait for the helper to end (bounded once cancelled); the files it was given and did not finish."""
        while self._relay.is_alive():
            self._relay.join(POLL if not self._transfer.cancel.cancelled else END_WAIT)
            if self._transfer.cancel.cancelled and self._relay.is_alive():
                break
        try:
            self._process.wait(END_WAIT if self._transfer.cancel.cancelled else None)
        except subprocess.TimeoutExpired:
            log.warning("the helper process for small files did not stop in time: stopped")
            self._process.kill()  # its writes are kill-safe, as any run's
            self._process.wait()
        self._connection.close()
        if self._ended:
            return []
        left = [self._files[index] for index in sorted(self._unsettled)]
        if left and not self._transfer.cancel.cancelled:
            log.warning(
                "the helper process for small files ended early (exit code %s): its %d unfinished file(s) "
                "are fetched by this one",
                self._process.returncode,
                len(left),
            )
        return left

    # -- the relay thread: the only one that talks to the helper ----------------------------------
    def _relay_events(self, order: HelperOrder) -> None:
        try:
            self._relay_until_the_end(order)
        finally:
            with self._share_lock:
                self._over = True
                if self._sharing.is_set():
                    self.connections.resize(self._helper_jobs)

    def _relay_until_the_end(self, order: HelperOrder) -> None:
        try:
            self._connection.send(order)  # waits for the helper's imports: not the workers' time
        except OSError:  # the helper is gone already
            return
        told = False
        while True:
            cancelled = self._transfer.cancel.cancelled
            try:
                if not told and cancelled:
                    told = True
                    self._connection.send("cancel")
                if self._asked and (self._sharing.is_set() or cancelled or not self._claims.left()):
                    self._asked = False
                    given = [] if cancelled or self._quota_bound() else list(self._claims.batch())
                    self._unsettled.update(given)
                    self._connection.send([(index, self._files[index]) for index in given])
                if not self._connection.poll(POLL):
                    continue
                for event in self._connection.recv():
                    if self._apply(event):
                        return
            except (EOFError, OSError):
                return

    def _apply(self, event: tuple[Any, ...]) -> bool:
        """Apply one event of the helper to the run; True once it said it finished."""
        transfer, kind = self._transfer, event[0]
        if kind == "more":  # answered by the relay loop, once the helper may have files
            self._asked = True
        elif kind == "advance":
            transfer.advanced(event[1])
        elif kind == "started":
            transfer.reporter.file_started(self._files[event[1]])
        elif kind == "done":  # (index, how, the name it was installed under)
            job = self._files[event[1]]
            self._unsettled.discard(event[1])
            if event[2] != "cached":  # its folder is fsynced here too, in case the helper's fsync did not run
                transfer.installed(job, event[3])
            transfer.done(job, event[2])
        elif kind == "retry":
            transfer.reporter.retry(event[1])
        elif kind == "log":
            log.handle(event[1])
        elif kind == "end":
            for class_name, message in event[1]:
                transfer.record(relayed_error(class_name, message))
            self._ended = True
            return True
        return False
