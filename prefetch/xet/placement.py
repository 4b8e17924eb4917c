"""Where a reconstruction's chunks go: each term placed at its file offset (`place`), and the chunks of a
fetched xorb range written there as they are unpacked (`RangeWriter`).

A term's chunks lie one after the other from its offset; their lengths are learned as they are unpacked
(the reconstruction gives only each term's total, which they must add up to). A placement writes only
the file bytes of its window: a resumed file's reconstruction starts at the chunk holding the first
missing byte, and ends with the chunk holding the last, whose other bytes are on disk already.

Writes are gathered into runs of up to `FLUSH_BYTES` (a partial file's resume state is saved per write
batch, so the run is what a `kill -9` may lose per connection) and flushed at least every `FLUSH_AFTER`
seconds on a slow connection. A run is a list of views (of the read buffer, for chunks stored as they
are), written with one `pwritev`: copying them together first took a fifth of the reader's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from prefetch.errors import BadBytes
from prefetch.xet.cas import Reconstruction, Term, XorbRange

FLUSH_BYTES = 256 * 1024
FLUSH_AFTER = 0.5  # seconds
MAX_PARTS = 256  # views in one write (the system's IOV_MAX is 1024)


class Sink(Protocol):
    """A file being assembled: a partial file (`download.partial.PartialFile`) or a small file's memory."""

    def write_parts(self, offset: int, parts: list[memoryview]) -> None: ...


@dataclass(eq=False, slots=True)
class Placement:
    """A term of one file: its chunks go from file offset `at` on, of which bytes [lo, hi) are written."""

    sink: Sink
    term: Term
    at: int
    lo: int
    hi: int
    lengths: list[int] = field(default_factory=list)  # of its chunks, as they were unpacked (or copied)
    done: bool = False

    @property
    def end(self) -> int:
        return self.at + self.term.length


def place(
    reconstruction: Reconstruction, sink: Sink, window: tuple[int, int]
) -> list[tuple[Placement, XorbRange]]:
    """Each term of `reconstruction` that has bytes in `window`, placed in `sink`, with the range to fetch
    it from."""
    placed = []
    at = reconstruction.at
    for term, source in zip(reconstruction.terms, reconstruction.ranges, strict=True):
        lo, hi = max(window[0], at), min(window[1], at + term.length)
        if lo < hi:
            placed.append((Placement(sink, term, at, lo, hi), source))
        at += term.length
    return placed


class RangeWriter:
    """Writes the chunks of one xorb range, in order, into every placement that uses them (one fetch
    serves all the terms, of any file, that a range holds)."""

    def __init__(
        self, source: XorbRange, placements: list[Placement], counted: Callable[[int], None]
    ) -> None:
        self._waiting = sorted(placements, key=lambda p: p.term.start, reverse=True)
        self._active: list[tuple[Placement, list[int]]] = []  # with the file offset of its next chunk
        self._counted = counted  # bytes written, reported (the engine's `advanced`)
        self._index = source.start
        self._run: list[memoryview] = []
        self._run_length = 0
        self._run_sink: Sink | None = None
        self._run_at = 0
        self._flushed = time.monotonic()
        for p in placements:  # a retried range starts its placements over
            p.lengths, p.done = [], False

    def tick(self) -> None:
        """Bytes arrived: what was gathered is written out if it waited `FLUSH_AFTER` (a slow connection)."""
        if self._run_length and time.monotonic() - self._flushed >= FLUSH_AFTER:
            self.flush()

    def take(self, chunk: bytes | memoryview) -> None:
        """The next chunk of the range (copied: it is not kept)."""
        index, self._index = self._index, self._index + 1
        while self._waiting and self._waiting[-1].term.start <= index:
            p = self._waiting.pop()
            self._active.append((p, [p.at]))
        finished = False
        for p, cursor in self._active:
            at = cursor[0]
            lo, hi = max(p.lo, at), min(p.hi, at + len(chunk))
            if lo < hi:
                self._write(p.sink, lo, memoryview(chunk)[lo - at : hi - at])
            cursor[0] = at + len(chunk)
            p.lengths.append(len(chunk))
            if index + 1 == p.term.end:
                if cursor[0] != p.end:
                    raise BadBytes(f"a term's chunks unpack to {cursor[0] - p.at} bytes, not {p.term.length}")
                p.done = finished = True
        if finished:
            self._active = [(p, c) for p, c in self._active if not p.done]

    def _write(self, sink: Sink, at: int, data: memoryview) -> None:
        length = self._run_length
        if (
            sink is not self._run_sink
            or at != self._run_at + length
            or length >= FLUSH_BYTES
            or len(self._run) >= MAX_PARTS
        ):
            self.flush()
            self._run_sink, self._run_at, length = sink, at, 0
        self._run.append(data)
        self._run_length = length + len(data)

    def flush(self) -> None:
        """Write out the gathered run (also after a failure: what was unpacked is kept for a retry; and
        before the read buffer its views point into moves: `chunks.chunks_of`)."""
        if self._run_sink is not None and self._run:
            self._run_sink.write_parts(self._run_at, self._run)
            self._counted(self._run_length)
        self._run = []
        self._run_length = 0
        self._run_sink = None
        self._flushed = time.monotonic()

    def finish(self) -> None:
        """The range ended: every placement it held must be complete."""
        self.flush()
        if self._waiting or self._active:
            raise BadBytes("a xorb range ended before the terms it holds")
