"""A lock as CNCF ModelPack artifacts (modelpack/model-spec `docs/spec.md`, `docs/config.md`,
`docs/annotations.md`): each locked entry (a repo at its commit) is one image manifest with
`artifactType: application/vnd.cncf.model.manifest.v1+json`, and an OCI image index lists them all,
so one reference names a whole deployment.

- One raw layer per locked file (`application/vnd.cncf.model.<kind>.v1.raw`), in path order,
  annotated with `org.cncf.model.filepath` and `org.cncf.model.file.metadata+json`. Raw, because a raw
  layer's digest is the file's sha256: an LFS file's is the lock's, so its blob is streamed from the
  cache and never hashed again; a regular file's (the lock has its git sha1) is hashed once from
  memory, after its git sha1 is checked in the same pass.
- The config fills the spec's schema, which allows no other field (`additionalProperties: false`):
  `descriptor.name` the repo, `descriptor.version` the revision as locked, `descriptor.revision` the
  commit, `descriptor.sourceURL` the repo's page on the endpoint (`/datasets/...` for a dataset);
  `config` is empty (prefetch does not guess formats or precisions); `modelfs.diffIds` the layer
  digests (raw layers are their own uncompressed content). No `createdAt`: no timestamps anywhere.
- What the schema has no field for is in annotations (`ANNOTATIONS`), exact and machine-readable, on
  the manifest and on its descriptor in the index: the lock entry's key, repo, type, revision, commit
  and endpoint; `pull` finds an entry's manifest by them without fetching the others.

Every document is `canonical_json`, and every list is sorted: the same lock and cache give
byte-identical manifests and index.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefetch.cache import RepoCache
from prefetch.errors import IntegrityError
from prefetch.files import NOFOLLOW_READ
from prefetch.hashing import GitOidHash
from prefetch.lockfile import Lock, LockedEntry, LockedFile
from prefetch.oci.blobs import Blob, FilePart, canonical_json
from prefetch.settings import DEFAULT_ENDPOINT

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
KINDS = ("weight", "weight.config", "doc", "code", "dataset")
RAW_LAYERS = frozenset(f"application/vnd.cncf.model.{kind}.v1.raw" for kind in KINDS)
FILEPATH = "org.cncf.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
UNTESTED = "org.cncf.model.file.mediatype.untested"

# prefetch's own annotations (no domain of its own to reverse: a plain prefix), one constant each.
ENTRY = "prefetch.entry"  # LockedEntry.key: type:repo@revision
REPO, TYPE, REVISION, COMMIT, ENDPOINT = (
    "prefetch.repo",
    "prefetch.type",
    "prefetch.revision",
    "prefetch.commit",
    "prefetch.endpoint",
)
LOCK_DIGEST = "prefetch.lock.manifest_digest"
ANNOTATIONS = (ENTRY, REPO, TYPE, REVISION, COMMIT, ENDPOINT)

# File kinds by name, as modctl/KitOps sort a model folder: weights by format, their configuration
# (tokenizers, vocabularies, JSON/YAML), documentation, code; a dataset repo's other files are data.
_WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".onnx", ".h5", ".keras", ".pb",
    ".tflite", ".msgpack", ".npz", ".npy", ".mlmodel", ".ot", ".pdparams", ".nemo", ".llamafile",
)  # fmt: skip
_CONFIG_SUFFIXES = (
    ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".model", ".tiktoken", ".vocab",
    ".jinja", ".spm",
)  # fmt: skip
_CONFIG_NAMES = ("vocab.txt", "merges.txt", "special_tokens_map.json", "added_tokens.json")
_DOC_SUFFIXES = (".md", ".rst", ".pdf", ".html", ".htm", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
_DOC_PREFIXES = (
    "readme",
    "license",
    "licence",
    "notice",
    "copying",
    "changelog",
    "authors",
    "citation",
    "use_policy",
)
_CODE_SUFFIXES = (
    ".py", ".sh", ".ipynb", ".js", ".ts", ".go", ".rs", ".c", ".cc", ".cpp", ".h", ".hpp", ".java",
    ".cu", ".cuh", ".lua", ".rb", ".r", ".swift", ".kt", ".scala", ".pl",
)  # fmt: skip
_DATASET_SUFFIXES = (".csv", ".tsv", ".parquet", ".arrow", ".jsonl", ".avro", ".orc", ".feather", ".tfrecord")
_DOC_NAMES = (".gitattributes", ".gitignore")


def layer_kind(path: str, repo_type: str) -> tuple[str, bool]:
    """(kind, whether the name decided it): a file no rule names is `code` in a model repo (KitOps'
    catch-all) and `dataset` in a dataset repo, and its layer says `untested`."""
    name = posixpath.basename(path).lower()
    if name.startswith(_DOC_PREFIXES) or name.endswith(_DOC_SUFFIXES) or name in _DOC_NAMES:
        return "doc", True
    if name.endswith(_CODE_SUFFIXES) or name == "requirements.txt":
        return "code", True
    if name.endswith(_DATASET_SUFFIXES) or (repo_type == "dataset" and not name.endswith(_WEIGHT_SUFFIXES)):
        return "dataset", name.endswith(_DATASET_SUFFIXES)
    if name.endswith(_WEIGHT_SUFFIXES):
        return "weight", True
    if name.endswith(_CONFIG_SUFFIXES) or name in _CONFIG_NAMES or name.startswith(("tokenizer", "vocab")):
        return "weight.config", True
    return "code", False


def file_metadata(file: LockedFile) -> str:
    """The spec's FileMetadata for a layer, with fixed owner, mode and time (no local state leaks in)."""
    meta = {
        "name": posixpath.basename(file.path),
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "size": file.size,
        "mtime": "1970-01-01T00:00:00Z",
        "typeflag": ord("0"),  # tar.TypeReg, as Go marshals a byte
    }
    return canonical_json(meta).decode("utf-8")


def source_url(entry: LockedEntry, endpoint: str) -> str:
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[entry.type]
    return f"{endpoint.rstrip('/')}/{prefix}{entry.repo}"


def entry_annotations(entry: LockedEntry, endpoint: str) -> dict[str, str]:
    return {
        ENTRY: entry.key,
        REPO: entry.repo,
        TYPE: entry.type,
        REVISION: entry.revision,
        COMMIT: entry.commit,
        ENDPOINT: endpoint,
    }


@dataclass(frozen=True)
class Manifest:
    """A manifest (or index) document, and what its descriptor in a parent index says."""

    data: bytes
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, str] | None = None
    entry: LockedEntry | None = None

    @property
    def blob(self) -> Blob:
        return Blob.of_bytes(self.data, self.media_type)

    @property
    def digest(self) -> str:
        return self.blob.digest

    def descriptor(self) -> dict[str, Any]:
        # No `artifactType` (OPTIONAL; the manifest itself carries it): skopeo 1.9 (Debian 12) re-serialises
        # an index whose descriptors have one, which changes the digest that pins the deployment.
        extra: dict[str, Any] = {}
        if self.annotations:
            extra["annotations"] = self.annotations
        if self.platform:
            extra["platform"] = self.platform
        return self.blob.descriptor(**extra)


@dataclass
class Artifact:
    """What a push writes: distinct blobs (layers and configs, by digest), the manifests, and the
    index that names them all (the reference's tag points at it)."""

    blobs: dict[str, Blob]
    manifests: list[Manifest]
    index: Manifest
    files: int = 0  # locked files it carries

    @property
    def bytes(self) -> int:
        return sum(b.size for b in self.blobs.values())


def index_of(manifests: list[Manifest], annotations: dict[str, str]) -> Manifest:
    document = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [m.descriptor() for m in manifests],
        "annotations": annotations,
    }
    return Manifest(canonical_json(document), INDEX)


def regular_file_bytes(cache: RepoCache, file: LockedFile) -> bytes:
    """A regular (non-LFS) file's blob, read once into memory and checked against its git sha1 in the
    same pass (the hash its layer digest is computed from must be of the locked bytes)."""
    fd = os.open(cache.blob_path(file.etag), NOFOLLOW_READ)
    try:
        data = os.read(fd, file.size + 1) if file.size else b""
        while len(data) <= file.size and (more := os.read(fd, file.size + 1 - len(data))):
            data += more
    finally:
        os.close(fd)
    h = GitOidHash(len(data))
    h.update(data)
    if len(data) != file.size or h.hexdigest() != file.git_sha1:
        raise IntegrityError(
            f"corrupt blob {cache.blob_path(file.etag)} ({cache.repo_id}: {file.path}): its git blob sha1 is "
            f"{h.hexdigest()}, the lock says {file.git_sha1}; run `prefetch verify` and sync again"
        )
    return data


def file_layer(cache: RepoCache, entry: LockedEntry, file: LockedFile) -> tuple[Blob, dict[str, Any]]:
    """A locked file's raw layer, and its descriptor in the entry's manifest."""
    kind, tested = layer_kind(file.path, entry.type)
    media_type = f"application/vnd.cncf.model.{kind}.v1.raw"
    if file.sha256 is not None:  # the lock's digest: the cache blob is streamed, not hashed again
        blob = Blob(
            f"sha256:{file.sha256}",
            file.size,
            media_type,
            (FilePart(str(cache.blob_path(file.etag)), file.size),),
        )
    else:
        blob = Blob.of_bytes(regular_file_bytes(cache, file), media_type)
    annotations = {FILEPATH: file.path, FILE_METADATA: file_metadata(file)}
    if not tested:
        annotations[UNTESTED] = "true"
    return blob, blob.descriptor(annotations=annotations)


def modelpack(lock: Lock, root: Path) -> Artifact:
    """The lock as ModelPack artifacts, one per entry, and their index (see the module's docstring).
    The caller checked that every locked blob is in the cache with its size."""
    endpoint = lock.endpoint or DEFAULT_ENDPOINT
    blobs: dict[str, Blob] = {}
    manifests: list[Manifest] = []
    for entry in lock.entries:
        cache = RepoCache(root, entry.repo, entry.type)
        layers = []
        for file in sorted(entry.files, key=lambda f: f.path):
            blob, descriptor = file_layer(cache, entry, file)
            blobs.setdefault(blob.digest, blob)
            layers.append(descriptor)
        config = Blob.of_bytes(
            canonical_json(
                {
                    "descriptor": {
                        "name": entry.repo,
                        "version": entry.revision,
                        "revision": entry.commit,
                        "sourceURL": source_url(entry, endpoint),
                    },
                    "config": {},
                    "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
                }
            ),
            MODEL_CONFIG,
        )
        blobs.setdefault(config.digest, config)
        annotations = {
            **entry_annotations(entry, endpoint),
            "org.opencontainers.image.title": entry.repo,
            "org.opencontainers.image.version": entry.revision,
            "org.opencontainers.image.revision": entry.commit,
            "org.opencontainers.image.source": source_url(entry, endpoint),
        }
        document = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": MODEL_ARTIFACT,
            "config": config.descriptor(),
            "layers": layers,
            "annotations": annotations,
        }
        manifests.append(
            Manifest(canonical_json(document), MANIFEST, entry_annotations(entry, endpoint), entry=entry)
        )
    index = index_of(manifests, {LOCK_DIGEST: lock.manifest_digest})
    return Artifact(blobs, manifests, index, files=sum(len(e.files) for e in lock.entries))
