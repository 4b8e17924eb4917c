"""Pull's first half: from a reference (a registry's, or an OCI image layout's) and a lock, where each
locked file's bytes are, and with which credential; the download engine fetches them and verifies
every byte against the lock (the lock stays the root of trust: a registry is as untrusted as any
mirror).

Read, bounded: the index (at most `MAX_MANIFEST` bytes; when the reference is a digest, its bytes
must hash to it), then, for each locked entry, the one manifest its descriptor names by the entry's
key and commit, whose bytes must hash to the descriptor's digest. Refused (IntegrityError, exit 5,
before any byte of a file moves): a layer that is not a ModelPack raw layer, a filepath that is
unsafe, that the entry does not lock or that two layers claim, a size other than the lock's, an LFS
file's layer whose digest is not the lock's sha256, an entry at another commit than the lock's.
A regular file's layer digest is the sha256 the lock does not have: the engine checks its git sha1.
Locked files the artifact lacks are listed (`PullPlan.missing`), not fatal here: the caller decides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefetch.auth import Secrets
from prefetch.cancel import CancelToken
from prefetch.errors import IntegrityError, UnusableAnswer, UsageError
from prefetch.lockfile import Lock, LockedEntry
from prefetch.oci.credentials import find_login
from prefetch.oci.layout import blob_path, read_blob, tagged_descriptor
from prefetch.oci.modelpack import COMMIT, ENTRY, FILEPATH, INDEX, MANIFEST, RAW_LAYERS
from prefetch.oci.reference import DIGEST, LayoutRef, Reference, RegistryRef, parse_reference
from prefetch.oci.registry import MAX_MANIFEST, Registry, ScopedCredential
from prefetch.paths import unsafe_path_reason
from prefetch.settings import RetrySettings
from prefetch.terminal import printable

MAX_DESCRIPTORS = 100_000  # manifests in an index, layers in a manifest


@dataclass(frozen=True)
class FileSource:
    """Where one locked file's bytes are: a blob URL on the registry (GET, redirects followed, with
    `credential`), or a blob file of the layout."""

    entry: str  # LockedEntry.key
    path: str
    size: int
    digest: str  # the layer's, sha256:<hex>
    url: str | None = None
    file: Path | None = None
    credential: ScopedCredential | None = field(default=None, repr=False)


@dataclass
class PullPlan:
    reference: str
    index_digest: str
    sources: list[FileSource]
    missing: list[str]  # "entry key: path" of locked files the artifact lacks
    registry: Registry | None = field(default=None, repr=False)  # kept open for the credentials

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise UnusableAnswer(f"{what} is not JSON") from None
    if not isinstance(parsed, dict):
        raise UnusableAnswer(f"{what} is not a JSON object")
    return parsed


def _descriptors(document: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    items = document.get(key)
    if not isinstance(items, list) or len(items) > MAX_DESCRIPTORS:
        raise UnusableAnswer(f"{what}: `{key}` is not a list (of at most {MAX_DESCRIPTORS})")
    for item in items:
        digest, size = (item.get("digest"), item.get("size")) if isinstance(item, dict) else (None, None)
        if (
            not isinstance(digest, str)
            or not DIGEST.fullmatch(digest)
            or not isinstance(size, int)
            or size < 0
        ):
            raise UnusableAnswer(f"{what}: a descriptor without a sha256 digest and a size")
    return items


def _annotations(descriptor: dict[str, Any]) -> dict[str, str]:
    found = descriptor.get("annotations")
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


def _check_digest(data: bytes, digest: str, what: str) -> None:
    actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if actual != digest:
        raise IntegrityError(f"{what}: its bytes hash to {actual}, not the {digest} it was named by")


class _Reader:
    """Manifests and blob locations, from a registry or a layout folder."""

    def __init__(self, ref: Reference, registry: Registry | None) -> None:
        self.ref, self.registry = ref, registry

    def index(self) -> tuple[str, bytes]:
        if isinstance(self.ref, LayoutRef):
            descriptor = tagged_descriptor(self.ref)
            digest = descriptor.get("digest")
            if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
                raise UnusableAnswer(f"{self.ref}: index.json names no sha256 digest")
            if descriptor.get("mediaType") != INDEX:
                raise UsageError(
                    f"{self.ref}: names a {printable(str(descriptor.get('mediaType'))[:80])}, not an index"
                )
            data = read_blob(self.ref.path, digest, MAX_MANIFEST)
            _check_digest(data, digest, str(self.ref))
            return digest, data
        assert self.registry is not None
        media_type, data = self.registry.get_manifest(self.ref.repository, self.ref.reference)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if self.ref.digest is not None:
            _check_digest(data, self.ref.digest, str(self.ref))
        if media_type != INDEX:
            raise UsageError(
                f"{self.ref}: names a {printable(media_type[:80]) or 'document'}, not an image index"
            )
        return digest, data

    def manifest(self, digest: str) -> bytes:
        if isinstance(self.ref, LayoutRef):
            return read_blob(self.ref.path, digest, MAX_MANIFEST)
        assert self.registry is not None
        return self.registry.get_manifest(self.ref.repository, digest)[1]

    def source(self, entry: LockedEntry, path: str, size: int, digest: str) -> FileSource:
        if isinstance(self.ref, LayoutRef):
            return FileSource(entry.key, path, size, digest, file=blob_path(self.ref.path, digest))
        assert self.registry is not None
        repo = self.ref.repository
        return FileSource(
            entry.key,
            path,
            size,
            digest,
            url=self.registry.url(repo, "blobs", digest),
            credential=self.registry.credential(repo),
        )


def _entry_sources(
    reader: _Reader, entry: LockedEntry, descriptor: dict[str, Any], missing: list[str]
) -> list[FileSource]:
    where = f"{reader.ref}: {entry.key}"
    data = reader.manifest(descriptor["digest"])
    if len(data) != descriptor["size"]:
        raise IntegrityError(
            f"{where}: its manifest has {len(data)} bytes, the index says {descriptor['size']}"
        )
    _check_digest(data, descriptor["digest"], f"{where}: manifest")
    manifest = _json_object(data, f"{where}: manifest")
    if manifest.get("mediaType", MANIFEST) != MANIFEST:
        raise UnusableAnswer(f"{where}: not an OCI image manifest")
    locked = {f.path: f for f in entry.files}
    sources: dict[str, FileSource] = {}
    for layer in _descriptors(manifest, "layers", f"{where}: manifest"):
        media_type = layer.get("mediaType")
        path = _annotations(layer).get(FILEPATH)
        if media_type not in RAW_LAYERS:
            raise IntegrityError(
                f"{where}: refusing a layer of type {printable(str(media_type)[:100])!r} (not a ModelPack raw file)"
            )
        if path is None or unsafe_path_reason(path):
            shown = printable(str(path)[:200])
            raise IntegrityError(
                f"{where}: refusing the unsafe file path {shown!r} ({unsafe_path_reason(path or '') or 'none'})"
            )
        file = locked.get(path)
        if file is None:
            raise IntegrityError(
                f"{where}: refusing {printable(path[:200])!r}: the lock has no such file in this entry"
            )
        if path in sources:
            raise IntegrityError(f"{where}: refusing two layers for {printable(path[:200])!r}")
        if layer["size"] != file.size:
            raise IntegrityError(
                f"{where}: {printable(path)}: its layer has {layer['size']} bytes, the lock says {file.size}"
            )
        if file.sha256 is not None and layer["digest"] != f"sha256:{file.sha256}":
            raise IntegrityError(
                f"{where}: {printable(path)}: refusing layer {layer['digest']}: the lock names sha256:{file.sha256}"
            )
        sources[path] = reader.source(entry, path, file.size, layer["digest"])
    missing += [f"{entry.key}: {p}" for p in sorted(set(locked) - set(sources))]
    return [sources[p] for p in sorted(sources)]


def resolve_pull(
    reference: str | Reference,
    lock: Lock,
    *,
    env: Mapping[str, str] | None = None,
    plain_http: bool | None = None,
    retry: RetrySettings | None = None,
    cancel: CancelToken | None = None,
    secrets: Secrets | None = None,
    pool_size: int = 8,
    on_retry: Callable[[str], None] | None = None,
) -> PullPlan:
    """Where every locked file's bytes are in the artifact `reference` names (see the module's
    docstring). The plan keeps the registry's session open for its credentials and for the download
    engine (`pool_size`: the connections it keeps alive): `close()` it."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    registry = None
    if isinstance(ref, RegistryRef):
        login = find_login(ref.registry, ref.repository, env)
        registry = Registry(
            ref,
            login,
            plain_http=plain_http,
            retry=retry,
            cancel=cancel,
            env=env,
            pool_size=pool_size,
            secrets=secrets,
            on_retry=on_retry,
        )
    try:
        reader = _Reader(ref, registry)
        if registry is not None:
            registry.ping(ref.repository)  # type: ignore[union-attr]
        index_digest, data = reader.index()
        index = _json_object(data, f"{ref}: index")
        by_entry: dict[str, list[dict[str, Any]]] = {}
        for descriptor in _descriptors(index, "manifests", f"{ref}: index"):
            key = _annotations(descriptor).get(ENTRY)
            if key is not None:
                by_entry.setdefault(key, []).append(descriptor)
        sources: list[FileSource] = []
        missing: list[str] = []
        for entry in lock.entries:
            found = by_entry.get(entry.key, [])
            if len(found) > 1:
                raise IntegrityError(f"{ref}: the index lists {entry.key} {len(found)} times")
            if not found:
                missing += [f"{entry.key}: {f.path}" for f in entry.files]
                continue
            commit = _annotations(found[0]).get(COMMIT)
            if commit != entry.commit:
                raise IntegrityError(
                    f"{ref}: holds {entry.key} at commit {printable(str(commit)[:64])}, the lock says {entry.commit}"
                )
            sources += _entry_sources(reader, entry, found[0], missing)
    except BaseException:
        if registry is not None:
            registry.close()
        raise
    return PullPlan(str(ref), index_digest, sources, missing, registry)
