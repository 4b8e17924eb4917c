"""The image-volume profile: the locked part of the cache as a runnable OCI image whose layers unpack to
a read-only Hugging Face cache, for a pod's image volume (Kubernetes `volumes: - image: {reference}`,
KEP-4639) or `podman run --mount type=image,source=IMG,destination=/models`, read with
`HF_HUB_CACHE=/models HF_HUB_OFFLINE=1`.

What a container engine needs to mount an image (containers/image, containerd): an image manifest
with an `application/vnd.oci.image.config.v1+json` config naming `os`, `architecture` and
`rootfs.diff_ids` (one per layer: the digest of its uncompressed tar), and
`application/vnd.oci.image.layer.v1.tar` layers. Layers are uncompressed (weights do not compress,
and a layer's digest is then its diff_id: one hash per layer). The reference names an index with the
same layers under each platform's config (`DEFAULT_PLATFORMS`), so that an engine that selects a
platform finds its own; the configs are the only bytes that differ.

Layers (the tar members are `bundle_layout`'s: the same names, links and refs as `prefetch bundle`):
- one layer per blob of at least `OWN_LAYER_MIN` bytes (`{repo folder}/blobs/{etag}` and its
  folders): a weight shared by two locks or two revisions is the same layer, which a registry skips,
  mounts or a node already has; past `MAX_BLOB_LAYERS` such blobs, consecutive ones share a layer
  (overlay filesystems stack a bounded number of layers);
- a last layer with every folder, the smaller blobs, the snapshot links (relative, as
  huggingface_hub writes them) and the refs: small, and the only one a new lock of the same weights
  changes.
Tars are deterministic: members sorted by name, mtime 0, uid/gid 0, no owner names, PAX headers only
where a name needs them; a blob's bytes are the cache file itself (`FilePart`), never copied.
"""

from __future__ import annotations

import itertools
import posixpath
import tarfile
from pathlib import Path

from prefetch.errors import UsageError
from prefetch.lockfile import Lock
from prefetch.oci.blobs import Blob, FilePart, Part, canonical_json
from prefetch.oci.modelpack import LOCK_DIGEST, MANIFEST, Artifact, Manifest, index_of
from prefetch.offline.bundle_layout import bundle_layout

IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
OWN_LAYER_MIN = 1024 * 1024  # a blob at least this big is a layer of its own
MAX_BLOB_LAYERS = 100  # under overlayfs' and Docker's limits on stacked layers (~125), with room
TITLE = "org.opencontainers.image.title"
_END = b"\0" * 1024  # two zero blocks: the end of a tar


def _header(name: str, kind: bytes, *, size: int = 0, target: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = {tarfile.DIRTYPE: 0o755, tarfile.SYMTYPE: 0o777}.get(kind, 0o644)
    info.size, info.linkname = size, target
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file(name: str, content: Part) -> list[Part]:
    size = len(content) if isinstance(content, bytes) else content.size
    return [_header(name, tarfile.REGTYPE, size=size), content, b"\0" * (-size % 512)]


def _folders(names: list[str]) -> set[str]:
    folders = set()
    for name in names:
        parent = posixpath.dirname(name)
        while parent:
            folders.add(parent)
            parent = posixpath.dirname(parent)
    return folders


def _tar(members: dict[str, list[Part]]) -> Blob:
    """A tar of `members` (name -> header and content parts) and of every folder above them, sorted."""
    parts: list[Part] = []
    for folder in sorted(_folders(list(members))):
        members.setdefault(folder, [_header(folder, tarfile.DIRTYPE)])
    for name in sorted(members):
        parts += members[name]
    parts.append(_END)
    return Blob.hashed(parts, LAYER)


def _groups(items: list[str], most: int) -> list[list[str]]:
    """`items` (sorted) in at most `most` consecutive groups of near-equal length."""
    count = min(len(items), most)
    bounds = [len(items) * i // count for i in range(count + 1)] if count else [0]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


def volume_image(lock: Lock, root: Path, platforms: tuple[str, ...] = DEFAULT_PLATFORMS) -> Artifact:
    """The lock's cache as an image index of one image per platform (see the module's docstring).
    The caller checked that every locked blob is in the cache with its size."""
    layout = bundle_layout(lock, root)
    if layout.problems:
        raise UsageError("the lock contradicts itself:\n  - " + "\n  - ".join(layout.problems))
    own = sorted(m for m, b in layout.blobs.items() if b.size >= OWN_LAYER_MIN)
    layers = [
        _tar({m: _file(m, FilePart(layout.blobs[m].file, layout.blobs[m].size)) for m in group})
        for group in _groups(own, MAX_BLOB_LAYERS)
    ]
    tree: dict[str, list[Part]] = {}
    for member, blob in layout.blobs.items():
        if blob.size < OWN_LAYER_MIN:
            tree[member] = _file(member, FilePart(blob.file, blob.size))
    for member, link in layout.links.items():
        tree[member] = [_header(member, tarfile.SYMTYPE, target=link.target)]
    for member, ref in layout.refs.items():
        tree[member] = _file(member, ref.commit.encode())
    # The tree layer also declares the folders of the blob layers, so every folder has one mode.
    for member in own:
        tree.setdefault(posixpath.dirname(member), [_header(posixpath.dirname(member), tarfile.DIRTYPE)])
    layers.append(_tar(tree))
    blobs = {layer.digest: layer for layer in layers}
    annotations = {
        TITLE: "Hugging Face cache (prefetch image-volume profile)",
        LOCK_DIGEST: lock.manifest_digest,
    }
    manifests = []
    for platform in platforms:
        os_name, _, architecture = platform.partition("/")
        config = Blob.of_bytes(
            canonical_json(
                {
                    "architecture": architecture,
                    "os": os_name,
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
                }
            ),
            IMAGE_CONFIG,
        )
        blobs[config.digest] = config
        document = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
            "annotations": annotations,
        }
        manifests.append(
            Manifest(
                canonical_json(document), MANIFEST, platform={"architecture": architecture, "os": os_name}
            )
        )
    index = index_of(manifests, {LOCK_DIGEST: lock.manifest_digest})
    return Artifact(blobs, manifests, index, files=sum(len(e.files) for e in lock.entries))
