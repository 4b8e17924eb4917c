"""The offline lockfile commands through the real CLI: verify, env, sbom, prune, bundle and unbundle.

The cache is always written by a real `prefetch sync` against the test Hub, then damaged, pruned, bundled
or moved by hand, the way it happens in the field.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefetch import offline
from tests.conftest import PrefetchRunner
from tests.test_interop import OFFLINE_MODES, run_consumer, sha256, sync

LFS = "model.safetensors"


def make_model(hub: Any) -> dict[str, Any]:
    """org/model with an LFS file, nested paths and a tag; org/data, a dataset."""
    model = hub.create_repo("org/model")
    c1 = model.commit(
        {
            "config.json": b'{"model_type": "tiny"}\n',
            LFS: os.urandom(48 * 1024),
            "nested/dir/tokenizer.json": b'{"version": "1.0"}',
            "README.md": b"# model\n",
        }
    )
    model.create_tag("v1", at=c1)
    data = hub.create_repo("org/data", repo_type="dataset")
    data.commit({"data/train.csv": b"id,text\n1,a\n", "README.md": b"# data\n"})
    return {"model": model, "c1": c1, "data": data}


def entries(lock_path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(lock_path.read_text())["entries"]


def blob_of(cache: Path, lock_path: Path, path: str, repo: str = "org/model") -> Path:
    e = next(e for e in entries(lock_path) if e["repo"] == repo)
    f = next(f for f in e["files"] if f["path"] == path)
    folder = ("models--" if e["type"] == "model" else "datasets--") + repo.replace("/", "--")
    return cache / folder / "blobs" / (f.get("sha256") or f["git_sha1"])


def flip_byte(path: Path, offset: int = 5) -> None:
    """Same size, one bit different: only a hash can tell."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def tree_state(root: Path) -> dict[str, str]:
    """Every path under `root` with its kind and content (link target, file hash): to prove nothing changed."""
    state: dict[str, str] = {}
    if not root.exists():
        return state
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            state[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            state[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    return state


# ------------------------------------------------------------------------------------------------ verify
def test_verify_passes_after_sync(prefetch: PrefetchRunner, hub: Any) -> None:
    make_model(hub)
    lock = sync(
        prefetch,
        [
            {"repo": "org/model"},
            {"repo": "org/model", "revision": "v1", "include": ["*.json"]},
            {"repo": "org/data", "type": "dataset"},
        ],
    )
    result = prefetch("verify", str(lock))
    assert result.code == 0, result
    assert result.stdout.startswith("ok: 8 files of 3 entries verified")
    as_json = prefetch("--json", "verify", str(lock), "--jobs", "2")
    assert as_json.code == 0, as_json
    report = json.loads(as_json.stdout)
    assert report["ok"] is True and report["files"] == 8 and report["problems"] == []
    assert report["cache_dir"] == str(prefetch.cache_dir)


def test_verify_finds_flipped_byte_and_fast_checks_only_sizes(prefetch: PrefetchRunner, hub: Any) -> None:
    make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}])
    flip_byte(blob_of(prefetch.cache_dir, lock, LFS))  # sha256-named
    flip_byte(blob_of(prefetch.cache_dir, lock, "nested/dir/tokenizer.json"))  # git-sha1-named

    full = prefetch("verify", str(lock))
    assert full.code == 7, full
    assert f"org/model@main: {LFS}" in full.stderr and "its sha256 is" in full.stderr
    assert "org/model@main: nested/dir/tokenizer.json" in full.stderr and "git blob sha1" in full.stderr
    assert "2 problem(s)" in full.stderr

    fast = prefetch("verify", "--fast", str(lock))
    assert fast.code == 0, fast
    assert "sizes checked (--fast)" in fast.stdout


def test_verify_finds_missing_link_missing_blob_and_ref_newline(prefetch: PrefetchRunner, hub: Any) -> None:
    r = make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}, {"repo": "org/model", "revision": "v1"}])
    folder = prefetch.cache_dir / "models--org--model"
    (folder / "snapshots" / r["c1"] / "nested" / "dir" / "tokenizer.json").unlink()
    (folder / "refs" / "v1").write_text(r["c1"] + "\n")
    blob_of(prefetch.cache_dir, lock, "README.md").unlink()

    for args in (["verify", str(lock)], ["verify", "--fast", str(lock)]):
        result = prefetch(*args)
        assert result.code == 7, result
        err = result.stderr
        assert "missing snapshot link" in err and "nested/dir/tokenizer.json" in err
        assert "refs/v1 ends with a newline" in err
        assert "missing blob" in err and "org/model@main: README.md, org/model@v1: README.md" in err

    as_json = prefetch("--json", "verify", str(lock))
    assert as_json.code == 7
    assert json.loads(as_json.stdout)["exit_code"] == 7


def test_verify_hashes_each_shared_blob_once(prefetch: PrefetchRunner, hub: Any, monkeypatch: Any) -> None:
    make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}, {"repo": "org/model", "revision": "v1"}])  # same commit
    calls: list[Path] = []
    real = offline.hash_file

    def counting(path: Path, lfs: bool, size: int) -> tuple[int, str]:
        calls.append(path)
        return real(path, lfs, size)

    monkeypatch.setattr(offline, "hash_file", counting)
    report = offline.verify(lock, cache_dir=prefetch.cache_dir)
    assert (report.files, report.blobs) == (8, 4)
    assert len(calls) == len(set(calls)) == 4


# ------------------------------------------------------------------------------------------------ env
def test_env_prints_shell_exports(prefetch: PrefetchRunner, hub: Any) -> None:
    make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}])
    result = prefetch("env", str(lock))
    assert result.code == 0, result
    assert result.stdout.splitlines() == [
        f"export HF_HUB_CACHE={prefetch.cache_dir}",
        "export HF_HUB_OFFLINE=1",
        "export HF_HUB_DISABLE_TELEMETRY=1",
    ]
    odd = prefetch.tmp / "a cache; with $(odd) chars"
    quoted = prefetch("env", str(lock), "--cache-dir", str(odd))
    assert quoted.code == 0, quoted
    shell = subprocess.run(
        ["sh", "-c", quoted.stdout + 'printf "%s|%s" "$HF_HUB_CACHE" "$HF_HUB_OFFLINE"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == f"{odd}|1"
    assert shlex.split(quoted.stdout.splitlines()[0]) == ["export", f"HF_HUB_CACHE={odd}"]


# ------------------------------------------------------------------------------------------------ sbom
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
    assert data["externalReferences"] == [{"type": "vcs", "url": "https://huggingface.co/datasets/org/data"}]

    bad = json.loads(first.stdout)
    bad["components"][0]["type"] = "model"
    assert validator.validate_str(json.dumps(bad)) is not None  # the validator does reject

    other = prefetch.tmp / "other.lock"  # another lock (one entry less): another serial number
    other.write_text(lock.read_text().split("- repo: org/data")[0])
    assert offline.sbom(other)["serialNumber"] != bom["serialNumber"]
    assert offline.sbom(lock) == bom


# ------------------------------------------------------------------------------------------------ prune
def test_prune_keeps_needed_blobs_and_removes_old_revision(prefetch: PrefetchRunner, hub: Any) -> None:
    from huggingface_hub import scan_cache_dir

    r = make_model(hub)
    other = hub.create_repo("org/other")
    other.commit({"config.json": b"{}"})
    other_lock = sync(prefetch, [{"repo": "org/other"}])
    shutil.move(other_lock, prefetch.tmp / "other.lock")
    lock = sync(prefetch, [{"repo": "org/model"}, {"repo": "org/model", "revision": "v1"}])
    shutil.copy(lock, prefetch.tmp / "old.lock")
    old_lfs = blob_of(prefetch.cache_dir, lock, LFS)
    c2 = r["model"].commit({LFS: os.urandom(40 * 1024)})
    lock = sync(prefetch, [{"repo": "org/model"}], "--upgrade")
    assert entries(lock)[0]["commit"] == c2
    folder = prefetch.cache_dir / "models--org--model"
    shared = blob_of(prefetch.cache_dir, lock, "config.json")
    new_lfs = blob_of(prefetch.cache_dir, lock, LFS)
    (folder / "blobs" / (old_lfs.name + ".prefetch-partial")).write_bytes(b"x" * 100)  # not needed: goes
    (folder / "blobs" / (new_lfs.name + ".prefetch-partial")).write_bytes(b"y" * 10)  # needed: resumable
    stray = folder / "snapshots" / c2 / "stray.bin"
    stray.symlink_to(f"../../blobs/{old_lfs.name}")  # a link no lock lists, in a kept snapshot

    before = tree_state(prefetch.cache_dir)
    dry = prefetch("prune", "--lock", str(lock), "--dry-run")
    assert dry.code == 0, dry
    assert tree_state(prefetch.cache_dir) == before
    assert dry.stdout.startswith("would remove 1 snapshot(s), 1 stray link(s), 1 ref(s), 1 blob(s)")
    assert "left alone (no lockfile names them): models--org--other" in dry.stdout

    both = prefetch("--json", "prune", "--lock", str(lock), "--lock", str(prefetch.tmp / "old.lock"))
    assert both.code == 0, both
    report = json.loads(both.stdout)
    assert (report["removed_snapshots"], report["removed_blobs"], report["removed_links"]) == ([], 0, 1)
    assert old_lfs.exists() and (folder / "snapshots" / r["c1"]).is_dir() and not stray.is_symlink()

    pruned = prefetch("--json", "prune", "--lock", str(lock))
    assert pruned.code == 0, pruned
    report = json.loads(pruned.stdout)
    assert report["removed_snapshots"] == [f"models--org--model@{r['c1']}"]
    assert report["removed_refs"] == [f"models--org--model/refs/v1 ({r['c1'][:12]})"]
    assert (report["removed_blobs"], report["removed_partials"]) == (1, 1)
    assert report["freed_bytes"] == 48 * 1024 + 100
    assert not old_lfs.exists() and not (folder / "snapshots" / r["c1"]).exists()
    assert shared.exists() and new_lfs.exists() and Path(str(new_lfs) + ".prefetch-partial").exists()
    assert (folder / "refs" / "main").read_text() == c2 and not (folder / "refs" / "v1").exists()
    assert (prefetch.cache_dir / "models--org--other" / "refs" / "main").exists()
    assert prefetch("verify", str(lock)).code == 0
    assert prefetch("verify", str(prefetch.tmp / "other.lock")).code == 0
    info = scan_cache_dir(prefetch.cache_dir)
    assert info.warnings == []
    assert {(repo.repo_id, len(repo.revisions)) for repo in info.repos} == {
        ("org/model", 1),
        ("org/other", 1),
    }


# ------------------------------------------------------------------------------------------------ bundle
def bundle_setup(prefetch: PrefetchRunner, hub: Any) -> tuple[dict[str, Any], Path, Path]:
    r = make_model(hub)
    manifest_repos = [
        {"repo": "org/model", "include": ["*.json", "*.safetensors"]},
        {"repo": "org/model", "revision": "v1"},
        {"repo": "org/data", "type": "dataset"},
    ]
    lock = sync(prefetch, manifest_repos)
    archive = prefetch.tmp / "out" / "models.tar"
    result = prefetch("bundle", str(lock), "-o", str(archive))
    assert result.code == 0, result
    return r, lock, archive


@pytest.mark.parametrize("mode", OFFLINE_MODES)
def test_bundle_unbundles_into_empty_cache_and_loads_offline(
    prefetch: PrefetchRunner, hub: Any, mode: str
) -> None:
    _, lock, archive = bundle_setup(prefetch, hub)
    again = offline.bundle(lock, prefetch.tmp / "again.tar", cache_dir=prefetch.cache_dir)
    assert archive.read_bytes() == again.output.read_bytes()  # same cache, same bytes
    assert again.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["models.tar"]  # no temp file left
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert members[0].name == "prefetch.lock"
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert {m.name.split("/")[0] for m in members[1:]} == {"models--org--model", "datasets--org--data"}
    assert {m.name.split("/")[1] for m in members[1:]} == {"blobs", "snapshots", "refs"}
    links = [m for m in members if m.issym()]
    assert all(m.linkname.startswith("../../") and "/blobs/" in m.linkname for m in links)

    target = prefetch.tmp / "airgap" / "hub"
    airgap_lock = prefetch.tmp / "airgap" / "models.lock"
    unbundled = prefetch(
        "unbundle",
        str(archive),
        "--cache-dir",
        str(target),
        "--lock-out",
        str(airgap_lock),
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert unbundled.code == 0, unbundled
    assert "6 blobs added" in unbundled.stdout
    assert airgap_lock.read_bytes() == lock.read_bytes()  # the bundled lock, byte for byte
    verified = prefetch("verify", str(airgap_lock), "--cache-dir", str(target))
    assert verified.code == 0, verified
    assert not (target / ".locks" / ".prefetch-staging").exists()

    calls = []
    for e in entries(lock):
        base = {
            "repo_id": e["repo"],
            "repo_type": e["type"],
            "revision": e["revision"],
            "cache_dir": str(target),
        }
        calls.append({"call": "snapshot_download", "kwargs": base})
    calls.append({"call": "scan_cache_dir", "kwargs": {"cache_dir": str(target)}})
    results = run_consumer(prefetch, calls, mode=mode, hub=hub if mode == "plain" else None)
    for e, got in zip(entries(lock), results, strict=False):
        content = hub.repo(e["repo"], e["type"]).files(e["commit"])
        if e["revision"] == "main" and e["repo"] == "org/model":
            continue  # same commit as v1 (full): the snapshot holds the union, checked through v1
        assert got == {"ok": {f["path"]: sha256(content[f["path"]]) for f in e["files"]}}, e
    assert results[-1]["ok"]["warnings"] == []


def test_unbundle_merges_into_existing_cache(prefetch: PrefetchRunner, hub: Any) -> None:
    _, lock, archive = bundle_setup(prefetch, hub)
    target = prefetch.tmp / "airgap" / "hub"
    assert prefetch("unbundle", str(archive), "--cache-dir", str(target)).code == 0
    again = prefetch("--json", "unbundle", str(archive), "--cache-dir", str(target))
    assert again.code == 0, again
    assert (json.loads(again.stdout)["blobs_added"], json.loads(again.stdout)["blobs_present"]) == (0, 6)

    flip_byte(blob_of(target, lock, LFS))  # damaged in the target: the bundle's verified copy replaces it
    assert prefetch("verify", str(lock), "--cache-dir", str(target)).code == 7
    healed = prefetch("--json", "unbundle", str(archive), "--cache-dir", str(target))
    assert healed.code == 0, healed
    assert json.loads(healed.stdout)["blobs_added"] == 1
    assert prefetch("verify", str(lock), "--cache-dir", str(target)).code == 0

    # The air-gap side then materializes the manifest from the cache alone.
    shutil.copy(prefetch.tmp / "models.yaml", target.parent / "models.yaml")
    shutil.copy(lock, target.parent / "models.lock")
    offline_sync = prefetch(
        "sync",
        str(target.parent / "models.yaml"),
        "--offline",
        "--frozen",
        "--cache-dir",
        str(target),
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert offline_sync.code == 0, offline_sync


def test_bundle_fails_on_corrupt_or_incomplete_cache(prefetch: PrefetchRunner, hub: Any) -> None:
    make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}])
    out = prefetch.tmp / "out"
    out.mkdir()
    flip_byte(blob_of(prefetch.cache_dir, lock, LFS))
    corrupt = prefetch("bundle", str(lock), "-o", str(out / "b.tar"))
    assert corrupt.code == 7, corrupt
    assert "corrupt blob" in corrupt.stderr and f"org/model@main: {LFS}" in corrupt.stderr
    blob_of(prefetch.cache_dir, lock, "README.md").unlink()
    missing = prefetch("bundle", str(lock), "-o", str(out / "b.tar"))
    assert missing.code == 7, missing
    assert "missing blob" in missing.stderr and "org/model@main: README.md" in missing.stderr
    assert list(out.iterdir()) == []  # no archive, no temp file


# ------------------------------------------------------------------------------------------------ hostile
Member = tuple[tarfile.TarInfo, "bytes | None"]


def _members(archive: Path) -> list[Member]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def _write(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def test_unbundle_rejects_hostile_archives_and_leaves_cache_untouched(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    r, lock, archive = bundle_setup(prefetch, hub)
    good = _members(archive)
    names = [m.name for m, _ in good]
    lfs_blob = next(n for n in names if n.endswith(blob_of(prefetch.cache_dir, lock, LFS).name))
    link = next(m.name for m, _ in good if m.issym())
    outside = prefetch.tmp / "pwned"

    def with_member(extra: Member) -> list[Member]:
        return [*good, extra]

    def replaced(name: str, change: Any) -> list[Member]:
        out = []
        for m, data in good:
            if m.name == name:
                m, data = change(copy.copy(m), data)
            out.append((m, data))
        return out

    def flipped(m: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        return m, data[:5] + bytes([data[5] ^ 1]) + data[6:]

    def escaping(m: tarfile.TarInfo, data: None) -> tuple[tarfile.TarInfo, None]:
        m.linkname = "../../../../../../../../etc/passwd"
        return m, None

    def hardlink(m: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, None]:
        m.type, m.linkname, m.size = tarfile.LNKTYPE, "/etc/passwd", 0
        return m, None

    def with_lock(m: tarfile.TarInfo, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        m.size = len(hostile_lock.encode())
        return m, hostile_lock.encode()

    hostile_lock = (
        (prefetch.tmp / "models.lock").read_text().replace("path: config.json", "path: ../../../pwned")
    )
    variants: dict[str, tuple[list[Member], int, str]] = {
        "dotdot": (with_member(_file("../pwned", b"x")), 5, "'..' segment"),
        "absolute": (with_member(_file(str(outside), b"x")), 5, "absolute path"),
        "escaping symlink": (replaced(link, escaping), 5, "expected exactly '../../"),
        "unlisted symlink": (
            with_member(
                _file(f"models--org--model/snapshots/{r['c1']}/evil", b"", tarfile.SYMTYPE, "/etc/passwd")
            ),
            5,
            "symlink to '/etc/passwd'",
        ),
        "corrupt blob": (replaced(lfs_blob, flipped), 5, "corrupt, its sha256 is"),
        "device file": (
            with_member(_file("models--org--model/blobs/dev", b"", tarfile.CHRTYPE)),
            5,
            "device file",
        ),
        "hard link": (replaced(lfs_blob, hardlink), 5, "hard link"),
        "unlisted file": (
            with_member(_file("models--org--model/blobs/" + "0" * 40, b"x")),
            5,
            "not named by",
        ),
        "duplicate": (
            with_member(next((copy.copy(m), d) for m, d in good if m.name == lfs_blob)),
            5,
            "twice",
        ),
        "hostile lock": (replaced("prefetch.lock", with_lock), 2, "unsafe file path"),
    }
    target = prefetch.tmp / "target"
    shutil.copytree(prefetch.cache_dir, target, symlinks=True)
    (target / "models--org--model" / "blobs" / lfs_blob.rsplit("/", 1)[1]).unlink()  # must come from the tar
    before = tree_state(target)
    for name, (members, code, reason) in variants.items():
        path = _write(prefetch.tmp / f"hostile-{name.replace(' ', '-')}.tar", members)
        result = prefetch("unbundle", str(path), "--cache-dir", str(target))
        assert result.code == code, (name, result)
        assert reason in result.stderr, (name, result)
        assert tree_state(target) == before, name
        assert not outside.exists() and not (prefetch.tmp / "pwned").exists(), name
    empty = prefetch.tmp / "empty-target"
    result = prefetch("unbundle", str(prefetch.tmp / "hostile-corrupt-blob.tar"), "--cache-dir", str(empty))
    assert result.code == 5 and not empty.exists(), result
