"""`prefetch verify` through the real CLI: it passes on a synced cache and names every problem of a
damaged one. The cache is written by a real `prefetch sync` against the test Hub, then damaged by hand,
the way it happens in the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefetch.offline import shared as shared_mod
from prefetch.offline import verify as verify_mod
from tests.conftest import PrefetchRunner
from tests.hubemu.fixtures import over_both_profiles
from tests.offline_helpers import LFS, blob_of, flip_byte, make_model
from tests.test_interop import sync


@over_both_profiles
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
    assert report == {
        "ok": True,
        "lockfile": str(lock),
        "cache_dir": str(prefetch.cache_dir),
        "entries": 3,
        "files": 8,
        "blobs": report["blobs"],
        "bytes": report["bytes"],
        "fast": False,
        "problems": [],
    }


@over_both_profiles
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
    real = shared_mod.hash_file

    def counting(path: Path, lfs: bool, size: int) -> tuple[int, str]:
        calls.append(path)
        return real(path, lfs, size)

    monkeypatch.setattr(shared_mod, "hash_file", counting)
    report = verify_mod.verify(lock, cache_dir=prefetch.cache_dir)
    assert (report.files, report.blobs) == (8, 4)
    assert len(calls) == len(set(calls)) == 4
