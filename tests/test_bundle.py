"""`prefetch bundle` and `prefetch unbundle` through the real CLI: a bundle carries exactly the locked part
of the cache into an empty or existing cache that huggingface_hub then loads offline, and unbundle refuses
hostile archives without touching the cache."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from prefetch.offline import bundle as bundle_mod
from tests.conftest import PrefetchRunner
from tests.offline_helpers import LFS, blob_of, entries, flip_byte, make_model, tree_state
from tests.test_interop import OFFLINE_MODES, run_consumer, sha256, sync


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


@pytest.mark.soak
@pytest.mark.parametrize("mode", OFFLINE_MODES)
def test_bundle_unbundles_into_empty_cache_and_loads_offline(
    prefetch: PrefetchRunner, hub: Any, mode: str
) -> None:
    _, lock, archive = bundle_setup(prefetch, hub)
    again = bundle_mod.bundle(lock, prefetch.tmp / "again.tar", cache_dir=prefetch.cache_dir)
    assert archive.read_bytes() == again.output.read_bytes()  # same cache, same bytes
    assert again.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["models.tar"]  # no temp file left
    as_json = prefetch("--json", "bundle", str(lock), "-o", str(prefetch.tmp / "as-json.tar"))
    assert as_json.code == 0, as_json
    assert json.loads(as_json.stdout) == {
        "output": str(prefetch.tmp / "as-json.tar"),
        "cache_dir": str(prefetch.cache_dir),
        "entries": 3,
        "files": again.files,
        "blobs": 6,
        "bytes": again.bytes,
        "archive_bytes": archive.stat().st_size,
        "sha256": again.sha256,
    }
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


@pytest.mark.soak
def test_unbundle_merges_into_existing_cache(prefetch: PrefetchRunner, hub: Any) -> None:
    _, lock, archive = bundle_setup(prefetch, hub)
    target = prefetch.tmp / "airgap" / "hub"
    assert prefetch("unbundle", str(archive), "--cache-dir", str(target)).code == 0
    again = prefetch("--json", "unbundle", str(archive), "--cache-dir", str(target))
    assert again.code == 0, again
    assert (json.loads(again.stdout)["blobs_added"], json.loads(again.stdout)["blobs_present"]) == (0, 6)
    assert json.loads(again.stdout) == {
        "archive": str(archive),
        "cache_dir": str(target),
        "entries": 3,
        "files": sum(len(e["files"]) for e in entries(lock)),
        "blobs_added": 0,
        "blobs_present": 6,
        "bytes_added": 0,
        "links": 6,  # main and v1 are one commit: 4 links, and 2 in the dataset
        "refs": 3,
    }

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


@pytest.mark.soak
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


@pytest.mark.parametrize("named", ["absolute", "../../x"])
def test_unbundle_ignores_the_cache_dir_an_archive_names(
    prefetch: PrefetchRunner, hub: Any, named: str
) -> None:
    """The archive's bundled lock saying `cache_dir: /somewhere` or `../../x` must not choose where unbundle
    writes: the HF environment does (here HF_HUB_CACHE), with a warning naming what was ignored."""
    _, _, archive = bundle_setup(prefetch, hub)
    chosen = str(prefetch.tmp / "chosen-by-the-archive") if named == "absolute" else named

    def with_cache_dir(m: tarfile.TarInfo, data: bytes | None) -> Member:
        if m.name != "prefetch.lock" or data is None:
            return m, data
        text = data.decode().replace("\nentries:", f"\ncache_dir: {chosen}\nentries:", 1)
        assert f"cache_dir: {chosen}" in text
        m = copy.copy(m)
        m.size = len(text.encode())
        return m, text.encode()

    deep = prefetch.tmp / "a" / "b"
    deep.mkdir(parents=True)
    hostile = _write(deep / "hostile.tar", [with_cache_dir(m, data) for m, data in _members(archive)])
    target = prefetch.tmp / "env-cache"
    result = prefetch("unbundle", str(hostile), env={"HF_HUB_CACHE": str(target)})
    assert result.code == 0, result
    assert f"ignoring the bundled lock's cache_dir {chosen!r}" in result.stderr
    assert not (prefetch.tmp / "chosen-by-the-archive").exists() and not (prefetch.tmp / "x").exists()
    assert result.stdout and str(target) in result.stdout
    assert any(target.glob("models--org--model/blobs/*"))
