"""`prefetch sync` end to end: the real CLI, the local Hub emulator, and huggingface_hub reading the result."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import CANARY_TOKEN, PrefetchRunner
from tests.hubemu import HubEmulator
from tests.hubemu.fixtures import over_both_profiles

LFS_BYTES = os.urandom(3 * 1024 * 1024 + 17)


def make_repos(hub: HubEmulator) -> dict[str, str]:
    """A model with a tag, a branch, nested paths and an LFS file; a dataset; returns commits by name."""
    model = hub.create_repo("org/model")
    v1 = model.commit(
        {
            "config.json": b'{"hidden": 8}',
            "tokenizer.json": b'{"vocab": {}}',
            "nested/deeper/notes.txt": b"nested file",
            "model.safetensors": LFS_BYTES,
            "pytorch_model.bin": b"\0" * 4096,
        },
        branch="main",
    )
    model.create_tag("v1.0", at=v1)
    v2 = model.commit({"config.json": b'{"hidden": 16}'}, branch="main")
    model.create_branch("dev", at=v1)
    data = hub.create_repo("org/data", repo_type="dataset")
    d1 = data.commit(
        {"data/train.csv": b"a,b\n1,2\n", "data/test.csv": b"a,b\n3,4\n", "README.md": b"# data"}
    )
    return {"v1": v1, "v2": v2, "data": d1}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_python(code: str, env: dict[str, str], no_network: bool = True) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter, without network (`unshare -n`) where this machine allows it."""
    command = [sys.executable, "-c", textwrap.dedent(code)]
    if no_network and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-n", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@over_both_profiles
def test_sync_fills_the_cache_and_huggingface_hub_reads_it_offline(
    prefetch: PrefetchRunner, hub: HubEmulator
):
    commits = make_repos(hub)
    manifest = prefetch.manifest(
        [
            {"repo": "org/model", "revision": "v1.0", "exclude": ["*.bin"]},
            {"repo": "org/model", "revision": "main", "include": ["*.json"]},
            {"repo": "org/data", "type": "dataset", "include": ["data/*"]},
        ]
    )
    result = prefetch("sync", str(manifest))
    assert result.code == 0, result

    lock = yaml.safe_load((prefetch.tmp / "models.lock").read_text())
    assert [e["commit"] for e in lock["entries"]] == [commits["v1"], commits["v2"], commits["data"]]
    files = {f["path"]: f for f in lock["entries"][0]["files"]}
    assert set(files) == {"config.json", "tokenizer.json", "nested/deeper/notes.txt", "model.safetensors"}
    assert files["model.safetensors"]["sha256"] == sha256(LFS_BYTES)
    assert "git_sha1" in files["config.json"]

    code = f"""
        import hashlib, json, os
        from huggingface_hub import hf_hub_download, snapshot_download, scan_cache_dir
        out = {{}}
        snap = snapshot_download("org/model", revision="v1.0", local_files_only=True)
        out["v1_files"] = sorted(
            os.path.relpath(os.path.join(d, f), snap) for d, _, fs in os.walk(snap) for f in fs)
        out["lfs"] = hashlib.sha256(open(os.path.join(snap, "model.safetensors"), "rb").read()).hexdigest()
        out["nested"] = open(hf_hub_download("org/model", "nested/deeper/notes.txt", revision="v1.0",
                                             local_files_only=True)).read()
        out["main_config"] = open(hf_hub_download("org/model", "config.json", local_files_only=True)).read()
        out["by_commit"] = open(hf_hub_download("org/model", "config.json", revision="{commits["v1"]}",
                                                local_files_only=True)).read()
        data = snapshot_download("org/data", repo_type="dataset", local_files_only=True)
        out["data"] = sorted(os.listdir(os.path.join(data, "data")))
        info = scan_cache_dir()
        out["scan"] = sorted((r.repo_id, r.repo_type, len(r.revisions)) for r in info.repos)
        out["warnings"] = [str(w) for w in info.warnings]
        print(json.dumps(out))
    """
    env = {**prefetch.env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = run_python(code, env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["v1_files"] == [
        "config.json",
        "model.safetensors",
        "nested/deeper/notes.txt",
        "tokenizer.json",
    ]
    assert out["lfs"] == sha256(LFS_BYTES)
    assert out["nested"] == "nested file"
    assert out["main_config"] == '{"hidden": 16}'
    assert out["by_commit"] == '{"hidden": 8}'
    assert out["data"] == ["test.csv", "train.csv"]
    assert out["scan"] == [["org/data", "dataset", 1], ["org/model", "model", 2]]
    assert out["warnings"] == []


def test_layout_matches_huggingface_hub(prefetch: PrefetchRunner, hub: HubEmulator):
    commits = make_repos(hub)
    manifest = prefetch.manifest([{"repo": "org/model", "revision": "v1.0"}])
    assert prefetch("sync", str(manifest)).code == 0
    folder = prefetch.cache_dir / "models--org--model"
    assert (folder / "refs" / "v1.0").read_bytes() == commits["v1"].encode()  # no trailing newline
    link = folder / "snapshots" / commits["v1"] / "nested" / "deeper" / "notes.txt"
    assert (
        os.readlink(link)
        == f"../../../../blobs/{hashlib.sha1(b'blob 11' + bytes(1) + b'nested file').hexdigest()}"
    )
    assert os.readlink(folder / "snapshots" / commits["v1"] / "model.safetensors") == (
        f"../../blobs/{sha256(LFS_BYTES)}"
    )
    assert not list(folder.rglob("*.prefetch-partial*"))
    assert not (folder / "trees").exists()  # see docs/offline.md


@over_both_profiles
def test_warm_resync_makes_no_request_and_changed_manifest_fetches_only_the_difference(
    prefetch: PrefetchRunner, hub: HubEmulator
):
    make_repos(hub)
    manifest = prefetch.manifest([{"repo": "org/model", "revision": "v1.0", "include": ["*.json"]}])
    assert prefetch("sync", str(manifest)).code == 0
    first_lock = (prefetch.tmp / "models.lock").read_bytes()

    hub.reset_counters()
    result = prefetch("sync", str(manifest))
    assert result.code == 0, result
    assert hub.count() == 0, hub.requests
    assert (prefetch.tmp / "models.lock").read_bytes() == first_lock

    manifest = prefetch.manifest(
        [{"repo": "org/model", "revision": "v1.0", "include": ["*.json", "*.safetensors"]}]
    )
    hub.reset_counters()
    assert prefetch("sync", str(manifest)).code == 0
    fetched = [
        r.path for r in hub.requests if r.method == "GET" and (r.origin == "cdn" or "/resolve/" in r.path)
    ]
    assert fetched and all("model.safetensors" in p or r"/lfs/" in p for p in fetched), fetched
    # == one copy: a mirror's chunked framing (chunk size lines) adds a few bytes per chunk on the wire
    assert len(LFS_BYTES) <= hub.bytes_served() <= len(LFS_BYTES) * 1.001


def test_a_blob_shared_by_two_repos_is_downloaded_once(prefetch: PrefetchRunner, hub: HubEmulator):
    shared = os.urandom(2 * 1024 * 1024)
    for name in ("org/a", "org/b"):
        hub.create_repo(name).commit({"model.safetensors": shared, "config.json": name.encode()})
    manifest = prefetch.manifest([{"repo": "org/a"}, {"repo": "org/b"}])
    assert prefetch("sync", str(manifest)).code == 0
    assert hub.bytes_served(path_contains=sha256(shared)) == len(shared)
    a = prefetch.cache_dir / "models--org--a" / "blobs" / sha256(shared)
    b = prefetch.cache_dir / "models--org--b" / "blobs" / sha256(shared)
    assert a.stat().st_ino == b.stat().st_ino  # stored once (hard link)


def test_files_are_fetched_from_the_resolved_commit_not_the_branch(
    prefetch: PrefetchRunner, hub: HubEmulator
):
    commits = make_repos(hub)
    manifest = prefetch.manifest([{"repo": "org/model", "revision": "main", "include": ["*.json"]}])
    assert prefetch("sync", str(manifest)).code == 0
    resolves = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{commits['v2']}/" in p for p in resolves), resolves
    assert not [r for r in hub.requests if r.method == "HEAD"]


def test_lockfile_is_deterministic_and_written_with_lock_path(prefetch: PrefetchRunner, hub: HubEmulator):
    make_repos(hub)
    manifest = prefetch.manifest(
        [{"repo": "org/model", "revision": "v1.0"}, {"repo": "org/data", "type": "dataset"}]
    )
    assert prefetch("sync", str(manifest), "--lock", "a.lock").code == 0
    assert (
        prefetch("sync", str(manifest), "--lock", "b.lock", "--cache-dir", str(prefetch.tmp / "c2")).code == 0
    )
    a, b = (prefetch.tmp / "a.lock").read_bytes(), (prefetch.tmp / "b.lock").read_bytes()
    assert a == b
    assert not (prefetch.tmp / "models.lock").exists()


def test_token_goes_to_the_hub_but_never_to_the_cdn(prefetch: PrefetchRunner, hub: HubEmulator):
    hub.add_user("alice", token=CANARY_TOKEN)
    make_repos(hub)
    manifest = prefetch.manifest([{"repo": "org/model", "revision": "v1.0"}])
    assert prefetch("sync", str(manifest), env={"HF_TOKEN": CANARY_TOKEN}).code == 0
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    api = [r for r in hub.requests if r.origin == "api"]
    assert cdn and not any("authorization" in r.headers for r in cdn)
    assert api and all(r.headers.get("authorization") == f"Bearer {CANARY_TOKEN}" for r in api)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "version: 1\nrepos:\n  - repo: org/model\n    inlcude: ['*.json']\n",
            "models.yaml:4:5: repos[0].inlcude",
        ),
        (
            "version: 1\nrepos:\n  - repo: org/model\n    revision: 1.0\n",
            "models.yaml:4:15: repos[0].revision",
        ),
        ("version: 2\nrepos: []\n", "unsupported manifest version 2"),
        ("version: 1\nrepos:\n  - repo: not a repo\n", "repos[0].repo"),
        ("version: 1\nrepos: [\n", "models.yaml:"),
    ],
)
def test_bad_manifest_exits_2_and_touches_nothing(
    prefetch: PrefetchRunner, hub: HubEmulator, content, expected
):
    (prefetch.tmp / "models.yaml").write_text(content)
    result = prefetch("sync", "models.yaml")
    assert result.code == 2, result
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert hub.count() == 0
    assert not prefetch.cache_dir.exists()
    assert not (prefetch.tmp / "models.lock").exists()


def test_unknown_key_suggests_the_close_one(prefetch: PrefetchRunner):
    (prefetch.tmp / "models.yaml").write_text(
        "version: 1\nrepos:\n  - repo: org/model\n    inlcude: ['*.json']\n"
    )
    result = prefetch("sync")
    assert result.code == 2
    assert "did you mean 'include'" in result.stderr


def test_python_api_is_what_the_cli_calls(tmp_path: Path, hub: HubEmulator):
    """`prefetch.sync.sync` works in-process, the way a Python user would call it."""
    from prefetch.run import Settings
    from prefetch.sync import sync

    make_repos(hub)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: org/data\n    type: dataset\n")
    result = sync(manifest, settings=Settings(cache_dir=tmp_path / "cache"))
    assert result.summary()["fetched_files"] == 3
    assert (tmp_path / "m.lock").exists()


def test_dry_run_downloads_nothing(prefetch: PrefetchRunner, hub: HubEmulator):
    make_repos(hub)
    manifest = prefetch.manifest([{"repo": "org/model", "revision": "v1.0"}])
    result = prefetch("sync", str(manifest), "--dry-run")
    assert result.code == 0, result
    assert "5 to fetch" in result.output
    assert hub.count(kind="file") == 0
    assert not (prefetch.tmp / "models.lock").exists()


def test_python_dash_m_and_version(prefetch: PrefetchRunner):
    result = prefetch("--version")
    assert result.code == 0 and "prefetch" in result.stdout


def test_without_unnamed_files_small_blobs_take_the_lock_and_an_fsync_each(
    tmp_path: Path, hub: HubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without O_TMPFILE (NFS, FUSE): small blobs are installed as before, under
    huggingface_hub's lock. Faked at the system-call boundary: `os.open` refuses O_TMPFILE as such a
    filesystem does (EOPNOTSUPP); the downloads go through the test Hub as always."""
    from prefetch.offline.verify import verify
    from prefetch.run import Settings
    from prefetch.sync import sync

    real_open = os.open

    def no_tmpfile(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(95, "Operation not supported", path)  # EOPNOTSUPP
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    make_repos(hub)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: org/data\n    type: dataset\n")
    cache = tmp_path / "cache"
    monkeypatch.setattr(os, "open", no_tmpfile)
    result = sync(manifest, settings=Settings(cache_dir=cache))
    monkeypatch.undo()
    assert result.summary()["fetched_files"] == 3
    assert len(list((cache / ".locks").rglob("*.lock"))) == 3  # the fallback's locks: one per blob
    verify(tmp_path / "m.lock", cache_dir=cache)
