"""Cancellation as a token passed down a run, not a process-wide flag.

The CLI's Ctrl-C / SIGTERM handler cancels the token of the run in progress (worker threads never
see KeyboardInterrupt); a library caller can cancel a `sync()` from another thread. The next run
gets a fresh token, so one cancelled run does not cancel every later one in the same process.
"""

from __future__ import annotations

import threading

from prefetch.errors import Cancelled


class CancelToken:
    """One run's stop signal, checked by every retry wait, lock wait and transfer of that run.

    A child token (a transfer's, which its own fatal failures cancel) is cancelled with its parent.
    """

    def __init__(self, parent: CancelToken | None = None) -> None:
        self._event = threading.Event()
        self._children: list[CancelToken] = []
        self._lock = threading.RLock()  # re-entrant: a signal handler may cancel while this thread holds it
        if parent is not None:
            parent._adopt(self)

    def _adopt(self, child: CancelToken) -> None:
        with self._lock:
            self._children.append(child)
            if self.cancelled:
                child.cancel()

    def cancel(self) -> None:
        """Make every wait and transfer watching this token (or a child of it) stop at its next check."""
        with self._lock:
            self._event.set()
            children = list(self._children)
        for child in children:
            child.cancel()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or raise Cancelled as soon as the token is cancelled."""
        if self._event.wait(max(0.0, seconds)):
            raise Cancelled()
