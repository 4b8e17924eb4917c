"""`prefetch sbom`: a CycloneDX 1.6 SBOM of a lockfile's repos and files (a pure function of the lockfile)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prefetch import __version__
from prefetch.hfhub import url_prefix
from prefetch.lockfile import LockedEntry, LockedFile, load_lock

CYCLONEDX_SPEC = "1.6"
HUB_URL = "https://huggingface.co"  # the purl `huggingface` type's default repository
# A fixed namespace for the SBOM serial number: uuid5(namespace, digest of the BOM) is reproducible.
_SBOM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:prefetch:cyclonedx-sbom")


def sbom(lock_path: str | Path) -> dict[str, Any]:
    """A CycloneDX 1.6 SBOM of the lock: a pure function of the lockfile (no timestamp, derived serial).

    Models get the purl `pkg:huggingface/{namespace}/{name}@{commit}` (the purl spec's `huggingface` type
    covers models only, so datasets and spaces carry no purl: their identity is group/name/version and a
    `vcs` reference on the endpoint the lock was resolved against, which the metadata also names). LFS
    files list their SHA-256; other files are identified by their git blob id, which is not the SHA-1 of
    the content, so it goes in `swhid` / `omniborId`, the 1.6 fields made for it.
    """
    lock = load_lock(lock_path)
    body: dict[str, Any] = {
        "$schema": f"http://cyclonedx.org/schema/bom-{CYCLONEDX_SPEC}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC,
        "version": 1,
        "metadata": {
            "tools": {
                "components": [
                    {
                        "type": "application",
                        "name": "prefetch",
                        "version": __version__,
                        "description": "Hugging Face Hub prefetcher (lockfile to SBOM)",
                    }
                ]
            },
            "properties": [
                {"name": "prefetch:lockfile:version", "value": str(lock.version)},
                {"name": "prefetch:lockfile:manifest_digest", "value": lock.manifest_digest},
                {"name": "prefetch:lockfile:tool_version", "value": lock.tool_version},
                *_endpoint_property(lock.endpoint),
            ],
        },
        "components": [_sbom_component(e, lock.endpoint or HUB_URL) for e in lock.entries],
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    serial = uuid.uuid5(_SBOM_NAMESPACE, hashlib.sha256(canonical).hexdigest())
    return {**body, "serialNumber": f"urn:uuid:{serial}"}


def _endpoint_property(endpoint: str | None) -> list[dict[str, str]]:
    """The endpoint the lock was resolved against (older locks do not say)."""
    return [{"name": "prefetch:lockfile:endpoint", "value": endpoint}] if endpoint else []


def _sbom_component(entry: LockedEntry, endpoint: str) -> dict[str, Any]:
    namespace, _, name = entry.repo.rpartition("/")
    ref = f"{entry.type}:{entry.repo}@{quote(entry.revision, safe='/')}"
    component: dict[str, Any] = {
        "type": {"model": "machine-learning-model", "dataset": "data", "space": "application"}[entry.type],
        "bom-ref": ref,
        "name": name,
        "version": entry.commit,
        "description": f"Hugging Face {entry.type} {entry.repo} at revision {entry.revision}",
    }
    if namespace:
        component["group"] = namespace
    if entry.type == "model":
        path = "/".join(quote(part, safe="") for part in entry.repo.split("/"))
        component["purl"] = f"pkg:huggingface/{path}@{entry.commit.lower()}"
    if entry.type == "dataset":
        component["data"] = [{"type": "dataset", "name": entry.repo}]
    component["externalReferences"] = [
        {"type": "vcs", "url": f"{endpoint}/{url_prefix(entry.type)}{entry.repo}"}
    ]
    properties = [
        {"name": "prefetch:repo_type", "value": entry.type},
        {"name": "prefetch:revision", "value": entry.revision},
        {"name": "prefetch:commit", "value": entry.commit},
        {"name": "prefetch:exclude", "value": json.dumps(list(entry.exclude))},
    ]
    if entry.include is not None:
        properties.append({"name": "prefetch:include", "value": json.dumps(list(entry.include))})
    component["properties"] = properties
    component["components"] = [_sbom_file(ref, f) for f in entry.files]
    return component


def _sbom_file(parent_ref: str, f: LockedFile) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "file",
        "bom-ref": f"{parent_ref}#{quote(f.path, safe='/')}",
        "name": f.path,
    }
    if f.sha256:
        item["hashes"] = [{"alg": "SHA-256", "content": f.sha256}]
    elif f.git_sha1:
        item["swhid"] = [f"swh:1:cnt:{f.git_sha1}"]
        item["omniborId"] = [f"gitoid:blob:sha1:{f.git_sha1}"]
    item["properties"] = [
        {"name": "prefetch:size", "value": str(f.size)},
        {"name": "prefetch:lfs", "value": "true" if f.is_lfs else "false"},
    ]
    return item
