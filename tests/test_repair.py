"""A same-size corrupt blob (bit rot, or left by `hf download`, which does not check hashes) is found and
repaired by `prefetch sync --verify` and `prefetch verify --repair`, through the real CLI and the test Hub.

A plain `sync` trusts a cached blob of the right size (it was verified when it was installed): that is
documented, and checked here too, so the cost of `--verify` stays opt-in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import PrefetchRunner
from tests.offline_helpers import blob_of, flip_byte

BIG = os.urandom(2 * 1024 * 1024 + 9)  # through a partial file (>= 1 MiB)
SMALL = b'{"model_type": "tiny", "layers": 2}\n'  # fetched into memory, written once


def synced(prefetch: PrefetchRunner, hub: Any) -> tuple[Path, str]:
    """org/model synced, then both of its blobs corrupted in place (same size); (lockfile, commit)."""
    commit = hub.create_repo("org/model").commit({"model.safetensors": BIG, "config.json": SMALL})
    manifest = prefetch.manifest([{"repo": "org/model"}])
    first = prefetch("sync", str(manifest))
    assert first.code == 0, first
    lock = manifest.with_suffix(".lock")
    for path in ("model.safetensors", "config.json"):
        flip_byte(blob_of(prefetch.cache_dir, lock, path))
    hub.reset_counters()
    return lock, commit


def assert_repaired(prefetch: PrefetchRunner, hub: Any, commit: str) -> None:
    """The right bytes, as a consumer loads them; each blob fetched once more, whole."""
    from huggingface_hub import hf_hub_download

    for path, data in (("model.safetensors", BIG), ("config.json", SMALL)):
        loaded = hf_hub_download("org/model", path, cache_dir=prefetch.cache_dir, local_files_only=True)
        assert Path(loaded).read_bytes() == data
        assert str(Path(loaded).parent.name) == commit
    assert hub.bytes_served() == len(BIG) + len(SMALL)


def test_sync_verify_fetches_again_what_does_not_match(prefetch: PrefetchRunner, hub: Any) -> None:
    lock, commit = synced(prefetch, hub)
    manifest = lock.with_suffix(".yaml")

    trusted = prefetch("sync", str(manifest))  # documented: a blob of the right size is trusted
    assert trusted.code == 0, trusted
    assert "2 cached, 0 to fetch" in trusted.output and hub.bytes_served() == 0

    repaired = prefetch("sync", "--verify", str(manifest))
    assert repaired.code == 0, repaired
    assert "0 cached, 2 to fetch" in repaired.output
    for path in ("model.safetensors", "config.json"):
        assert f"(org/model@main): {path}: the cached blob" in repaired.output
    assert "does not match its hash; fetching it again" in repaired.output
    assert_repaired(prefetch, hub, commit)
    assert prefetch("verify", str(lock)).code == 0

    hub.reset_counters()
    again = prefetch("sync", "--verify", str(manifest))  # intact now: hashed, nothing fetched
    assert again.code == 0 and "2 cached, 0 to fetch" in again.output and hub.bytes_served() == 0


def test_verify_names_the_repair_and_repair_fetches_again(prefetch: PrefetchRunner, hub: Any) -> None:
    lock, commit = synced(prefetch, hub)
    (prefetch.cache_dir / "models--org--model" / "snapshots" / commit / "config.json").unlink()

    found = prefetch("verify", str(lock))
    assert found.code == 7, found
    assert f"repair: `prefetch verify --repair {lock}`" in found.stderr

    repaired = prefetch("verify", "--repair", str(lock))
    assert repaired.code == 0, repaired
    assert repaired.stdout.startswith("ok: 2 files of 1 entries verified")
    assert_repaired(prefetch, hub, commit)


def test_verify_repair_needs_the_manifest_for_the_network_settings(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    lock, _ = synced(prefetch, hub)
    elsewhere = prefetch.tmp / "elsewhere"
    elsewhere.mkdir()
    moved = Path(shutil.copy(lock, elsewhere / "prod.lock"))

    result = prefetch("verify", "--repair", "--cache-dir", str(prefetch.cache_dir), str(moved))
    assert result.code == 2, result
    assert f"{elsewhere / 'prod.yaml'} does not exist: name the manifest with --manifest" in result.stderr
    assert hub.bytes_served() == 0

    named = prefetch(
        "verify",
        "--repair",
        "--manifest",
        str(lock.with_suffix(".yaml")),
        "--cache-dir",
        str(prefetch.cache_dir),
        str(moved),
    )
    assert named.code == 0, named


def test_an_offline_sync_verify_refuses_corrupt_blobs(prefetch: PrefetchRunner, hub: Any) -> None:
    lock, _ = synced(prefetch, hub)
    result = prefetch("sync", "--offline", "--verify", str(lock.with_suffix(".yaml")))
    assert result.code == 7, result
    assert (
        "2 cached file(s) do not match their hash, and an offline run cannot fetch them again"
        in result.stderr
    )
