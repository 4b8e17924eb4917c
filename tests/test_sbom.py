"""`prefetch sbom`: a valid, deterministic CycloneDX 1.6 SBOM of a real lockfile."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from prefetch.offline import sbom as sbom_mod
from tests.conftest import PrefetchRunner
from tests.offline_helpers import LFS, make_model
from tests.test_interop import sync


def test_sbom_is_valid_cyclonedx_and_deterministic(prefetch: PrefetchRunner, hub: Any) -> None:
    cdx_json = pytest.importorskip(
        "cyclonedx.validation.json",
        reason="needs cyclonedx-python-lib[json-validation] (the CycloneDX schemas)",
    )
    from cyclonedx.schema import SchemaVersion

    r = make_model(hub)
    lock = sync(
        prefetch,
        [
            {"repo": "org/model", "include": ["*.json", "*.safetensors"]},
            {"repo": "org/data", "type": "dataset"},
        ],
    )
    first = prefetch("sbom", str(lock))
    assert first.code == 0, first
    second = prefetch("sbom", str(lock), "-o", str(prefetch.tmp / "sbom.json"))
    assert second.code == 0, second
    assert (prefetch.tmp / "sbom.json").read_text() == first.stdout  # same lock, same bytes

    validator = cdx_json.JsonStrictValidator(SchemaVersion.V1_6)
    assert validator.validate_str(first.stdout) is None
    bom = json.loads(first.stdout)
    assert bom["specVersion"] == "1.6" and "timestamp" not in bom["metadata"]
    assert re.fullmatch(
        r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", bom["serialNumber"]
    )
    assert bom["metadata"]["tools"]["components"][0]["name"] == "prefetch"
    model, data = bom["components"]
    assert model["type"] == "machine-learning-model"
    assert model["purl"] == f"pkg:huggingface/org/model@{r['c1']}"
    assert (model["group"], model["name"], model["version"]) == ("org", "model", r["c1"])
    files = {f["name"]: f for f in model["components"]}
    assert sorted(files) == ["config.json", LFS, "nested/dir/tokenizer.json"]
    lfs_sha = hashlib.sha256(r["model"].files()[LFS]).hexdigest()
    assert files[LFS]["hashes"] == [{"alg": "SHA-256", "content": lfs_sha}]
    git_sha1 = r["model"].file_info("main", "config.json").oid
    assert files["config.json"]["swhid"] == [f"swh:1:cnt:{git_sha1}"]
    assert files["config.json"]["omniborId"] == [f"gitoid:blob:sha1:{git_sha1}"]
    assert "hashes" not in files["config.json"]  # a git blob id is not the SHA-1 of the content
    assert data["type"] == "data" and "purl" not in data  # the purl huggingface type covers models only
    # The lock names the endpoint it was resolved against (here the test Hub), and so does the SBOM.
    assert data["externalReferences"] == [{"type": "vcs", "url": f"{hub.url}/datasets/org/data"}]
    assert {"name": "prefetch:lockfile:endpoint", "value": hub.url} in bom["metadata"]["properties"]

    bad = json.loads(first.stdout)
    bad["components"][0]["type"] = "model"
    assert validator.validate_str(json.dumps(bad)) is not None  # the validator does reject

    other = prefetch.tmp / "other.lock"  # another lock (one entry less): another serial number
    other.write_text(lock.read_text().split("- repo: org/data")[0])
    assert sbom_mod.sbom(other)["serialNumber"] != bom["serialNumber"]
    assert sbom_mod.sbom(lock) == bom
