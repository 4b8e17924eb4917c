"""What the download engine is given (`FileJob`), what it reports while it works (`Reporter`, which
`prefetch.progress` implements) and what it returns (`TransferStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefetch.auth import Token
from prefetch.cache import RepoCache, blob_hasher
from prefetch.errors import PrefetchError


@dataclass(frozen=True, slots=True)  # slots: a cold sync of a 100k-file repo holds 100k of them
class FileJob:
    """One blob to bring into the cache."""

    cache: RepoCache
    url: str  # /resolve/{commit}/{path} on the Hub
    token: Token | None
    etag: str
    size: int
    lfs: bool  # etag is a sha256 of the content (else a git blob sha1)
    label: str  # `org/name:path`, for messages

    def new_hash(self) -> Any:
        return blob_hasher(self.lfs, self.size)


@dataclass
class TransferStats:
    files_fetched: int = 0
    files_linked: int = 0
    bytes_fetched: int = 0
    errors: list[PrefetchError] = field(default_factory=list)


class Reporter:
    """What the engine tells the outside world; `prefetch.progress` implements the displays."""

    def file_started(self, job: FileJob) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self, job: FileJob, how: str) -> None: ...
    def retry(self, message: str) -> None: ...
