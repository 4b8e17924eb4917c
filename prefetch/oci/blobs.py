"""A blob to push: its digest, size and media type, and where its bytes are: pieces of memory and of
files in the cache, read in order (`Parts`), so that a raw layer is the cache's own blob and a tar
layer is headers around it, never a copy.

Digests are known when a blob is made: a raw LFS layer's is the lock's sha256 (the cache's blobs were
verified when they were installed, and the registry checks the digest of what it receives), a small
file's or JSON document's is hashed from memory, and a tar's is hashed by reading its parts once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any, cast

from prefetch.errors import IntegrityError
from prefetch.files import NOFOLLOW_READ
from prefetch.hashing import READ_BLOCK


@dataclass(frozen=True, slots=True)
class FilePart:
    """The first `size` bytes of a file (a cache blob), opened without following a symlink."""

    path: str
    size: int


Part = bytes | FilePart


def part_size(part: Part) -> int:
    return len(part) if isinstance(part, bytes) else part.size


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex>
    size: int
    media_type: str
    parts: tuple[Part, ...]

    @classmethod
    def of_bytes(cls, data: bytes, media_type: str) -> Blob:
        return cls(sha256_digest(data), len(data), media_type, (data,))

    @classmethod
    def hashed(cls, parts: Iterable[Part], media_type: str) -> Blob:
        """A blob whose digest is not known yet: its parts are read once to hash them."""
        parts = tuple(parts)
        size = sum(part_size(p) for p in parts)
        h = hashlib.sha256()
        with PartsReader(parts) as reader:
            while block := reader.read(READ_BLOCK):
                h.update(block)
        return cls(f"sha256:{h.hexdigest()}", size, media_type, parts)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def open(self) -> IO[bytes]:
        """A seekable reader of its bytes (a `FileBody` reads ranges of it)."""
        return cast(IO[bytes], PartsReader(self.parts))

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def canonical_json(value: Any) -> bytes:
    """The one serialisation of every document pushed: sorted keys, no spaces, UTF-8. The same lock
    and cache therefore give byte-identical manifests, configs and indexes (so identical digests)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class PartsReader(io.RawIOBase):
    """The concatenation of `parts`, seekable; a file part is opened when first read, and a file that
    ends before its stated size is an IntegrityError (the cache changed under the push)."""

    def __init__(self, parts: tuple[Part, ...]) -> None:
        super().__init__()
        self._parts = parts
        self._starts: list[int] = []
        total = 0
        for part in parts:
            self._starts.append(total)
            total += part_size(part)
        self._size = total
        self._pos = 0
        self._fds: dict[int, int] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = self._part_at(self._pos)
            part, within = self._parts[i], self._pos - self._starts[i]
            want = min(len(view) - done, part_size(part) - within)
            if isinstance(part, bytes):
                view[done : done + want] = part[within : within + want]
                n = want
            else:
                n = os.preadv(self._fd(i, part), [view[done : done + want]], within)
                if n == 0:
                    raise IntegrityError(
                        f"{part.path} ended before its {part.size} bytes: it changed during the push"
                    )
            done += n
            self._pos += n
        return done

    def _part_at(self, pos: int) -> int:
        lo, hi = 0, len(self._starts) - 1
        while lo < hi:  # the last part starting at or before pos (empty parts skipped by size)
            mid = (lo + hi + 1) // 2
            if self._starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        while part_size(self._parts[lo]) == 0 or self._starts[lo] + part_size(self._parts[lo]) <= pos:
            lo += 1
        return lo

    def _fd(self, i: int, part: FilePart) -> int:
        fd = self._fds.get(i)
        if fd is None:
            fd = self._fds[i] = os.open(part.path, NOFOLLOW_READ)
        return fd

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
        super().close()
