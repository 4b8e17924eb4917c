"""An OCI image layout folder (image-spec `image-layout.md`): `oci-layout`, `index.json` (each tag is a
descriptor annotated `org.opencontainers.image.ref.name`), and `blobs/sha256/<hex>`. What
`skopeo copy oci:DIR:TAG docker://...` reads to carry a push into an air gap.

A raw layer that is a whole cache blob is hard-linked (same inode, no bytes copied; where the
filesystem refuses, a copy); every blob is written under a temporary name and renamed, so a blob
under its digest's name is always complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefetch.errors import UnusableAnswer, UsageError
from prefetch.files import NOFOLLOW_READ, atomic_write, temp_name
from prefetch.hashing import READ_BLOCK
from prefetch.oci.blobs import Blob, FilePart, canonical_json
from prefetch.oci.modelpack import Artifact
from prefetch.oci.reference import DEFAULT_TAG, DIGEST, LayoutRef

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'
MAX_INDEX_JSON = 4 * 1024 * 1024  # bytes of a layout's index.json read


@dataclass
class LayoutWrite:
    linked: int = 0  # blobs hard-linked from the cache
    written: int = 0  # blobs written (copied or from memory)
    present: int = 0  # blobs the folder had already
    bytes_written: int = 0


def blob_path(folder: Path, digest: str) -> Path:
    if not DIGEST.fullmatch(digest):
        raise UnusableAnswer(f"refusing a blob digest that is not sha256:<64 hex>: {digest[:80]!r}")
    return folder / "blobs" / "sha256" / digest.split(":", 1)[1]


def _write_blob(folder: Path, blob: Blob, stats: LayoutWrite) -> None:
    target = blob_path(folder, blob.digest)
    with contextlib.suppress(FileNotFoundError):
        if target.lstat().st_size == blob.size:
            stats.present += 1
            return
    tmp = target.with_name(temp_name(target.name))
    whole = blob.parts[0] if len(blob.parts) == 1 else None
    try:
        if isinstance(whole, FilePart):
            try:
                os.link(whole.path, tmp, follow_symlinks=False)
            except OSError:  # another filesystem, no hard links here, too many links: copied
                _copy(whole.path, tmp)
                stats.written += 1
                stats.bytes_written += blob.size
            else:
                stats.linked += 1
        else:
            with blob.open() as source, open(tmp, "xb") as out:
                shutil.copyfileobj(source, out, READ_BLOCK)
                out.flush()
                os.fsync(out.fileno())
            stats.written += 1
            stats.bytes_written += blob.size
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _copy(source: str, tmp: Path) -> None:
    fd = os.open(source, NOFOLLOW_READ)
    with os.fdopen(fd, "rb") as src, open(tmp, "xb") as out:
        shutil.copyfileobj(src, out, READ_BLOCK)
        out.flush()
        os.fsync(out.fileno())


def write_layout(
    artifact: Artifact, ref: LayoutRef, on_blob: Callable[[Blob], None] | None = None
) -> tuple[LayoutWrite, str]:
    """Write every blob, the manifests and the index of `artifact` into the layout folder, and tag the
    index `ref.tag` (default latest) in `index.json`; other tags there are kept. Returns what was
    written and the tag."""
    folder, tag = ref.path, ref.tag or DEFAULT_TAG
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"oci:{folder}: not a folder")
    (folder / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layout_file = folder / "oci-layout"
    if not layout_file.exists():
        atomic_write(layout_file, LAYOUT_FILE)
    stats = LayoutWrite()
    documents = [m.blob for m in artifact.manifests] + [artifact.index.blob]
    for blob in [*artifact.blobs.values(), *documents]:
        _write_blob(folder, blob, stats)
        if on_blob is not None:
            on_blob(blob)
    descriptor = artifact.index.descriptor()
    descriptor["annotations"] = {REF_NAME: tag}
    kept = [m for m in read_index_json(folder).get("manifests", []) if _ref_name(m) != tag]
    index_json = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [*kept, descriptor],
    }
    atomic_write(folder / "index.json", canonical_json(index_json))
    return stats, tag


def _ref_name(descriptor: Any) -> str | None:
    annotations = descriptor.get("annotations") if isinstance(descriptor, dict) else None
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def read_index_json(folder: Path) -> dict[str, Any]:
    """A layout's `index.json` ({} when there is none yet), bounded and checked to be an index."""
    try:
        fd = os.open(folder / "index.json", NOFOLLOW_READ)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_INDEX_JSON + 1)
    if len(data) > MAX_INDEX_JSON:
        raise UnusableAnswer(f"oci:{folder}: index.json is larger than {MAX_INDEX_JSON} bytes")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise UnusableAnswer(f"oci:{folder}: index.json is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("manifests", []), list):
        raise UnusableAnswer(f"oci:{folder}: index.json is not an image index")
    return parsed


def tagged_descriptor(ref: LayoutRef) -> dict[str, Any]:
    """The descriptor `index.json` lists under the reference's tag (the only one when there is no tag)."""
    manifests = read_index_json(ref.path).get("manifests", [])
    if ref.tag is None and len(manifests) == 1:
        found = manifests
    else:
        tag = ref.tag or DEFAULT_TAG
        found = [m for m in manifests if _ref_name(m) == tag]
    if len(found) != 1 or not isinstance(found[0], dict):
        raise UsageError(f"{ref}: index.json names no single image by that tag ({len(manifests)} listed)")
    return found[0]


def read_blob(folder: Path, digest: str, limit: int) -> bytes:
    """A small blob of the layout (a manifest, an index), at most `limit` bytes, without following a link."""
    path = blob_path(folder, digest)
    try:
        fd = os.open(path, NOFOLLOW_READ)
    except FileNotFoundError:
        raise UnusableAnswer(f"oci:{folder}: blob {digest} is missing") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnusableAnswer(f"oci:{folder}: blob {digest} is larger than {limit} bytes")
    return data
