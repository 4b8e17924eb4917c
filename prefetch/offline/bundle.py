"""`prefetch bundle`: write a tar of exactly the locked part of the cache (+ the lockfile) for an air gap,
verifying every blob on the way. What the tar holds: `prefetch.offline.bundle_layout`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from prefetch.cache import is_regular_blob
from prefetch.errors import UsageError
from prefetch.files import fsync_dir, open_regular
from prefetch.hashing import READ_BLOCK, blob_hasher
from prefetch.lockfile import load_lock
from prefetch.offline.bundle_layout import BUNDLE_LOCK_NAME, bundle_layout
from prefetch.offline.shared import LockedBlob, Report, cache_root, verify_error
from prefetch.progress import human_bytes


@dataclass
class BundleReport(Report):
    output: Path
    cache_dir: Path
    entries: int
    files: int
    blobs: int
    bytes: int
    archive_bytes: int
    sha256: str

    def render(self) -> str:
        return (
            f"wrote {self.output}: {self.files} files of {self.entries} entries ({self.blobs} blobs, "
            f"{human_bytes(self.bytes)}, every blob verified), {human_bytes(self.archive_bytes)}, "
            f"sha256 {self.sha256}"
        )


def bundle(lock_path: str | Path, output: str | Path, *, cache_dir: str | Path | None = None) -> BundleReport:
    """Write a tar of exactly the locked part of the cache (+ the lockfile), verifying every blob on the way.

    Links and refs come from the lock, so only the blobs must be in the cache. The tar is written to a
    temporary file beside `output` and renamed over it: a failed bundle leaves no half archive behind.
    """
    lock_path, output = Path(lock_path), Path(output)
    lock = load_lock(lock_path)
    lock_bytes = lock_path.read_bytes()
    root = cache_root(lock, lock_path, cache_dir)
    layout = bundle_layout(lock, root)
    problems = list(layout.problems)
    for blob in layout.blobs.values():
        if not is_regular_blob(blob.path):
            problems.append(f"missing blob {blob.etag} ({blob.size} bytes) for {blob.who()}")
        elif blob.path.stat().st_size != blob.size:
            size = blob.path.stat().st_size
            problems.append(f"blob {blob.etag} for {blob.who()} has {size} bytes, the lock says {blob.size}")
    if problems:
        raise verify_error(f"cannot bundle {lock_path}", root, problems)
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder: name the tar file to write")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as raw:
            out = _HashingWriter(raw)
            tar = tarfile.TarFile(
                fileobj=cast(IO[bytes], out),
                mode="w",
                format=tarfile.PAX_FORMAT,
                copybufsize=READ_BLOCK,  # type: ignore[arg-type]
            )
            with tar:
                tar.addfile(_tarinfo(BUNDLE_LOCK_NAME, size=len(lock_bytes)), io.BytesIO(lock_bytes))
                problems += _add_blobs(tar, layout.blobs.values())
                for link in layout.links.values():
                    tar.addfile(_tarinfo(link.member, symlink=link.target))
                for ref in layout.refs.values():
                    tar.addfile(_tarinfo(ref.member, size=len(ref.commit)), io.BytesIO(ref.commit.encode()))
            if problems:
                raise verify_error(f"cannot bundle {lock_path}", root, problems)
            raw.flush()
            os.fsync(raw.fileno())
            size = raw.tell()
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(output.parent)
    return BundleReport(
        output=output,
        cache_dir=root,
        entries=len(lock.entries),
        files=sum(len(e.files) for e in lock.entries),
        blobs=len(layout.blobs),
        bytes=sum(b.size for b in layout.blobs.values()),
        archive_bytes=size,
        sha256=out.h.hexdigest(),
    )


def _add_blobs(tar: tarfile.TarFile, blobs: Iterable[LockedBlob]) -> list[str]:
    """Add each blob, hashing the bytes as tarfile reads them; return the blobs that did not match."""
    problems: list[str] = []
    for blob in blobs:
        h = blob_hasher(blob.lfs, blob.size)
        try:
            with os.fdopen(open_regular(blob.path), "rb") as f:  # a FIFO planted since is refused
                tar.addfile(_tarinfo(blob.member, size=blob.size), _HashingReader(f, h))  # type: ignore[arg-type]
        except OSError as exc:  # vanished or shrank since the size check: the tar cannot be finished
            problem = f"blob {blob.etag} for {blob.who()}: {exc.strerror or exc}"
            raise verify_error("cannot bundle", blob.cache.root, [*problems, problem]) from None
        if h.hexdigest() != blob.etag:
            problems.append(
                f"corrupt blob {blob.etag} for {blob.who()}: {blob.hash_name} is {h.hexdigest()}: {blob.path}"
            )
    return problems


def _tarinfo(name: str, *, size: int = 0, symlink: str | None = None) -> tarfile.TarInfo:
    """A member header with everything that varies between machines zeroed."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if symlink is None:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, size
    else:
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, symlink
    return info


class _HashingReader:
    """Hands the blob to tarfile while hashing it, so the bundle verifies each blob in the same read."""

    def __init__(self, f: IO[bytes], h: Any) -> None:
        self.f, self.h = f, h

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        return data


class _HashingWriter:
    """Hashes the archive as it is written (the report gives its sha256 for the trip across the air gap)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()
