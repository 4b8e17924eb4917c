"""A fixed set of threads working through a list of items in order, each item done whole by one thread:
the download engine's file workers (`download.engine`) and the offline commands' hashing of blobs
(`offline.shared`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


class Workers:
    """`workers` threads, each taking the next item in the given order and doing all of it, until
    none is left or `stopped()`; failures go to `on_error`.

    No future per item: for 100k small files, futures and their hand-offs were most of the cost.
    """

    def __init__(
        self,
        workers: int,
        fetch: Callable[[Any], None],
        on_error: Callable[[BaseException, Any], None],
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self.workers, self._fetch, self._on_error, self._stopped = workers, fetch, on_error, stopped

    def run(self, items: Iterable[Any], alongside: Callable[[], None] | None = None) -> None:
        """Work through `items`; `alongside` runs in the calling thread meanwhile (the engine's lane of
        small files), and the workers are waited for whatever it does."""
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

        threads = [
            threading.Thread(target=work, name=f"prefetch-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in threads:
            thread.start()
        try:
            if alongside is not None:
                alongside()
        finally:
            for thread in threads:
                thread.join()
