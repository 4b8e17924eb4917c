"""Commands over many files run with CPython's cyclic garbage collector paused.

A 30k-file lock is ~10^5 long-lived objects (files, jobs, paths); every full collection walks all of
them again, so with the collector on, a warm no-op and `verify` grew ~3.6 x from 10k to 30k files
(linear with it off). Their objects die by reference counting; the few reference cycles a run makes
are collected once the collector runs again, after the command.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection inside (usable as a decorator); restored as it was afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
