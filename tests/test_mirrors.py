"""Hub-compatible endpoints other than the Hub (issue 14): the emulator's mirror profile and olah, a real mirror.

olah runs in its two modes: (a) serving a local git+LFS repo built here (`offline = true`), (b) pull-through
cache with the Hub emulator as its upstream. `hf download`-style loads through the same endpoints prove the
harness; prefetch syncs, locks, checks and verifies through every one of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from prefetch.lockfile import LockedEntry, LockedFile
from prefetch.resolve import endpoint_for_lock, trust_lock
from tests.conftest import PrefetchRunner
from tests.hubemu import Fault, HubEmulator
from tests.hubemu.fixtures import over_both_profiles
from tests.hubemu.ratelimit import LOCAL_ANONYMOUS, RateLimiter
from tests.olah_fixture import (
    LFS_ATTRIBUTES,
    OlahFactory,
    OlahServer,
    make_git_lfs_repo,
    olah_in_front_of,
    olah_serving_local,
)
from tests.test_helper_process import many_small_files
from tests.test_interop import locked, run_consumer

REPO = "testorg/tiny-model"
WEIGHTS = "model.safetensors"


def repo_files() -> dict[str, bytes]:
    """A small repo: two regular files (one nested) and one LFS file, 2 MiB (more than one chunk)."""
    return {
        "config.json": b'{"model_type": "tiny"}\n',
        "sub/notes.txt": b"notes\n",
        WEIGHTS: os.urandom(2 * 1024 * 1024 + 17),
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {path: sha256(data) for path, data in files.items()}


def raw(
    url: str, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request, no redirect following: what the endpoint itself answers (response, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def sync_lock_check_verify(prefetch: PrefetchRunner, files: dict[str, bytes]) -> Path:
    """sync, then lock, check and verify agree; huggingface_hub loads the cache offline. Returns the lock."""
    manifest = prefetch.manifest([{"repo": REPO}])
    for args in (("sync",), ("lock",), ("check",)):
        result = prefetch(*args, str(manifest))
        assert result.code == 0, result
    lock = manifest.with_suffix(".lock")
    result = prefetch("verify", str(lock))
    assert result.code == 0, result
    entry = locked(lock)[0]
    assert {f["path"] for f in entry["files"]} == set(files)
    # Whatever the endpoint published, the lock ends as the Hub's would: the LFS file by its content's sha256
    # (a mirror's listing names it by its pointer's git id only), the others by their git blob sha1.
    by_path = {f["path"]: f for f in entry["files"]}
    assert by_path[WEIGHTS] == {
        "path": WEIGHTS,
        "size": len(files[WEIGHTS]),
        "sha256": sha256(files[WEIGHTS]),
    }
    assert by_path["config.json"]["git_sha1"] == git_blob_sha1(files["config.json"])
    base = {"repo_id": REPO, "revision": entry["commit"], "cache_dir": str(prefetch.cache_dir)}
    loaded = run_consumer(prefetch, [{"call": "snapshot_download", "kwargs": base}], mode="plain")
    assert loaded == [{"ok": digests(files)}]
    return lock


def load_online(prefetch: PrefetchRunner, endpoint: str, cache: Path) -> dict[str, Any]:
    """huggingface_hub.snapshot_download through `endpoint` (what `hf download` does), in a fresh process."""
    prefetch.env["HF_ENDPOINT"] = endpoint
    call = {"call": "online_snapshot_download", "kwargs": {"repo_id": REPO, "cache_dir": str(cache)}}
    return run_consumer(prefetch, [call], mode="plain", online=True)[0]


# ------------------------------------------------------------------------------- the emulator's profile
on_the_mirror_profile = pytest.mark.parametrize("hub", ["mirror"], indirect=True)


@on_the_mirror_profile
def test_mirror_profile_answers_like_a_mirror(hub: HubEmulator) -> None:
    files = repo_files()
    commit = hub.create_repo(REPO).commit(files)
    url = hub.url
    for path in (
        "/api/whoami-v2",
        f"/api/models/{REPO}/auth-check",
        f"/api/models/{REPO}/refs",
    ):
        answer, _ = raw(url, "GET", path)
        assert (answer.status, answer.getheader("X-Error-Code")) == (404, "RepoNotFound"), path
    assert raw(url, "GET", f"/api/models/{REPO}/revision/main")[0].status == 200
    head, _ = raw(url, "HEAD", f"/{REPO}/resolve/{commit}/{WEIGHTS}")
    assert head.status == 200 and head.getheader("X-Linked-Etag") is None
    assert head.getheader("Content-Length") == str(len(files[WEIGHTS]))
    got, body = raw(url, "GET", f"/{REPO}/resolve/{commit}/{WEIGHTS}", {"Range": "bytes=10-19"})
    assert got.status == 200 and got.getheader("Content-Length") is None
    assert got.getheader("Transfer-Encoding") == "chunked" and body == files[WEIGHTS]
    moved, _ = raw(url, "GET", f"/api/models/{REPO}/tree/{commit}?recursive=true")
    assert moved.status == 307
    assert moved.getheader("Location") == f"{url}/api/models/{REPO}/tree/{commit}/?recursive=true"
    listed, body = raw(url, "GET", f"/api/models/{REPO}/tree/{commit}/?recursive=true")
    assert listed.status == 200
    listing = {f["path"]: f for f in json.loads(body)}
    assert "lfs" not in listing[WEIGHTS]
    assert listing[WEIGHTS]["oid"] == hub.repo(REPO).file_info(commit, WEIGHTS).oid


@on_the_mirror_profile
def test_huggingface_hub_downloads_from_the_mirror_profile(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """What `hf download` needs, the mirror profile serves: it is a fair stand-in for a mirror."""
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    got = load_online(prefetch, hub.url, prefetch.tmp / "hf-cache")
    assert got == {"ok": digests(files)}


@pytest.mark.soak
@over_both_profiles
def test_sync_lock_check_verify_on_both_profiles(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    sync_lock_check_verify(prefetch, files)


@pytest.mark.parametrize("status", [404, 405, 501, 503])
def test_a_missing_auth_check_route_falls_back_to_a_head_of_a_file(
    prefetch: PrefetchRunner, hub: HubEmulator, status: int
) -> None:
    """Revision info answered 200, so auth-check's 404 (any X-Error-Code), 405, 501 or 5xx is a missing route."""
    hub.create_repo(REPO).commit(repo_files())
    hub.inject(Fault("status", times=None, match="/auth-check", status=status))
    manifest = prefetch.manifest([{"repo": REPO}])
    result = prefetch("check", str(manifest), "--retries", "1")
    assert result.code == 0, result
    assert hub.count(path_contains="/resolve/", method="HEAD") == 1


@on_the_mirror_profile
def test_without_auth_check_a_gated_repo_is_still_reported_as_gated(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """The HEAD that stands in for auth-check answers as the download would: gated, not "not found"."""
    hub.create_repo(REPO, gated="manual").commit(repo_files())
    manifest = prefetch.manifest([{"repo": REPO}])
    result = prefetch("check", str(manifest))
    assert result.code == 3, result
    assert "gated repo" in result.output and "not found" not in result.output


@over_both_profiles
def test_without_a_tree_listing_the_revision_siblings_give_the_same_lock(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    files = repo_files()
    commit = hub.create_repo(REPO).commit(files)
    manifest = prefetch.manifest([{"repo": REPO}])
    assert prefetch("sync", str(manifest)).code == 0
    lock = manifest.with_suffix(".lock")
    with_tree = lock.read_text()
    lock.unlink()
    shutil.rmtree(prefetch.cache_dir)
    hub.missing_routes.add("tree")
    hub.reset_counters()
    result = prefetch("sync", str(manifest))
    assert result.code == 0, result
    assert lock.read_text() == with_tree
    assert hub.count(path_contains="/tree/") == 1  # answered by the catch-all 404
    assert [r.path for r in hub.requests if r.query.get("blobs") == "true"] == [
        f"/api/models/{REPO}/revision/{commit}"
    ]
    # `?blobs=true` siblings carry sizes and ids: no HEAD per file (the mirror's one HEAD stands in for auth-check)
    assert hub.count(method="HEAD") == (1 if hub.profile == "mirror" else 0)


@on_the_mirror_profile
def test_an_endpoint_publishing_no_hash_is_hashed_on_first_use_and_recorded(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    hub.missing_routes.add("tree")
    hub.publishes_hashes = False
    manifest = prefetch.manifest([{"repo": REPO}])
    assert prefetch("lock", str(manifest)).code == 0
    lock = manifest.with_suffix(".lock")
    assert all(set(f) == {"path", "size"} for f in locked(lock)[0]["files"])  # sizes from HEAD, no hash
    frozen = prefetch("sync", "--frozen", str(manifest))
    assert frozen.code == 6 and "records no hash for 3 file(s)" in frozen.output, frozen
    unverifiable = prefetch("verify", str(lock))
    assert unverifiable.code == 6 and "records no hash for 3 file(s)" in unverifiable.output, unverifiable

    result = prefetch("sync", str(manifest))
    assert result.code == 0, result
    for path, data in files.items():
        line = (
            f"the endpoint published no hash for {REPO}:{path}; recorded sha256 {sha256(data)} on first use"
        )
        assert line in result.output
    entry = locked(lock)[0]
    assert {f["path"]: f.get("sha256") for f in entry["files"]} == digests(files)
    for path in files:  # blobs named by the recorded sha256, as the Hub names LFS blobs
        blob = next(prefetch.cache_dir.glob(f"models--*/snapshots/*/{path}")).resolve()
        assert blob.name == sha256(files[path])
    assert prefetch("verify", str(lock)).code == 0
    again = prefetch("sync", "--frozen", str(manifest))
    assert again.code == 0 and "published no hash" not in again.output, again


@on_the_mirror_profile
def test_files_without_a_published_hash_are_fetched_in_one_pass(hub: HubEmulator, tmp_path: Path) -> None:
    """Each such file has a key of its own: none waits for a second pass as a copy of another (they
    all had the empty hash as their key, so all but one waited for the first pass to finish)."""
    from prefetch.manifest import load_manifest
    from prefetch.plan import make_plan
    from prefetch.resolve import LockMode, resolve
    from prefetch.run import RunContext, Settings

    hub.create_repo(REPO).commit(repo_files())
    hub.missing_routes.add("tree")
    hub.publishes_hashes = False
    manifest = tmp_path / "models.yaml"
    manifest.write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: {REPO}\n")
    loaded = load_manifest(manifest)
    with RunContext(loaded, Settings(cache_dir=tmp_path / "cache")) as ctx:
        resolution = resolve(ctx, loaded, None, tmp_path / "models.lock", LockMode())
        assert not resolution.failures
        plan = make_plan(ctx, resolution)
    assert sorted(job.path for job in plan.first) == sorted(repo_files()) and plan.later == []


@on_the_mirror_profile
def test_a_mirror_serving_bytes_that_mismatch_its_listing_fails_with_exit_5(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """The listed git id of an LFS pointer commits to the content's sha256: corrupted bytes fail it."""
    hub.create_repo(REPO).commit(repo_files())
    hub.inject(Fault("corrupt", times=None, match=WEIGHTS))
    result = prefetch("sync", str(prefetch.manifest([{"repo": REPO}])), "--retries", "1")
    assert result.code == 5, result
    assert f"{REPO}:{WEIGHTS}" in result.output


def test_the_lock_records_an_endpoint_without_its_credentials() -> None:
    assert endpoint_for_lock("https://user:s3cret@artifacts.example:8443/api/hf/") == (
        "https://artifacts.example:8443/api/hf"
    )
    assert endpoint_for_lock("http://[::1]:8080") == "http://[::1]:8080"


def test_at_the_locked_commit_the_lock_hashes_win_over_a_new_listing() -> None:
    """Re-resolving (`--upgrade`) through another endpoint keeps the lock's hashes while the commit is the same."""
    locked_file = LockedFile(WEIGHTS, 3, sha256="a" * 64)
    old = LockedEntry(REPO, "model", "main", "1" * 40, None, (), "sha256:" + "0" * 64, (locked_file,))
    listed = (LockedFile(WEIGHTS, 3, git_sha1="b" * 40), LockedFile("new.txt", 1, git_sha1="c" * 40))
    new = dataclasses.replace(old, files=listed)
    assert trust_lock(new, old).files == (locked_file, listed[1])
    moved = dataclasses.replace(new, commit="2" * 40)
    assert trust_lock(moved, old) == moved
    assert trust_lock(new, None) == new


# ----------------------------------------------------------------------------- olah serving a local repo
@pytest.fixture
def local_olah(tmp_path: Path, olah_factory: OlahFactory) -> tuple[OlahServer, dict[str, bytes], str]:
    files = {**repo_files(), ".gitattributes": LFS_ATTRIBUTES}
    mirrors = tmp_path / "mirrors"
    commit = make_git_lfs_repo(mirrors, REPO, files)
    return olah_serving_local(olah_factory, mirrors), files, commit


def test_huggingface_hub_downloads_through_olah_serving_a_local_repo(
    prefetch: PrefetchRunner, local_olah: tuple[OlahServer, dict[str, bytes], str]
) -> None:
    olah, files, _ = local_olah
    assert load_online(prefetch, olah.url, prefetch.tmp / "hf-cache") == {"ok": digests(files)}


def test_sync_through_olah_serving_a_local_repo(
    prefetch: PrefetchRunner, local_olah: tuple[OlahServer, dict[str, bytes], str]
) -> None:
    olah, files, _ = local_olah
    prefetch.env["HF_ENDPOINT"] = olah.url
    sync_lock_check_verify(prefetch, files)


# ---------------------------------------------------------------------------- olah as a pull-through cache
def test_huggingface_hub_downloads_through_olah_in_front_of_the_hub(
    prefetch: PrefetchRunner, hub: HubEmulator, olah_factory: OlahFactory
) -> None:
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    olah = olah_in_front_of(olah_factory, hub.url, hub.cdn_url)
    assert load_online(prefetch, olah.url, prefetch.tmp / "hf-cache") == {"ok": digests(files)}


@pytest.mark.soak
def test_sync_through_olah_in_front_of_the_hub(
    prefetch: PrefetchRunner, hub: HubEmulator, olah_factory: OlahFactory
) -> None:
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    prefetch.env["HF_ENDPOINT"] = olah_in_front_of(olah_factory, hub.url, hub.cdn_url).url
    sync_lock_check_verify(prefetch, files)
    # No GET is opened just to see where an LFS file is served: olah would fetch it from the Hub twice.
    assert hub.bytes_served() <= 1.15 * sum(len(data) for data in files.values())


@pytest.mark.soak  # ~20 s once it passes: four CLI syncs and verifies through olah
def test_four_nodes_through_one_olah_fetch_the_repo_from_the_hub_about_once(
    tmp_path: Path, hub: HubEmulator, olah_factory: OlahFactory
) -> None:
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    olah = olah_in_front_of(olah_factory, hub.url, hub.cdn_url)
    one_copy = sum(len(data) for data in files.values())
    nodes = []
    for n in range(4):
        (tmp_path / f"node{n}").mkdir()
        nodes.append(PrefetchRunner(tmp_path / f"node{n}", olah.url))
    hub.reset_counters()
    for count, node in enumerate(nodes, start=1):
        manifest = node.manifest([{"repo": REPO}])
        result = node("sync", str(manifest))
        assert result.code == 0, result
        assert node("verify", str(manifest.with_suffix(".lock"))).code == 0
        print(f"nodes synced: {count}, Hub bytes served: {hub.bytes_served()} (one copy: {one_copy})")
    assert hub.bytes_served() <= 1.15 * one_copy


@pytest.mark.soak  # minutes: olah takes ~0.3 s per small file it fetches from the Hub, however many at once
@pytest.mark.timeout(900)
def test_many_small_files_shared_with_a_helper_process_through_olah(
    prefetch: PrefetchRunner, hub: HubEmulator, olah_factory: OlahFactory
) -> None:
    """The second process for small files (`download.helper`) opens its own connections with the
    parent's recipe: through olah too, the two fetch every file once, and the cache verifies."""
    files = many_small_files()
    hub.create_repo(REPO).commit(files)
    prefetch.env["HF_ENDPOINT"] = olah_in_front_of(olah_factory, hub.url, hub.cdn_url).url
    manifest = prefetch.manifest([{"repo": REPO}])
    result = prefetch("--verbose", "sync", str(manifest), env={"PREFETCH_PROCESSES": "2"}, timeout=600)
    assert result.code == 0, result
    assert "sharing the small files with a helper process" in result.stderr
    # olah asks the Hub once per file (a HEAD, then a GET): no file was fetched twice
    assert hub.count(kind="file", method="GET") == len(files)
    assert hub.bytes_served() == sum(len(data) for data in files.values())
    assert prefetch("verify", str(manifest.with_suffix(".lock"))).code == 0
    base = {"repo_id": REPO, "revision": "main", "cache_dir": str(prefetch.cache_dir)}
    loaded = run_consumer(prefetch, [{"call": "snapshot_download", "kwargs": base}], mode="plain")
    assert loaded == [{"ok": digests(files)}]


@pytest.mark.soak
def test_mirror_bytes_that_mismatch_the_lock_fail_with_exit_5_naming_the_file(
    prefetch: PrefetchRunner, hub: HubEmulator, olah_factory: OlahFactory
) -> None:
    """The lock, made against the Hub, is the root of trust: a mirror serving other bytes is refused."""
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    manifest = prefetch.manifest([{"repo": REPO}])
    assert prefetch("lock", str(manifest)).code == 0
    hub.inject(Fault("corrupt", times=None, origin="cdn"))  # olah caches and serves the corrupted LFS bytes
    prefetch.env["HF_ENDPOINT"] = olah_in_front_of(olah_factory, hub.url, hub.cdn_url).url
    shutil.rmtree(prefetch.cache_dir, ignore_errors=True)
    result = prefetch("sync", str(manifest))
    assert result.code == 5, result
    assert WEIGHTS in result.output
    assert not list(prefetch.cache_dir.glob(f"models--*/snapshots/*/{WEIGHTS}"))


@pytest.mark.soak
def test_endpoint_flag_overrides_the_environment_and_is_recorded_in_the_lock_and_sbom(
    prefetch: PrefetchRunner, hub: HubEmulator, olah_factory: OlahFactory
) -> None:
    """A lock made against the Hub syncs through a mirror (`--endpoint`), and still names the Hub."""
    files = repo_files()
    hub.create_repo(REPO).commit(files)
    prefetch.env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: --endpoint must win
    manifest = prefetch.manifest([{"repo": REPO}])
    assert prefetch("lock", str(manifest), "--endpoint", hub.url).code == 0
    lock = manifest.with_suffix(".lock")
    assert yaml.safe_load(lock.read_text())["endpoint"] == hub.url
    before = lock.read_text()

    olah = olah_in_front_of(olah_factory, hub.url, hub.cdn_url)
    result = prefetch("sync", str(manifest), "--endpoint", olah.url)
    assert result.code == 0, result
    assert lock.read_text() == before  # resolved against the Hub: the lock (and its endpoint) unchanged
    assert prefetch("verify", str(lock)).code == 0
    bom = json.loads(prefetch("sbom", str(lock)).stdout)
    assert {"name": "prefetch:lockfile:endpoint", "value": hub.url} in bom["metadata"]["properties"]
    assert bom["components"][0]["externalReferences"] == [{"type": "vcs", "url": f"{hub.url}/{REPO}"}]


@pytest.mark.soak  # ~30 s: four CLI syncs through olah
def test_the_hubs_resolver_calls_of_nodes_behind_olah(
    tmp_path: Path, hub: HubEmulator, olah_factory: OlahFactory
) -> None:
    """Issue 27's fleet arithmetic, measured (docs/fleet.md says it): olah online asks the Hub `HEAD
    /resolve` for every file every node asks for (its access check: a private or gated file is never
    served from its cache to someone the Hub would refuse), so each node behind it still spends one
    resolver call per file of the Hub's quota; the bytes come from the Hub once. Only a path where the
    nodes do not ask the Hub at all (a registry: docs/fleet.md) spends one node's quota for the fleet."""
    files = {f"data/{i:02d}.parquet": b"PAR1%d" % i * 512 for i in range(40)} | repo_files()
    hub.create_repo(REPO).commit(files)
    limiter = RateLimiter(window=300.0, headers="always")  # (counts per bucket; the quota is not reached)
    hub.rate_limiter = limiter
    olah = olah_in_front_of(olah_factory, hub.url, hub.cdn_url)
    resolver_calls = []
    for n in range(4):
        (tmp_path / f"node{n}").mkdir()
        node = PrefetchRunner(tmp_path / f"node{n}", olah.url)
        manifest = node.manifest([{"repo": REPO}])
        before = limiter.count(LOCAL_ANONYMOUS, "resolvers").requests
        result = node("sync", str(manifest))
        assert result.code == 0, result
        resolver_calls.append(limiter.count(LOCAL_ANONYMOUS, "resolvers").requests - before)
    print(f"the Hub's resolver calls per node through olah: {resolver_calls} ({len(files)} files)")
    assert all(len(files) <= calls <= len(files) + 5 for calls in resolver_calls[1:]), resolver_calls
    assert resolver_calls[0] <= 2 * len(files) + 5, resolver_calls
    assert hub.bytes_served(path_contains="/lfs/") <= 1.15 * sum(
        len(data) for path, data in files.items() if path.endswith((".parquet", ".safetensors"))
    )
