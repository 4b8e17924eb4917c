"""What the download engine is given (`FileJob`), what it reports while it works (`Reporter`, which
`prefetch.progress` implements) and what it returns (`TransferStats`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from prefetch.auth import Credential
from prefetch.cache import RepoCache
from prefetch.errors import PrefetchError
from prefetch.hashing import GitOidHash
from prefetch.terminal import printable

# Files below this size are fetched whole into memory and written once: no partial file, no resume state.
SMALL_FILE = 1024 * 1024


@dataclass(frozen=True, slots=True)  # slots: a cold sync of a 100k-file repo holds 100k of them
class FileJob:
    """One blob to bring into the cache.

    Its URL and label are made when asked for, from strings its entry and its lock line already hold:
    stored, they were a third of a 100k-file sync's peak memory.
    """

    cache: RepoCache
    resolve_url: str  # the entry's `{endpoint}/{repo}/resolve/{commit}/`, shared by its files
    repo: str
    path: str
    token: Credential | None  # the Hub token (sent to the Hub's origin only), or a source's own credential
    etag: str  # the expected hash, which names the blob and its partial file (a stand-in if not `published`)
    size: int
    lfs: bool  # etag is a sha256 of the content (else a git object id, see `hashing.GitOidHash`)
    published: bool = True  # False: the endpoint published no hash; the bytes' sha256 is learned on first use
    replace: bool = False  # the cached blob failed its hash (`sync --verify`): fetch it again, rename over it
    source_url: str | None = None  # where the bytes are when not the Hub's /resolve (a registry's blob URL)
    xet_hash: str | None = None  # a Xet-backed file's hash: fetched through the Hub's Xet storage

    @property
    def small(self) -> bool:
        """Fetched whole into memory (`SMALL_FILE`): it never has a partial file to resume."""
        return self.size < SMALL_FILE

    @property
    def learned_key(self) -> tuple[str, str]:
        """Its key in `TransferStats.learned` (in this process and in a helper's reports alike)."""
        return self.cache.folder.name, self.etag

    @property
    def url(self) -> str:
        """Where its bytes are asked for: /resolve/{commit}/{path} on the Hub, or its `source_url`."""
        return self.source_url or self.resolve_url + quote(self.path)

    @property
    def label(self) -> str:
        """`org/name:path`, for messages (control characters escaped)."""
        return f"{self.repo}:{printable(self.path)}"

    def new_hash(self) -> Any:
        if self.lfs or not self.published:
            return hashlib.sha256()
        return GitOidHash(self.size)

    def blob_name(self, hashed: Any) -> str | None:
        """The name to install bytes hashed by `new_hash()` under; None: they do not match the expected hash.

        A git object id may be an LFS pointer's (a mirror's listing): such bytes take their sha256 as name.
        """
        if not self.published:
            return str(hashed.hexdigest())
        if self.lfs:
            return self.etag if hashed.hexdigest() == self.etag else None
        name: str | None = hashed.blob_name(self.etag)
        return name


@dataclass(frozen=True)
class LaneTry:
    """The first attempt of a small file, made by the lane of small files (`download.lane`), which failed:
    `failure` (None: its bytes did not match). `started` (`time.monotonic()`) is when it was sent: the
    file's next attempts share its time budget (`retry.max_time` counts from there)."""

    failure: Exception | None
    started: float


@dataclass
class TransferStats:
    files_fetched: int = 0
    files_linked: int = 0
    bytes_fetched: int = 0
    errors: list[PrefetchError] = field(default_factory=list)
    # (repo folder name, job etag) -> the sha256 that names the blob, where it was learned from the bytes
    learned: dict[tuple[str, str], str] = field(default_factory=dict)


class Reporter(Protocol):
    """What the engine tells the outside world; `prefetch.progress` implements the displays (a protocol,
    so the displays need not import the engine: `prefetch env` loads none of it). Each method does
    nothing unless a reporter says otherwise."""

    def file_started(self, job: FileJob) -> None:
        return None

    def file_waiting(self, job: FileJob) -> None:
        """Another process (a sync, huggingface_hub) holds `job`'s blob lock: this run waits for it
        (until `file_started`, or `file_done` when that process installed the blob)."""
        return None

    def advance(self, nbytes: int) -> None:
        return None

    def resumed(self, nbytes: int) -> None:
        """`nbytes` of a file were on disk already (a partial download resumed): done, not fetched."""
        return None

    def file_done(self, job: FileJob, how: str) -> None:
        return None

    def retry(self, message: str) -> None:
        return None


class SilentReporter(Reporter):
    """Reports nothing: the engine of a library caller that gave no display."""
