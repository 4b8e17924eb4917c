"""Where chunks of xorbs already lie on this disk, so that they are copied instead of fetched again.

A Xet file is a list of terms (chunk ranges of xorbs); a new revision of a file shares most of its terms'
chunks with the old one, and files of a run may share xorb ranges too. So every big file fetched through
Xet leaves, beside its blob, the record of its chunk runs (`blobs/{sha256}.prefetch-xet`: per term, its
xorb, chunk range, file offset and the chunk lengths learned while unpacking them), and every xorb range
fetched in a run is noted where it was written (`ChunkSources.add`). A term whose chunks such a run
holds is copied from that file (its blob, or its partial file while it is being written) instead.

Nothing here is trusted: a record is checked (sizes, lengths, its blob present with the recorded size)
and a copy is only bytes to be verified, like fetched ones, by the file's sha256 before it is installed;
a file that fails it is fetched again without copies. The index is bounded (`MAX_INDEXED_CHUNKS`): past
it, runs are not remembered and their chunks are fetched.

A record is the cache's litter only when its blob is gone: `prefetch prune` removes it with its blob,
huggingface_hub ignores it (its cache scan reads snapshots, and deletes blobs by their names).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import threading
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prefetch.cache import PARTIAL_SUFFIX, XET_SUFFIX, RepoCache
from prefetch.cancel import CancelToken
from prefetch.files import NOFOLLOW_READ, atomic_write_at, read_regular
from prefetch.xet.cas import Term, XorbRange
from prefetch.xet.chunks import MAX_CHUNK
from prefetch.xet.placement import Placement

log = logging.getLogger("prefetch")

RECORD_VERSION = 1
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a record of ~1.5 M chunks (100 GiB): past this it is not read
MAX_INDEXED_CHUNKS = 4_000_000  # chunk lengths the index holds at most (4 bytes each)
COPY_BLOCK = 1024 * 1024
_RECORD_NAME = re.compile(r"([0-9a-f]{64})" + re.escape(XET_SUFFIX))
_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ChunkRun:
    """Chunks [start, end) of a xorb as they lie in the file `blobs/{name}`, from offset `at` on:
    `ends[k]` is the length of chunks start..start+k together."""

    xorb: str
    start: int
    end: int
    at: int
    ends: array[int]
    blobs: Path
    name: str

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Where chunks [start, end) (inside this run) lie in the file: (offset, length)."""
        before = self.ends[start - self.start - 1] if start > self.start else 0
        return self.at + before, self.ends[end - self.start - 1] - before

    def lengths(self, term: Term) -> list[int]:
        first, last = term.start - self.start, term.end - self.start
        return [self.ends[k] - (self.ends[k - 1] if k else 0) for k in range(first, last)]


def _run(xorb: str, start: int, at: int, lengths: Iterable[int], blobs: Path, name: str) -> ChunkRun:
    ends = array("I")
    total = 0
    for length in lengths:
        total += length
        ends.append(total)
    return ChunkRun(xorb, start, start + len(ends), at, ends, blobs, name)


class ChunkSources:
    """The run's index of chunk runs on disk: the records of a repo folder's blobs (read once, when a
    file of that folder is first fetched through Xet) and the xorb ranges this run wrote."""

    def __init__(self) -> None:
        self._runs: dict[str, list[ChunkRun]] = {}
        self._chunks = 0
        self._loaded: set[Path] = set()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # a file that asks while its folder is read waits for it

    def load(self, cache: RepoCache) -> None:
        """The records beside the blobs of `cache`'s folder (once per folder and run)."""
        with self._load_lock:
            if cache.blobs in self._loaded:
                return
            self._loaded.add(cache.blobs)
            self._load(cache)

    def _load(self, cache: RepoCache) -> None:
        try:
            with cache.blobs_folder(create=False) as dir_fd:
                names = [m.group(1) for n in os.listdir(dir_fd) if (m := _RECORD_NAME.fullmatch(n))]
                for name in sorted(names):
                    for run in _read_record(dir_fd, name, cache.blobs):
                        self.add(run)
        except FileNotFoundError:
            pass

    def add(self, run: ChunkRun) -> None:
        with self._lock:
            if self._chunks + len(run.ends) > MAX_INDEXED_CHUNKS:
                return
            self._chunks += len(run.ends)
            self._runs.setdefault(run.xorb, []).append(run)

    def add_written(self, blobs: Path, name: str, placements: Iterable[Placement]) -> None:
        """Placements a fetched range completed in the file `blobs/{name}`: their chunks are there now."""
        for p in placements:
            if p.done:
                self.add(_run(p.term.xorb, p.term.start, p.at, p.lengths, blobs, name))

    def find(self, term: Term) -> ChunkRun | None:
        """A run that holds all of `term`'s chunks, with the term's length."""
        with self._lock:
            runs = list(self._runs.get(term.xorb, ()))
        for run in reversed(runs):  # the latest first: this run's, then the newest records
            if (
                run.start <= term.start
                and term.end <= run.end
                and run.span(term.start, term.end)[1] == term.length
            ):
                return run
        return None

    def copy(self, run: ChunkRun, p: Placement, cancel: CancelToken, report: Callable[[int], None]) -> bool:
        """Copy `p`'s window from the file `run` names (its blob, else its partial file); False when that
        file is not there (any more) or too short."""
        offset, _ = run.span(p.term.start, p.term.end)
        if not self._copy(run, offset - p.at, p, p.lo, p.hi, cancel, report):
            return False
        p.lengths, p.done = run.lengths(p.term), True
        return True

    def copy_part(self, p: Placement, cancel: CancelToken, report: Callable[[int], None]) -> None:
        """Copy the chunks of `p`'s term that a run holds at the term's start or at its end (a run in its
        middle cannot be placed: the lengths of the chunks before it are not known). The rest stays
        missing, for a reconstruction of exactly those bytes."""
        term = p.term
        with self._lock:
            runs = list(self._runs.get(term.xorb, ()))
        for run in reversed(runs):
            if run.start <= term.start < run.end:  # the term's first chunks
                offset, length = run.span(term.start, min(run.end, term.end))
                lo, hi = max(p.lo, p.at), min(p.hi, p.at + length)
                at = p.at
            elif run.start < term.end <= run.end:  # its last ones
                offset, length = run.span(max(run.start, term.start), term.end)
                lo, hi = max(p.lo, p.end - length), min(p.hi, p.end)
                at = p.end - length
            else:
                continue
            if lo < hi and self._copy(run, offset - at, p, lo, hi, cancel, report):
                return

    @staticmethod
    def _copy(
        run: ChunkRun,
        shift: int,
        p: Placement,
        lo: int,
        hi: int,
        cancel: CancelToken,
        report: Callable[[int], None],
    ) -> bool:
        """Copy file bytes [lo, hi) of `p`'s file from the file `run` names, where they lie `shift` bytes
        further; False when that file is not there (any more) or too short."""
        first, last = lo + shift, hi + shift
        for name in (run.name, run.name + PARTIAL_SUFFIX):
            try:
                fd = os.open(run.blobs / name, NOFOLLOW_READ)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size < last:
                    return False
                position = first
                while position < last:
                    cancel.raise_if_cancelled()
                    data = os.pread(fd, min(COPY_BLOCK, last - position), position)
                    if not data:
                        return False
                    p.sink.write_parts(position - shift, [memoryview(data)])
                    report(len(data))
                    position += len(data)
            finally:
                os.close(fd)
            return True
        return False


class RangeClaims:
    """Xorb ranges being fetched in this run, so that files sharing chunks fetch them once: the first
    claims its range; a file whose range overlaps a claimed one waits for that fetch, copies what it
    can of the chunks it wrote (`ChunkSources.copy`, `copy_part`), and asks the CAS again for exactly
    the bytes still missing, whose range, narrower, is claimed or waited for in turn."""

    def __init__(self) -> None:
        self._claimed: dict[str, list[tuple[int, int, threading.Event]]] = {}  # xorb -> chunk ranges
        self._lock = threading.Lock()

    def claim(self, source: XorbRange) -> list[threading.Event]:
        """[]: this caller fetches it (then `release`s it); else the events set when the fetches of this
        run that overlap it end."""
        with self._lock:
            claimed = self._claimed.setdefault(source.xorb, [])
            overlapping = [
                event for start, end, event in claimed if start < source.end and source.start < end
            ]
            if not overlapping:
                claimed.append((source.start, source.end, threading.Event()))
            return overlapping

    def release(self, source: XorbRange) -> None:
        with self._lock:
            claimed = self._claimed.get(source.xorb, [])
            found = next((c for c in claimed if c[:2] == (source.start, source.end)), None)
            if found is not None:
                claimed.remove(found)
                if not claimed:
                    del self._claimed[source.xorb]
        if found is not None:
            found[2].set()


# ------------------------------------------------------------------------------------------------ records
def save_record(
    cache: RepoCache, name: str, xet_hash: str, size: int, placements: Iterable[Placement]
) -> None:
    """Write the record of the blob `name` (just installed): best effort, as it only saves a later fetch."""
    runs = [[p.term.xorb, p.term.start, p.term.end, p.at, p.lengths] for p in placements if p.done]
    record = {"version": RECORD_VERSION, "xet_hash": xet_hash, "size": size, "runs": runs}
    try:
        with cache.blobs_folder() as dir_fd:
            atomic_write_at(
                dir_fd, name + XET_SUFFIX, json.dumps(record, separators=(",", ":")).encode(), durable=False
            )
    except OSError as e:
        log.debug("no Xet record for %s: %s", cache.blob_path(name), e)


def _read_record(dir_fd: int, name: str, blobs: Path) -> list[ChunkRun]:
    """The runs of `name`'s record, if it is one and its blob is there with the recorded size; else none."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        record = json.loads(read_regular(dir_fd, name + XET_SUFFIX, MAX_RECORD_BYTES))
        size = record["size"]
        if record["version"] != RECORD_VERSION or not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return []
        runs = []
        for xorb, start, end, at, lengths in record["runs"]:
            ok = (
                isinstance(xorb, str)
                and _HASH.fullmatch(xorb)
                and all(type(v) is int for v in (start, end, at))
                and 0 <= start < end
                and len(lengths) == end - start
                and all(type(n) is int and 0 < n <= MAX_CHUNK for n in lengths)
                and at >= 0
                and at + sum(lengths) <= size
            )
            if not ok:
                return []
            runs.append(_run(xorb, start, at, lengths, blobs, name))
        return runs
    return []
