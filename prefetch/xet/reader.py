"""Xet-backed files through the Hub's Xet storage, on the download engine (issue 28).

Why not /resolve: each /resolve call spends the Hub's `resolvers` quota and leads to a CAS bridge that
serves the whole file; a Xet client asks the Hub for one token per repo revision (an API call) and the
CAS for the file's reconstruction, and fetches xorb ranges from the transfer host, none of which the Hub
counts. Why not hf_xet (the reference client, Rust): driven from here it would take the files out of
the engine, and with them resume across runs, verified-before-visible, cancellation, progress, the
rate-limit pacing and the rule that each credential goes to its own origin only.

How (`XetReader`, one per run; the engine calls `download` for a big file, `fetch_small` for a small
one, and the lane hands its small ones over in batches, `batches.SmallXetBatches`):

- a big file is fetched in **rounds** into its partial file: a round asks the CAS for the file's
  reconstruction (of the whole file, or of each byte range still missing: a resumed file asks only for
  those, and gets URLs signed for exactly the chunks that hold them), places each term at its offset,
  copies the terms whose chunks are on disk already (`sources`: an older revision's blob, a range this
  run fetched for another file), and fetches the other xorb ranges in parallel on the engine's segment
  pool, within its connection limits, each with exactly the `Range` it is signed for; a range that
  another file of the run is fetching is waited for and copied (`sources.RangeClaims`). Chunks are
  unpacked as they arrive and written at their offsets (`placement.RangeWriter`), with the partial
  file's resume state, so a `kill -9` loses at most a few hundred KiB per connection. A failed round
  (a reset, an expired URL or token) is retried as any request, and asks again only for what is still
  missing. Then the file is hashed and installed as any download: its sha256 (the lock's, else the
  listing's) is the only proof of its bytes; a mismatch discards it and fetches it again without copies;
- a small file, alone, is one round into memory; in a batch, the CAS gives the reconstructions of up to
  `cas.MAX_BATCH_FILES` files in one call, whose shared xorb ranges are fetched once;
- when the endpoint has no Xet (its token route answers 404/405/501, as olah's does) or the Xet storage
  fails for good, the file is fetched through /resolve (resuming what Xet wrote), and so is every
  later one of the run: said once, with the reason.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from prefetch.auth import Secrets, Token
from prefetch.cancel import CancelToken
from prefetch.download.job import FileJob, Reporter
from prefetch.download.partial import MemoryFile, PartialFile
from prefetch.download.ranges import RangeFetcher
from prefetch.errors import (
    AccessError,
    BadBytes,
    Cancelled,
    DiskSpaceError,
    HubHttpError,
    ProxyRoutesFailed,
    StaleUrl,
    TransportError,
    TruncatedBody,
    UnusableAnswer,
    XetUnavailable,
)
from prefetch.net.retry import describe
from prefetch.net.session import Http
from prefetch.xet.cas import Cas, CasAccess, XetTokens, XorbRange
from prefetch.xet.placement import Placement, place
from prefetch.xet.sources import ChunkSources, RangeClaims, save_record
from prefetch.xet.xorbs import XorbFetcher, uncounted

log = logging.getLogger("prefetch")

SAVE_EVERY = 256 * 1024  # a big file's resume state is saved this often, in place (chunks are ~64 KiB)
MAX_GAPS = 16  # missing byte ranges asked for one by one at most (more are merged across the closest)
WAIT_POLL = 0.1  # seconds between cancellation checks while another file's fetch of a range is awaited
# What makes the Xet path give up for the run (after the retries these deserve): the endpoint or the
# Xet storage cannot serve files. (Bytes that cannot be the file are a mismatch, as on any path.)
XET_FAILURES = (
    XetUnavailable,
    HubHttpError,
    TransportError,
    ProxyRoutesFailed,
    UnusableAnswer,
    StaleUrl,
    TruncatedBody,
    AccessError,
)


class EngineForXet(Protocol):
    """What the reader needs of the engine (`engine.Transfer`): its session, cancellation, reporter,
    segment pool and connection limits (`ranges`), and where fetched bytes are counted."""

    http: Http
    cancel: CancelToken
    reporter: Reporter
    ranges: RangeFetcher

    def advanced(self, nbytes: int) -> None: ...


class XetReader:
    """The run's Xet path (see the module docstring)."""

    def __init__(
        self, engine: EngineForXet, secrets: Secrets | None = None, warn: Callable[[str], None] | None = None
    ) -> None:
        self._engine = engine
        self._tokens = XetTokens(engine.http, secrets)
        self._cas = Cas(engine.http)
        self._xorbs = XorbFetcher(engine)
        self._sources = ChunkSources()
        self._claims = RangeClaims()
        self._warn = warn or log.warning
        self._off: str | None = None  # why the run fetches Xet-backed files through /resolve
        self._lock = threading.Lock()

    def serves(self, job: FileJob) -> bool:
        return job.xet_hash is not None and job.size > 0 and self._off is None

    def download(self, job: FileJob, *, reuse: bool = True) -> str | None:
        """A big file into the cache (`RangeFetcher.download`'s contract: the blob's name, or None when the
        bytes cannot be the file); `reuse`: chunks on disk may be copied (not after a mismatch)."""
        if self.serves(job):
            try:
                return self._download(job, reuse)
            except XET_FAILURES as e:
                self._turn_off(e)
        return self._engine.ranges.download(job)

    def fetch_small(
        self, job: FileJob, lane_failure: Exception | None = None, since: float | None = None
    ) -> bytearray | None:
        """A small file's bytes (`RangeFetcher.fetch_small`'s contract)."""
        if self.serves(job):
            try:
                return self._fetch_small(job)
            except XET_FAILURES as e:
                self._turn_off(e)
            except BadBytes as e:
                log.warning("%s: %s", job.label, e)
                return None
        return self._engine.ranges.fetch_small(job, lane_failure, since)

    def fetch_batch(self, jobs: list[FileJob]) -> list[bytearray | None]:
        """Small files of one repo revision, in one reconstruction call: their bytes (None: not got, for
        the caller to fetch again the worker's way, whose failures are the run's)."""
        missing: list[bytearray | None] = [None] * len(jobs)
        if not self.serves(jobs[0]):
            return missing
        try:
            found = self._cas.files(self._access(jobs[0]), {job.xet_hash or "": job.size for job in jobs})
        except XET_FAILURES as e:
            self._turn_off(e)
            return missing
        memories = [MemoryFile(job.size) for job in jobs]
        groups: dict[tuple[str, int, int], tuple[XorbRange, list[Placement]]] = {}
        placed: list[list[Placement]] = []
        for job, memory in zip(jobs, memories, strict=True):
            pairs = place(found[job.xet_hash or ""], memory, (0, job.size))
            for p, source in pairs:
                groups.setdefault(source.key, (source, []))[1].append(p)
            placed.append([p for p, _ in pairs])
        pool = self._engine.ranges.segments
        futures = [pool.submit(0, self._xorbs.fetch_retried, s, ps) for s, ps in groups.values()]
        for future in futures:
            with contextlib.suppress(Exception, cf.CancelledError):
                future.result()  # a failure leaves its files incomplete: they are fetched again
        self._engine.cancel.raise_if_cancelled()
        got: list[bytearray | None] = []
        for job, memory, placements in zip(jobs, memories, placed, strict=True):
            complete = all(p.done for p in placements)
            if complete:
                self._engine.advanced(job.size)
            got.append(memory.data if complete else None)
        return got

    # -- the path's end ---------------------------------------------------------------------------------
    def _turn_off(self, exc: BaseException) -> None:
        """The Xet path failed for good: this run fetches Xet-backed files through /resolve (said once)."""
        why = str(exc) if isinstance(exc, XetUnavailable) else describe(exc)
        with self._lock:
            if self._off is not None:
                return
            self._off = why
        self._warn(
            f"the Xet storage did not serve a file ({why}): Xet-backed files are fetched through /resolve"
        )

    def _access(self, job: FileJob) -> Callable[[CasAccess | None], CasAccess]:
        """The CAS token of `job`'s repo revision, as `Cas` asks for it (after one it refused, a new one)."""
        commit = job.resolve_url.rstrip("/").rsplit("/", 1)[-1]  # (`.../resolve/{commit}/`)
        hub_token = job.token if isinstance(job.token, Token) else None
        repo_type = job.cache.repo_type
        return lambda refused: self._tokens.get(repo_type, job.repo, commit, hub_token, refused)

    # -- a big file -----------------------------------------------------------------------------------
    def _download(self, job: FileJob, reuse: bool) -> str | None:
        cache = job.cache
        done = cache.partials.read_partial_state(job.etag, job.size)
        partial = PartialFile(job, done, save_every=SAVE_EVERY, state=cache.partials.state_in_place(job.etag))
        hashed = None
        name: str | None = None
        try:
            kept = partial.done.total()
            if kept:
                log.info("resuming %s: %d of %d bytes already on disk", job.label, kept, job.size)
                self._engine.reporter.advance(kept)
            if reuse:
                self._sources.load(cache)
            record: list[Placement] = []
            stalled = 0
            while partial.done.missing(job.size):
                before = partial.done.total()
                self._engine.http.retry.call(
                    lambda: self._round(job, partial, record, reuse),
                    lambda: (
                        f"GET {job.label} from the Xet storage ({partial.done.total()} of {job.size} bytes)"
                    ),
                    cancel=self._engine.cancel,
                )
                stalled = stalled + 1 if partial.done.total() == before else 0
                if stalled >= 2:  # (a round that waited for another file's fetch, which failed, may)
                    raise TruncatedBody(
                        f"{job.label}: the Xet storage's ranges did not bring its missing bytes"
                    )
            hashed = partial.hashed()
            name = job.blob_name(hashed)
            if name is not None:  # installed while open: only the very file that was hashed can be
                cache.installer.install_blob(job.etag, name=name, sync_folder=False, verified_fd=partial.fd)
                save_record(cache, name, job.xet_hash or "", job.size, record)
        except BadBytes as e:
            log.warning("%s: %s", job.label, e)
            return None
        finally:
            partial.close(keep_state=hashed is None)
        return name

    def _round(self, job: FileJob, partial: PartialFile, record: list[Placement], reuse: bool) -> None:
        """Ask for what is missing, copy what is on disk, fetch the rest, but for ranges another file is
        fetching: wait for those and copy what they wrote (the next round asks for what is still
        missing). Raises the most telling failure of its ranges (the round is retried)."""
        gaps = fewer_gaps(partial.done.missing(job.size))
        if not gaps:
            return
        access = self._access(job)
        placed = [
            pair
            for gap in gaps
            for pair in place(self._cas.file(access, job.xet_hash or "", job.size, gap), partial, gap)
        ]
        record += [p for p, _ in placed]
        remote: dict[tuple[str, int, int], tuple[XorbRange, list[Placement]]] = {}
        local = []
        for p, source in placed:
            run = self._sources.find(p.term) if reuse else None
            if run is None:
                remote.setdefault(source.key, (source, []))[1].append(p)
            else:
                local.append((p, run, source))
        futures, others = self._submit(job, remote.values(), claim=reuse)
        for p, run, source in local:  # (while the network works)
            if not self._sources.copy(run, p, self._engine.cancel, self._engine.reporter.advance):
                futures += self._submit(job, [(source, [p])], claim=False)[0]
        for events, _, placements in others:
            for event in events:
                while not event.wait(WAIT_POLL):
                    self._engine.cancel.raise_if_cancelled()
            for p in placements:
                run = self._sources.find(p.term)
                if run is None or not self._sources.copy(
                    run, p, self._engine.cancel, self._engine.reporter.advance
                ):
                    self._sources.copy_part(p, self._engine.cancel, self._engine.reporter.advance)
        cf.wait(futures)
        _raise_most_telling(futures)

    def _submit(
        self, job: FileJob, groups: Iterable[tuple[XorbRange, list[Placement]]], claim: bool
    ) -> tuple[list[cf.Future[None]], list[tuple[list[threading.Event], XorbRange, list[Placement]]]]:
        """Fetch each range on the segment pool (lowest file offset first), unless another file of the run
        claimed one that overlaps it (`claim`): those are returned with the fetches to wait for."""
        futures, others = [], []
        for source, placements in groups:
            events = self._claims.claim(source) if claim else []
            if events:
                others.append((events, source, placements))
                continue
            first = min(p.lo for p in placements)
            futures.append(
                self._engine.ranges.segments.submit(first, self._fetch_into, job, source, placements, claim)
            )
        return futures, others

    def _fetch_into(
        self, job: FileJob, source: XorbRange, placements: list[Placement], claimed: bool
    ) -> None:
        """One attempt at a range of a big file; what it wrote becomes a source for the run's other files."""
        try:
            self._xorbs.fetch(source, placements, self._engine.advanced)
            self._sources.add_written(job.cache.blobs, job.etag, placements)
        finally:
            if claimed:
                self._claims.release(source)

    # -- small files ----------------------------------------------------------------------------------
    def _fetch_small(self, job: FileJob) -> bytearray:
        memory = MemoryFile(job.size)

        def attempt() -> None:
            whole = (0, job.size)
            found = self._cas.file(self._access(job), job.xet_hash or "", job.size, whole)
            groups: dict[tuple[str, int, int], tuple[XorbRange, list[Placement]]] = {}
            for p, source in place(found, memory, whole):
                groups.setdefault(source.key, (source, []))[1].append(p)
            for source, placements in groups.values():
                self._xorbs.fetch(source, placements, uncounted)

        self._engine.http.retry.call(
            attempt, f"GET {job.label} from the Xet storage", cancel=self._engine.cancel
        )
        self._engine.advanced(job.size)
        return memory.data


def fewer_gaps(gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """At most MAX_GAPS ranges covering `gaps`: across the smallest holes between them, merged (their
    bytes are fetched again rather than asked for in as many requests)."""
    if len(gaps) <= MAX_GAPS:
        return gaps
    holes = sorted(range(len(gaps) - 1), key=lambda i: gaps[i + 1][0] - gaps[i][1], reverse=True)
    merged, start = [], 0
    for cut in sorted(holes[: MAX_GAPS - 1]):
        merged.append((gaps[start][0], gaps[cut][1]))
        start = cut + 1
    merged.append((gaps[start][0], gaps[-1][1]))
    return merged


def _raise_most_telling(futures: list[cf.Future[None]]) -> None:
    """The failures of a round's ranges, once all ended: the one that says most is raised (a full disk,
    bytes that cannot be the file, then any but a cancellation)."""
    errors = [Cancelled() if f.cancelled() else f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    for kind in (DiskSpaceError, BadBytes):
        for exc in failed:
            if isinstance(exc, kind):
                raise exc
    for exc in sorted(failed, key=lambda e: isinstance(e, Cancelled)):
        raise exc
