"""Commands over many files run with CPython's cyclic garbage collector paused.

A 30k-file lock is ~10^5 long-lived objects (files, jobs, paths); every full collection walks all of
them again, so with the collector on, a warm no-op and `verify` grew ~3.6 x from 10k to 30k files
(linear with it off). Their objects die by reference counting.

A transfer makes reference cycles per request (tenacity keeps its state in a thread-local that
refers back to it), ~4 KB a file: `young_objects_collected` collects those while leaving every
object that existed before the transfer out of each collection (`gc.freeze`).
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


@contextlib.contextmanager
def young_objects_collected() -> Iterator[None]:
    """Collect cycles made inside, but never walk the objects that exist on entry (frozen)."""
    was_enabled = gc.isenabled()
    gc.freeze()
    gc.enable()
    try:
        yield
    finally:
        if not was_enabled:
            gc.disable()
        gc.unfreeze()
