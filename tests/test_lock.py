"""Lock semantics like uv/Cargo: sticky locks, --upgrade, --locked, --frozen, --offline (issues 5, 16)."""

from __future__ import annotations

import shutil

import yaml

from tests.conftest import PrefetchRunner
from tests.hubemu import HubEmulator
from tests.hubemu.fixtures import over_both_profiles


def two_commits(hub: HubEmulator) -> tuple[str, str]:
    repo = hub.create_repo("org/model")
    first = repo.commit({"config.json": b'{"v": 1}', "model.safetensors": b"w" * 2048})
    hub.create_repo("org/other").commit({"config.json": b"{}"})
    return first, repo.commit({"config.json": b'{"v": 2}'})


def locked_commits(prefetch: PrefetchRunner) -> dict[str, str]:
    lock = yaml.safe_load((prefetch.tmp / "models.lock").read_text())
    return {e["repo"]: e["commit"] for e in lock["entries"]}


@over_both_profiles
def test_lock_writes_without_downloading_and_is_byte_identical(prefetch: PrefetchRunner, hub: HubEmulator):
    two_commits(hub)
    manifest = prefetch.manifest([{"repo": "org/model"}, {"repo": "org/other"}])
    result = prefetch("lock", str(manifest))
    assert result.code == 0, result
    assert "+ model:org/model@main" in result.stdout
    assert hub.count(kind="file") == 0
    first = (prefetch.tmp / "models.lock").read_bytes()
    (prefetch.tmp / "models.lock").unlink()
    assert prefetch("lock", str(manifest)).code == 0
    assert (prefetch.tmp / "models.lock").read_bytes() == first


@over_both_profiles
def test_locks_are_sticky_until_upgraded(prefetch: PrefetchRunner, hub: HubEmulator):
    repo = hub.create_repo("org/model")
    old = repo.commit({"config.json": b'{"v": 1}'})
    other = hub.create_repo("org/other")
    other_old = other.commit({"config.json": b"{}"})
    manifest = prefetch.manifest([{"repo": "org/model"}, {"repo": "org/other"}])
    assert prefetch("lock", str(manifest)).code == 0
    new = repo.commit({"config.json": b'{"v": 2}'})
    other_new = other.commit({"config.json": b"{ }"})

    hub.reset_counters()
    result = prefetch("lock", str(manifest))
    assert result.code == 0 and "no changes" in result.stdout
    assert hub.count() == 0
    assert locked_commits(prefetch) == {"org/model": old, "org/other": other_old}

    result = prefetch("lock", str(manifest), "--upgrade-repo", "org/model")
    assert result.code == 0
    assert f"~ model:org/model@main {old[:12]} -> {new[:12]}" in result.stdout
    assert locked_commits(prefetch) == {"org/model": new, "org/other": other_old}

    result = prefetch("lock", str(manifest), "--upgrade")
    assert locked_commits(prefetch) == {"org/model": new, "org/other": other_new}
    assert prefetch("lock", str(manifest), "--upgrade-repo", "org/nope").code == 2


def test_sync_keeps_the_locked_commit_and_sync_upgrade_moves_it(prefetch: PrefetchRunner, hub: HubEmulator):
    repo = hub.create_repo("org/model")
    locked = repo.commit({"config.json": b'{"v": 1}'})
    manifest = prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("sync", str(manifest)).code == 0
    moved = repo.commit({"config.json": b'{"v": 2}'})

    assert prefetch("sync", str(manifest)).code == 0
    assert locked_commits(prefetch)["org/model"] == locked
    assert (prefetch.cache_dir / "models--org--model" / "refs" / "main").read_text() == locked

    result = prefetch("sync", str(manifest), "--upgrade")
    assert result.code == 0, result
    assert f"{locked[:12]} -> {moved[:12]}" in result.stdout
    assert locked_commits(prefetch)["org/model"] == moved
    assert (prefetch.cache_dir / "models--org--model" / "refs" / "main").read_text() == moved


@over_both_profiles
def test_locked_uses_the_lock_and_refuses_a_stale_or_missing_one(prefetch: PrefetchRunner, hub: HubEmulator):
    """uv's and Cargo's `--locked`: the lock must exist and match the manifest (exit 6 otherwise)."""
    two_commits(hub)
    manifest = prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("sync", str(manifest), "--locked")
    assert result.code == 6, result
    assert "models.lock" in result.stderr and hub.count() == 0

    assert prefetch("lock", str(manifest)).code == 0
    hub.reset_counters()
    result = prefetch("sync", str(manifest), "--locked")
    assert result.code == 0, result
    # Nothing is resolved: no branch lookup, no tree listing (the access check may confirm the locked commit).
    assert not [r for r in hub.requests if r.path.endswith("/revision/main") or "/tree/" in r.path]

    prefetch.manifest([{"repo": "org/model", "include": ["*.json"]}, {"repo": "org/other"}])
    hub.reset_counters()
    result = prefetch("sync", str(manifest), "--locked")
    assert result.code == 6, result
    assert "org/other" in result.stderr and "org/model" in result.stderr
    assert hub.count() == 0


def test_frozen_uses_the_lock_as_it_is_without_checking_the_manifest(
    prefetch: PrefetchRunner, hub: HubEmulator
):
    """uv's and Cargo's `--frozen`: the lock's entries are synced even when the manifest changed since."""
    two_commits(hub)
    manifest = prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("sync", str(manifest), "--frozen")
    assert result.code == 6, result  # nothing to use
    assert "models.lock" in result.stderr and hub.count() == 0

    assert prefetch("lock", str(manifest)).code == 0
    lock_text = (prefetch.tmp / "models.lock").read_text()
    prefetch.manifest([{"repo": "org/model", "include": ["*.json"]}, {"repo": "org/other"}])  # now stale
    hub.reset_counters()
    result = prefetch("sync", str(manifest), "--frozen")
    assert result.code == 0, result
    assert not [r for r in hub.requests if r.path.endswith("/revision/main") or "/tree/" in r.path]
    assert (prefetch.tmp / "models.lock").read_text() == lock_text  # never written
    snapshot = prefetch.cache_dir / "models--org--model" / "snapshots" / locked_commits(prefetch)["org/model"]
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json",
        "model.safetensors",
    ]  # the lock's files
    assert not (prefetch.cache_dir / "models--org--other").exists()


def test_offline_makes_zero_requests_and_lists_what_is_missing(prefetch: PrefetchRunner, hub: HubEmulator):
    two_commits(hub)
    manifest = prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("sync", str(manifest)).code == 0
    # Remove the snapshot and ref: offline sync rebuilds them from blobs, without any request.
    folder = prefetch.cache_dir / "models--org--model"
    shutil.rmtree(folder / "snapshots")
    shutil.rmtree(folder / "refs")
    hub.reset_counters()
    for args, env in ((["--offline"], None), ([], {"HF_HUB_OFFLINE": "1"})):
        result = prefetch("sync", str(manifest), *args, env=env)
        assert result.code == 0, result
    assert hub.count() == 0
    assert (folder / "refs" / "main").exists()

    for blob in (folder / "blobs").iterdir():
        blob.unlink()
    result = prefetch("sync", str(manifest), "--offline")
    assert result.code == 7, result
    assert "config.json" in result.stderr and "model.safetensors" in result.stderr
    assert hub.count() == 0


def test_frozen_never_writes_the_lockfile(prefetch: PrefetchRunner, hub: HubEmulator):
    """Kubernetes mounts the lock read-only from a ConfigMap: --frozen must only read it."""
    two_commits(hub)
    manifest = prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("lock", str(manifest)).code == 0
    lock = prefetch.tmp / "models.lock"
    # Read-only like a ConfigMap mount. Root ignores these modes, so the mtime checks below are the proof.
    lock.chmod(0o444)
    prefetch.tmp.chmod(0o555)
    try:
        before = lock.stat().st_mtime_ns
        for mode in ("--frozen", "--locked"):
            result = prefetch("sync", str(manifest), mode)
            assert result.code == 0, result
            assert lock.stat().st_mtime_ns == before
        result = prefetch("sync", str(manifest))
        assert result.code == 0, result
        assert lock.stat().st_mtime_ns == before  # unchanged content is not rewritten either
    finally:
        prefetch.tmp.chmod(0o755)


def test_lockfile_keeps_a_relative_cache_dir_relative(prefetch: PrefetchRunner, hub: HubEmulator):
    """An absolute path of this machine in the lock would send verify/env/bundle elsewhere on another one."""
    two_commits(hub)
    manifest = prefetch.manifest([{"repo": "org/other"}], cache_dir="./hub-cache")
    (prefetch.tmp / "locks").mkdir()
    assert prefetch("sync", str(manifest), "--lock", "locks/m.lock").code == 0
    lock = yaml.safe_load((prefetch.tmp / "locks" / "m.lock").read_text())
    assert lock["cache_dir"] == "../hub-cache"
    assert (prefetch.tmp / "hub-cache" / "models--org--other").is_dir()
    assert str(prefetch.tmp) not in (prefetch.tmp / "locks" / "m.lock").read_text()


def lock_with_other_hashes(prefetch: PrefetchRunner, endpoint: str | None) -> None:
    """The lock as if resolved against `endpoint` (None: this one), which lists other bytes for the
    weights at the same commit: the sha256 in the lock is not the Hub's."""
    lock = prefetch.tmp / "models.lock"
    data = yaml.safe_load(lock.read_text())
    if endpoint:
        data["endpoint"] = endpoint
    for entry in data["entries"]:
        for f in entry["files"]:
            if f.get("sha256"):
                f["sha256"] = "ab" * 32
    lock.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_lock_made_against_another_endpoint_that_disagrees_says_so_and_upgrade_trusts_this_one(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """Issue 30, item 1: the message says the lock was made against another endpoint (exit 5, the lock is
    the root of trust) and names the real command; that command takes this endpoint's hashes."""
    two_commits(hub)
    prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("lock").code == 0
    lock_with_other_hashes(prefetch, "https://hub.example")
    result = prefetch("sync")
    assert result.code == 5, result
    assert "the lock was resolved against https://hub.example" in result.stderr, result
    assert f"HF_ENDPOINT={hub.url}" in result.stderr
    assert "`prefetch lock --upgrade-repo org/model`" in result.stderr and "REPO`" not in result.stderr
    assert hub.count(kind="file", path_contains="safetensors", method="GET") <= 1  # no bytes taken
    upgraded = prefetch("lock", "--upgrade-repo", "org/model")
    assert upgraded.code == 0, upgraded
    assert "ab" * 32 not in (prefetch.tmp / "models.lock").read_text()
    assert prefetch("sync").code == 0


def test_a_lock_made_against_this_endpoint_that_disagrees_was_edited(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    two_commits(hub)
    prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("lock").code == 0
    lock_with_other_hashes(prefetch, None)
    result = prefetch("sync")
    assert result.code == 6, result
    assert "was the lockfile edited?" in result.stderr
    assert "`prefetch lock --upgrade-repo org/model`" in result.stderr
    assert prefetch("sync", "--upgrade").code == 0
