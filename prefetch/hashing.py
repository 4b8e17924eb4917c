"""How the cache names a blob: the sha256 of an LFS file's content, the git blob sha1 of a regular
file's (or, where a mirror lists an LFS file by its pointer's id, the sha256 that id commits to)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from prefetch.files import open_regular

READ_BLOCK = 8 * 1024 * 1024  # read size for hashing blobs at disk speed


def blob_hasher(lfs: bool, size: int) -> Any:
    """How the cache names a blob: sha256 of the content for LFS files, the git blob sha1 otherwise."""
    if lfs:
        return hashlib.sha256()
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % size)
    return h


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git blob sha1 of the git-LFS pointer file of content (sha256, size): the `oid` a mirror lists for
    an LFS file when it does not publish the file's `lfs` object. It commits to the content's sha256."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    h = blob_hasher(False, len(pointer))
    h.update(pointer)
    return str(h.hexdigest())


class GitOidHash:
    """The git blob sha1 and the sha256 of the same bytes, in one pass: a listed git object id is the
    content's blob sha1, or (a mirror's listing of an LFS file) its LFS pointer's, which names the sha256."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sha1 = blob_hasher(False, size)
        self.sha256 = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        self.sha1.update(data)
        self.sha256.update(data)

    def hexdigest(self) -> str:
        return str(self.sha1.hexdigest())

    def blob_name(self, oid: str) -> str | None:
        """The blob name for bytes expected to have git object id `oid`: `oid` itself for a regular file,
        the content's sha256 for an LFS file whose pointer has that id (the Hub's name for it); None: neither."""
        if self.hexdigest() == oid:
            return oid
        sha256 = self.sha256.hexdigest()
        return sha256 if lfs_pointer_oid(sha256, self.size) == oid else None


def hash_file(path: str | Path, lfs: bool, size: int) -> tuple[int, str]:
    """(bytes read, blob name) of a regular file (never through a symlink, never a FIFO: OSError,
    `files.open_regular`), read in large blocks (hashlib releases the GIL meanwhile) with plain
    `os.read`: for 100k tiny files a file object each cost more than their bytes."""
    fd = open_regular(path)
    try:
        return hash_fd(fd, lfs, size)
    finally:
        os.close(fd)


def hash_fd(fd: int, lfs: bool, size: int) -> tuple[int, str]:
    """`hash_file` of an open file, from its current offset: at most `size` + 1 bytes are read (a file that
    grows while it is read, in a shared cache, is longer than `size`, which is all the answer needs)."""
    h = blob_hasher(lfs, size)
    n = 0
    step = min(READ_BLOCK, size + 1)  # a small file is not read into a READ_BLOCK-sized allocation
    while n <= size and (block := os.read(fd, min(step, size + 1 - n))):
        h.update(block)
        n += len(block)
    return n, h.hexdigest()
