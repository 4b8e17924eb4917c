"""A blob's partial file: positional writes from many segments, resume state, running hash.

`RangeSet` is the byte ranges written so far; the partial file and its state live in the cache
(`RepoCache.partial_path` / `write_partial_state`) until the blob is complete and verified. A small
file has none: its bytes are collected in a `MemoryFile`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from prefetch.cache import StateInPlace
from prefetch.download.job import FileJob
from prefetch.errors import DiskSpaceError, TruncatedBody
from prefetch.files import is_disk_full, release_pages, start_writeback

log = logging.getLogger("prefetch")

CHUNK = 1024 * 1024  # bytes read per pwrite at most; a kill -9 loses at most this much per connection
SAVE_STATE_EVERY = CHUNK  # resume state is saved after every chunk: a rerun re-fetches at most one chunk
SYNC_EVERY = 64 * CHUNK  # partial data is fdatasync'ed this often, so resume also survives a reboot
RELEASE_LAG = 16 * CHUNK  # hashed bytes leave the page cache this far behind the hash, written back by then
RELEASE_STEP = 8 * CHUNK  # ... this many at a time


class RangeSet:
    """Sorted, merged [start, end) byte ranges."""

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self.ranges: list[tuple[int, int]] = []
        for a, b in ranges or []:
            self.add(a, b)

    def add(self, start: int, end: int) -> None:
        merged = []
        for a, b in self.ranges:
            if b < start or a > end:
                merged.append((a, b))
            else:
                start, end = min(a, start), max(b, end)
        merged.append((start, end))
        self.ranges = sorted(merged)

    def covered_from(self, offset: int) -> int:
        """End of the contiguous covered run that starts at `offset` (== offset when none)."""
        for a, b in self.ranges:
            if a <= offset < b:
                return b
        return offset

    def missing(self, size: int) -> list[tuple[int, int]]:
        gaps, pos = [], 0
        for a, b in self.ranges:
            if a > pos:
                gaps.append((pos, a))
            pos = max(pos, b)
        if pos < size:
            gaps.append((pos, size))
        return gaps

    def total(self) -> int:
        return sum(b - a for a, b in self.ranges)


class PartialFile:
    """The partial file of one blob: positional writes from many segments, resume state, running hash.

    The hash advances over the contiguous prefix as soon as it is written (from memory when the
    chunk is next in line, else by reading back what other segments wrote), so a file is verified
    as it streams and a resumed file re-hashes only its kept prefix.

    The state file is saved after every chunk (a killed process loses at most one chunk per
    connection; `save_every` sets how often for a reader whose writes are smaller, Xet's, which saves
    it in place: `cache.StateInPlace`);
    every `SYNC_EVERY` bytes the data is fdatasync'ed and the ranges covered so far are recorded as
    `synced`, which is what a run after a reboot trusts.

    Bytes both hashed and on disk leave the page cache (`files.release_pages`), `RELEASE_LAG` behind
    the hash; the cache drops the rest when the blob is installed.
    """

    def __init__(
        self,
        job: FileJob,
        done: list[tuple[int, int]],
        save_every: int = SAVE_STATE_EVERY,
        state: StateInPlace | None = None,
    ) -> None:
        self.job = job
        self.save_every = save_every  # bytes written between two saves of the state (what a kill -9 loses)
        self._state = state  # where the state is saved, when not through `write_partial_state`
        self.fd, kept = job.cache.partials.open_partial(job.etag, job.label)  # never through a link
        if not kept:
            done = []
        try:
            os.ftruncate(self.fd, job.size)
        except OSError:
            os.close(self.fd)
            raise
        self.done = RangeSet(done)
        self._synced: list[tuple[int, int]] = []
        self._hash = job.new_hash()
        self._hashed = 0
        self._released = 0  # bytes before this were dropped from the page cache
        self._unsaved = 0
        self._unsynced = 0
        self._version = 0  # bumped by every change of `done` or `_synced`
        self._saved_version = 0  # the change the state file on disk includes
        self._readback: bytearray | None = None
        self._lock = threading.Lock()
        self._hash_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._state_lock = threading.Lock()

    def write(self, offset: int, data: memoryview) -> None:
        """Write `data` at `offset` and record it as done; hash it while it is in memory if next in line.

        A short write (nearly full disk) is continued from where it stopped.
        """
        self.write_parts(offset, [data])

    def write_parts(self, offset: int, parts: list[memoryview]) -> None:
        """`write` of `parts` laid end to end, in one system call (`pwritev`): a Xet range's chunks go
        from the read buffer to the file without being copied together first."""
        size = sum(len(part) for part in parts)
        try:
            written = (
                os.pwrite(self.fd, parts[0], offset)
                if len(parts) == 1
                else os.pwritev(self.fd, parts, offset)
            )
            if written < size:
                rest = memoryview(b"".join(parts))
                while written < size:
                    written += os.pwrite(self.fd, rest[written:], offset + written)
            start_writeback(self.fd, offset, size)
        except OSError as e:
            if is_disk_full(e):
                raise self._disk_full() from e
            raise
        with self._lock:
            self.done.add(offset, offset + size)
            self._version += 1
            version = self._version
            self._unsaved += size
            self._unsynced += size
            must_save = self._unsaved >= self.save_every
            must_sync = self._unsynced >= SYNC_EVERY
        if must_sync:
            self._sync()
        if must_save:
            self._save_state(version)
        if self._hash_lock.acquire(blocking=False):
            try:
                for part in parts:
                    self._hash_in_line(offset, part)
                    offset += len(part)
                self._advance_hash()
            finally:
                self._hash_lock.release()

    def _sync(self) -> None:
        """fdatasync the data, then record what it covered as `synced` (one thread at a time)."""
        if not self._sync_lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                covered = list(self.done.ranges)
                self._unsynced = 0
            os.fdatasync(self.fd)
            with self._lock:
                self._synced = covered
                self._version += 1
                version = self._version
            self._save_state(version)
        except OSError as e:
            if is_disk_full(e):
                raise self._disk_full() from e
            raise
        finally:
            self._sync_lock.release()

    def _disk_full(self) -> DiskSpaceError:
        return DiskSpaceError(
            f"disk full while writing {self.job.label} into {self.job.cache.root}; the partial download "
            "is kept: free some space and run again to resume it"
        )

    def _save_state(self, version: int) -> None:
        """Save a state that includes change `version`, unless a save since then already did.

        The file I/O runs outside `_lock`, so other segments keep writing meanwhile; saves are
        serialized, and one that waited finds its change saved by the one before it, often.
        """
        with self._state_lock:
            with self._lock:
                if self._saved_version >= version:
                    return
                version, done, synced = self._version, list(self.done.ranges), list(self._synced)
                self._unsaved = 0
            try:
                if self._state is not None:
                    self._state.write(self.job.size, done, synced)
                else:
                    self.job.cache.partials.write_partial_state(self.job.etag, self.job.size, done, synced)
            except DiskSpaceError as e:
                raise self._disk_full() from e
            self._saved_version = version

    def _hash_in_line(self, offset: int, data: memoryview) -> None:
        """Hash bytes just written, from memory, if they are the next the hash takes."""
        if offset == self._hashed:
            self._hash.update(data)
            self._hashed += len(data)

    def _advance_hash(self) -> None:
        """Hash what is written after the hashed prefix, read back from the file."""
        while True:
            if self._hashed - self._released >= RELEASE_LAG + RELEASE_STEP:
                release_pages(self.fd, self._released, self._hashed - RELEASE_LAG - self._released)
                self._released = self._hashed - RELEASE_LAG
            with self._lock:
                end = self.done.covered_from(self._hashed)
            if end <= self._hashed:
                return
            if self._readback is None:  # one buffer, reused: fresh pages cost more than the read
                self._readback = bytearray(min(8 * CHUNK, self.job.size))
            view = memoryview(self._readback)[: min(end - self._hashed, len(self._readback))]
            n = os.preadv(self.fd, [view], self._hashed)
            if n <= 0:
                raise TruncatedBody(f"{self.job.label}: the partial file is shorter than recorded")
            self._hash.update(view[:n])
            self._hashed += n

    def digest(self) -> str:
        return str(self.hashed().hexdigest())

    def hashed(self) -> Any:
        """The hash object (`FileJob.new_hash`) over the whole file, once every byte is written."""
        with self._hash_lock:
            self._advance_hash()
            if self._hashed != self.job.size:
                raise TruncatedBody(f"{self.job.label}: only {self._hashed} of {self.job.size} bytes written")
            return self._hash

    def close(self, keep_state: bool = True) -> None:
        """Close the file; with `keep_state`, make the data durable and save the final state for resume."""
        try:
            if keep_state and (self._unsaved or self._unsynced):
                with self._lock:
                    covered = list(self.done.ranges)
                try:
                    os.fdatasync(self.fd)
                except OSError:  # the state still holds for a rerun in this boot; not after a reboot
                    covered = self._synced
                with self._lock:
                    self._synced = covered
                    self._unsynced = 0
                    self._version += 1
                    version = self._version
                self._save_state(version)
        finally:
            os.close(self.fd)
            if self._state is not None:
                self._state.close()


class MemoryFile:
    """A small file's bytes, collected in memory (the partial file's stand-in in `_stream`).

    Nothing of it is on disk until it is complete and verified: a kill loses less than one CHUNK,
    which is what a partial file's resume state would have saved.
    """

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def write(self, offset: int, data: memoryview) -> None:
        self.data[offset : offset + len(data)] = data

    def write_parts(self, offset: int, parts: list[memoryview]) -> None:
        for part in parts:
            self.write(offset, part)
            offset += len(part)


@dataclass
class Cursor:
    """The next byte a segment will write (shared by its attempts)."""

    position: int
