"""One xorb range from the transfer host: a GET with exactly the `Range` its presigned URL is signed
for and no credential, within the engine's connection limits, its body unpacked chunk by chunk
(`chunks.chunks_of`) into the placements that use it (`placement.RangeWriter`) as it arrives.

A refused URL (401, 403, 410: presigned URLs expire) is a `StaleUrl`: a new reconstruction gives new
ones. A server that ignores the Range (200) has the range cut out of the whole xorb. A body slower than
`settings.MIN_BODY_RATE` is dropped, as on every path (`ranges.RateFloor`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Protocol

from prefetch.cancel import CancelToken
from prefetch.download.ranges import RangeFetcher, RateFloor
from prefetch.download.scheduler import HostLimit
from prefetch.errors import BadBytes, HubHttpError, StaleUrl, TruncatedBody
from prefetch.net.connection import Response
from prefetch.net.retry import is_retryable
from prefetch.net.session import FILE_HEADERS, Http
from prefetch.xet.cas import XorbRange
from prefetch.xet.chunks import chunks_of
from prefetch.xet.placement import Placement, RangeWriter

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class EngineForXorbs(Protocol):
    """What fetching a range needs of the engine (`engine.Transfer`): its session, cancellation and
    connection limits (`ranges`)."""

    http: Http
    cancel: CancelToken
    ranges: RangeFetcher


class XorbFetcher:
    """Fetches xorb ranges for the run's Xet path (see the module docstring)."""

    def __init__(self, engine: EngineForXorbs) -> None:
        self._engine = engine

    def fetch_retried(self, source: XorbRange, placements: list[Placement]) -> None:
        """A batch's range, retried as a request (a refused URL is not: its files ask the CAS again)."""
        self._engine.http.retry.call(
            lambda: self.fetch(source, placements, uncounted),
            f"GET a xorb range of {len(placements)} files from the Xet storage",
            cancel=self._engine.cancel,
            retryable=lambda e: is_retryable(e) and not isinstance(e, StaleUrl),
        )

    def fetch(self, source: XorbRange, placements: list[Placement], counted: Callable[[int], None]) -> None:
        """One request for `source`, with exactly the Range its URL is signed for (and no credential):
        its chunks unpacked into `placements` as they arrive."""
        engine = self._engine
        limit = engine.ranges.connections.for_url(source.url)
        headers = {**FILE_HEADERS, "range": f"bytes={source.first}-{source.last}"}
        writer = RangeWriter(source, placements, counted)
        try:
            with limit.slot(), contextlib.closing(engine.http.open(source.url, None, headers)) as response:
                read = self._body(response, source, limit, writer)
                size = source.last - source.first + 1
                for chunk in chunks_of(read, source.end - source.start, size, writer.flush):
                    writer.take(chunk)
                writer.finish()
            limit.progress(0, requests=1)
        except HubHttpError as e:
            if e.status in (401, 403, 410):  # an expired presigned URL: a new reconstruction gives new ones
                raise StaleUrl(f"a presigned xorb URL was refused ({e.status}); asking the CAS again") from e
            raise
        finally:
            writer.flush()  # what was unpacked before a failure is kept

    def _body(
        self, response: Response, source: XorbRange, limit: HostLimit, writer: RangeWriter
    ) -> Callable[[memoryview], int]:
        """The answer's body as a `readinto` of the range's bytes; a server that ignored the Range (200)
        has the range cut out of the whole xorb."""
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match or (int(match.group(1)), int(match.group(2))) != (source.first, source.last):
                raise BadBytes(
                    f"the transfer host answered other bytes than the range asked of xorb {source.xorb}"
                )
            skip = 0
        elif response.status_code == 200:
            skip = source.first
        else:
            raise TruncatedBody(f"unexpected answer {response.status_code} for a xorb range")
        floor = RateFloor(self._engine.ranges.min_rate_window)
        cancel = self._engine.cancel

        def read(view: memoryview) -> int:
            nonlocal skip
            while skip:
                n = response.readinto(view[: min(skip, len(view))])
                if n <= 0:
                    return 0
                skip -= n
                limit.progress(n)
            writer.tick()
            n = response.readinto(view)
            cancel.raise_if_cancelled()
            limit.progress(n)
            floor.check(n)
            return n

        return read


def uncounted(nbytes: int) -> None:
    """A small file's bytes are counted once it is installed (a retry would count them twice)."""
