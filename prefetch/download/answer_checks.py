"""What a server's answer for a file must agree with before its bytes are taken: the lock's hash and
size, which the Hub states in headers (a redirect's `X-Linked-Etag` and `X-Linked-Size`, a non-LFS
file's `ETag`), and the byte range that was asked (`Content-Range`).

A lock that disagrees with the Hub was edited, or was made against another endpoint, which no download
can fix: the run says so at once (`LockDisagreesWithHub`; `prefetch.sync` says which, and its exit code).
A range that is not the one asked, or of a file of another size, is a failed attempt (retried) or bytes
that cannot be this file (discarded).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from prefetch.download.job import FileJob
from prefetch.errors import BadBytes, LockDisagreesWithHub, TruncatedBody
from prefetch.net.connection import Headers, Response


def redirect_check(job: FileJob) -> Callable[[Headers], None] | None:
    """What checks the first redirect of `job`'s /resolve URL (None: its hash is not published)."""
    return functools.partial(_check_redirect, job) if job.published else None


def _check_redirect(job: FileJob, headers: Headers) -> None:
    """The Hub's redirect of an LFS file states its hash and size (`X-Linked-Etag`, `X-Linked-Size`)."""
    check_lock_against_hub(job, headers.get("x-linked-etag"), headers.get("x-linked-size"))


def check_lock_against_hub(job: FileJob, hub_etag: str | None, hub_size: str | None) -> None:
    """The Hub states the file's hash (and an LFS file's size) before its bytes: a lock that disagrees
    was edited or is corrupt, which no download can fix, so say so at once (exit 6)."""
    etag = (hub_etag or "").strip().removeprefix("W/").strip('"').lower()
    hash_differs = (
        bool(re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag))
        and len(etag) == len(job.etag)
        and etag != job.etag
    )
    size_differs = hub_size is not None and hub_size.strip().isdigit() and int(hub_size) != job.size
    if hash_differs or size_differs:
        hub_says = f"hash {etag}" if hash_differs else f"size {int(hub_size or 0)}"
        lock_says = f"hash {job.etag}" if hash_differs else f"size {job.size}"
        raise LockDisagreesWithHub(
            f"{job.label}: the lockfile disagrees with the endpoint: the lock says {lock_says}, the endpoint says "
            f"{hub_says} for this commit; nothing of it was downloaded"
        )


def check_content_range(response: Response, position: int, job: FileJob) -> None:
    """A 206 answer's range starts where it was asked, and is of a file of the lock's size."""
    match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("content-range", ""))
    if not match or int(match.group(1)) != position:
        raise TruncatedBody(
            f"{job.label}: unexpected Content-Range {response.headers.get('content-range')!r}"
        )
    if match.group(3) != "*" and int(match.group(3)) != job.size:
        raise BadBytes(
            f"{job.label}: the server's file is {match.group(3)} bytes, the lockfile says {job.size}; discarded"
        )
