"""Offline consumers must just work: huggingface_hub itself loads what `prefetch sync` wrote, without network.

Every check runs huggingface_hub 2.x in a fresh subprocess with HF_HUB_OFFLINE=1, once inside a network
namespace with no interface up (`unshare -n`, skipped with the reason where this machine cannot make one)
and once as a plain process whose HF_ENDPOINT is the test Hub, which then must have seen no request.

Also pinned here: what huggingface_hub does with `trees/{commit}.json`, which prefetch deliberately never
writes (see docs/offline.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PrefetchRunner


def _netns_unavailable() -> str | None:
    """Why `unshare -n` cannot run here (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        proc = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare -n true` failed: {exc}"
    if proc.returncode != 0:
        return f"`unshare -n true` failed here (needs root or unprivileged user namespaces): {proc.stderr.strip()}"
    return None


NETNS_UNAVAILABLE = _netns_unavailable()
OFFLINE_MODES = [
    pytest.param(
        "netns",
        id="unshare-n",
        marks=pytest.mark.skipif(NETNS_UNAVAILABLE is not None, reason=str(NETNS_UNAVAILABLE)),
    ),
    pytest.param("plain", id="HF_HUB_OFFLINE"),
]

# Runs in the consumer subprocess: every call its JSON argument lists, each result or error recorded.
CONSUMER = r"""
import hashlib, json, os, sys
from pathlib import Path
import huggingface_hub as hh

def digest_tree(folder):
    root = Path(folder)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

out = []
for call in json.loads(sys.argv[1]):
    kind, kw = call["call"], call["kwargs"]
    try:
        if kind == "snapshot_download":
            out.append({"ok": digest_tree(hh.snapshot_download(**kw, local_files_only=True))})
        elif kind == "hf_hub_download":
            path = hh.hf_hub_download(**kw, local_files_only=True)
            out.append({"ok": hashlib.sha256(Path(path).read_bytes()).hexdigest()})
        elif kind == "online_snapshot_download":
            out.append({"ok": digest_tree(hh.snapshot_download(**kw))})
        elif kind == "scan_cache_dir":
            info = hh.scan_cache_dir(kw["cache_dir"])
            out.append({"ok": {
                "warnings": [str(w) for w in info.warnings],
                "repos": sorted(
                    [r.repo_type, r.repo_id, sorted([v.commit_hash, sorted(v.refs), len(v.files)] for v in r.revisions)]
                    for r in info.repos),
            }})
    except Exception as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
print(json.dumps(out))
"""


def run_consumer(
    prefetch: PrefetchRunner, calls: list[dict[str, Any]], *, mode: str, online: bool = False, hub: Any = None
) -> list[dict[str, Any]]:
    """Run huggingface_hub calls in a fresh process: offline (`mode` netns or plain), or online for setup."""
    env = prefetch.env_with({"HF_HUB_OFFLINE": None if online else "1", "PYTHONPATH": None})
    command = [sys.executable, "-c", CONSUMER, json.dumps(calls)]
    if mode == "netns" and not online:
        command = ["unshare", "-n", *command]
    if hub is not None and not online:
        hub.reset_counters()
    proc = subprocess.run(
        command,
        env=env,
        cwd=prefetch.tmp,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"consumer failed:\n{proc.stdout}\n{proc.stderr}"
    if hub is not None and not online:
        assert hub.count() == 0, f"an offline consumer reached the Hub: {[r.path for r in hub.requests]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def locked(lock_path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(lock_path.read_text())["entries"]


def sync(prefetch: PrefetchRunner, repos: list[dict[str, Any]], *args: str) -> Path:
    manifest = prefetch.manifest(repos)
    result = prefetch("sync", str(manifest), *args)
    assert result.code == 0, result
    return manifest.with_suffix(".lock")


def make_hub_repos(hub: Any) -> dict[str, Any]:
    """A model with a tag and a newer main, a dataset with nested paths, a repo pinned by commit."""
    model = hub.create_repo("org/model")
    v1 = model.commit(
        {
            "config.json": b'{"model_type": "tiny"}\n',
            "model.safetensors": os.urandom(64 * 1024),
            "tokenizer/tokenizer.json": b'{"version": "1.0"}',
            "tokenizer/special/map.json": b'{"<s>": 0}',
            "weights/extra.bin": os.urandom(20 * 1024),
            "README.md": b"# model\n",
        }
    )
    model.create_tag("v1", at=v1)
    main = model.commit(
        {"model.safetensors": os.urandom(64 * 1024), "docs/deep/nested/notes.txt": b"notes\n"}
    )
    data = hub.create_repo("org/data", repo_type="dataset")
    data_main = data.commit(
        {
            "data/train/part-00000.parquet": os.urandom(32 * 1024),
            "data/train/part-00001.parquet": os.urandom(32 * 1024),
            "data/validation/val.csv": b"id,text\n1,a\n",
            "README.md": b"# data\n",
        }
    )
    pinned = hub.create_repo("org/pinned")
    pinned_commit = pinned.commit({"config.json": b"{}", "sub/a.txt": b"a\n"})
    pinned.commit({"config.json": b'{"newer": true}'})  # main moves on; the entry stays on its commit
    return {
        "model": model,
        "v1": v1,
        "main": main,
        "data": data,
        "data_main": data_main,
        "pinned": pinned,
        "pinned_commit": pinned_commit,
    }


def manifest_repos(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "repo": "org/model",
            "revision": "main",
            "include": ["*.json", "*.safetensors", "docs/**"],
            "exclude": ["tokenizer/special/*"],
        },
        {"repo": "org/model", "revision": "v1"},
        {"repo": "org/data", "type": "dataset", "revision": "main"},
        {"repo": "org/pinned", "revision": r["pinned_commit"]},
    ]


@pytest.mark.parametrize("mode", OFFLINE_MODES)
def test_huggingface_hub_loads_synced_cache_offline(prefetch: PrefetchRunner, hub: Any, mode: str) -> None:
    r = make_hub_repos(hub)
    lock_path = sync(prefetch, manifest_repos(r))
    entries = locked(lock_path)
    assert [f["path"] for f in entries[0]["files"]] == [  # the filter left README.md, weights/, special/ out
        "config.json",
        "docs/deep/nested/notes.txt",
        "model.safetensors",
        "tokenizer/tokenizer.json",
    ]
    assert len(entries[1]["files"]) == 6
    cache = str(prefetch.cache_dir)
    calls: list[dict[str, Any]] = []
    expected: list[Any] = []
    for e in entries:
        repo = hub.repo(e["repo"], e["type"])
        content = repo.files(e["commit"])
        want = {f["path"]: sha256(content[f["path"]]) for f in e["files"]}
        assert want, e
        base = {"repo_id": e["repo"], "repo_type": e["type"], "revision": e["revision"], "cache_dir": cache}
        # (a) no trees/{commit}.json: the snapshot folder is what huggingface_hub returns, filtered or not.
        calls.append({"call": "snapshot_download", "kwargs": base})
        expected.append({"ok": want})  # each commit here is used by one entry: its snapshot is exactly it
        if e["include"] is not None:
            calls.append(
                {
                    "call": "snapshot_download",
                    "kwargs": {**base, "allow_patterns": e["include"], "ignore_patterns": e["exclude"]},
                }
            )
            expected.append({"ok": want})
        for path, digest in want.items():
            calls.append({"call": "hf_hub_download", "kwargs": {**base, "filename": path}})
            expected.append({"ok": digest})
    # A file the filter left out is (correctly) not found offline.
    calls.append(
        {
            "call": "hf_hub_download",
            "kwargs": {
                "repo_id": "org/model",
                "revision": "main",
                "filename": "README.md",
                "cache_dir": cache,
            },
        }
    )
    expected.append("not-found")
    calls.append({"call": "scan_cache_dir", "kwargs": {"cache_dir": cache}})
    expected.append("scan")

    results = run_consumer(prefetch, calls, mode=mode, hub=hub if mode == "plain" else None)

    for call, want, got in zip(calls, expected, results, strict=True):
        if want == "not-found":
            assert got.get("error") == "LocalEntryNotFoundError", got
        elif want == "scan":
            scan = got["ok"]
            assert scan["warnings"] == []
            by_repo = {(t, rid): revs for t, rid, revs in scan["repos"]}
            assert set(by_repo) == {("model", "org/model"), ("dataset", "org/data"), ("model", "org/pinned")}
            model_revs = {c: refs for c, refs, _ in by_repo[("model", "org/model")]}
            assert model_revs == {r["main"]: ["main"], r["v1"]: ["v1"]}
            assert by_repo[("dataset", "org/data")] == [[r["data_main"], ["main"], 4]]
            assert by_repo[("model", "org/pinned")] == [[r["pinned_commit"], [], 2]]
        else:
            assert got == want, call
    main_commit = next(e["commit"] for e in entries if e["revision"] == "main" and e["repo"] == "org/model")
    assert not (prefetch.cache_dir / "models--org--model" / "trees" / f"{main_commit}.json").exists()


def test_trees_json_from_huggingface_hub_makes_whole_repo_loads_strict(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    """(b) huggingface_hub wrote the full listing first; prefetch then syncs a filtered subset of that commit.

    Offline, `snapshot_download()` without patterns must then raise IncompleteSnapshotError (the listing
    proves files are missing: correct), while the same patterns as the manifest's filter succeed.
    """
    repo = hub.create_repo("org/tj")
    commit = repo.commit(
        {"config.json": b"{}", "model.safetensors": os.urandom(16 * 1024), "extra.bin": os.urandom(8 * 1024)}
    )
    cache = str(prefetch.cache_dir)
    online = run_consumer(
        prefetch,
        [
            {
                "call": "online_snapshot_download",
                "kwargs": {"repo_id": "org/tj", "allow_patterns": ["config.json"], "cache_dir": cache},
            }
        ],
        mode="plain",
        online=True,
    )
    assert list(online[0]["ok"]) == ["config.json"], online
    trees = prefetch.cache_dir / "models--org--tj" / "trees" / f"{commit}.json"
    assert sorted(json.loads(trees.read_text())["files"]) == ["config.json", "extra.bin", "model.safetensors"]

    include = ["*.json", "*.safetensors"]
    lock_path = sync(prefetch, [{"repo": "org/tj", "include": include}])
    assert prefetch("verify", str(lock_path)).code == 0
    base = {"repo_id": "org/tj", "revision": "main", "cache_dir": cache}
    results = run_consumer(
        prefetch,
        [
            {"call": "snapshot_download", "kwargs": base},
            {"call": "snapshot_download", "kwargs": {**base, "allow_patterns": include}},
            {"call": "hf_hub_download", "kwargs": {**base, "filename": "model.safetensors"}},
        ],
        mode="plain",
        hub=hub,
    )

    assert results[0]["error"] == "IncompleteSnapshotError", results[0]
    assert "extra.bin" in results[0]["message"]
    files = repo.files(commit)
    assert results[1] == {"ok": {p: sha256(files[p]) for p in ("config.json", "model.safetensors")}}
    assert results[2] == {"ok": sha256(files["model.safetensors"])}
