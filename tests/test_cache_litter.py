"""What killed runs leave in the cache is cleaned up by the next run (or `prune`), and only that.

A `kill -9` while the resume state is being written leaves its temp file,
`blobs/.{etag}.prefetch-partial.json.{pid}.{thread}.tmp`. The next `sync` and `prune` remove such files:
by that exact pattern, without following a link, and only under the blob's lock (taken without
waiting), since a run holding it may be writing one at that moment.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from tests.conftest import PrefetchRunner

BIG = os.urandom(2 * 1024 * 1024 + 3)
SMALL = b"small file\n"


def littered(prefetch: PrefetchRunner, hub: Any) -> tuple[Path, Path, list[Path]]:
    """org/model synced; then the litter of a killed run beside its blob, and names that are not litter.

    Returns (manifest, blobs folder, the litter).
    """
    hub.create_repo("org/model").commit({"model.safetensors": BIG, "config.json": SMALL})
    manifest = prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("sync", str(manifest)).code == 0
    blobs = prefetch.cache_dir / "models--org--model" / "blobs"
    etag = hashlib.sha256(BIG).hexdigest()
    missing = "e" * 64  # the blob of a download that was killed: no blob yet
    litter = [
        blobs / f".{etag}.prefetch-partial.json.4242.139872.tmp",
        blobs / f".{missing}.prefetch-partial.json.77.1.tmp",
    ]
    for path in litter:
        path.write_bytes(b'{"size": 12, "do')  # cut short by the kill
    victim = prefetch.tmp / "precious.txt"
    victim.write_text("keep me")
    planted = blobs / f".{etag}.prefetch-partial.json.99.98.tmp"
    planted.symlink_to(victim)  # litter by its name: the link goes, never what it points at
    litter.append(planted)
    for name in (f".{etag}.prefetch-partial.json.tmp", f"{etag}.notes.tmp", ".hidden"):
        (blobs / name).write_text("not ours to judge")
    return manifest, blobs, litter


def assert_only_litter_removed(prefetch: PrefetchRunner, blobs: Path, removed: list[Path]) -> None:
    for path in removed:
        assert not path.exists() and not path.is_symlink(), path
    assert (prefetch.tmp / "precious.txt").read_text() == "keep me"
    assert sum(1 for p in blobs.iterdir() if p.read_bytes() == b"not ours to judge") == 3


def test_the_next_sync_removes_state_temp_files_of_killed_runs(prefetch: PrefetchRunner, hub: Any) -> None:
    manifest, blobs, litter = littered(prefetch, hub)
    busy = litter[1]
    lock_file = prefetch.cache_dir / ".locks" / "models--org--model" / f"{'e' * 64}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_file)):  # huggingface_hub downloading that blob: its temp file may be live
        result = prefetch("sync", str(manifest))
    assert result.code == 0, result
    assert_only_litter_removed(prefetch, blobs, [litter[0], litter[2]])
    assert busy.exists()

    assert prefetch("sync", str(manifest)).code == 0  # the lock is free now
    assert_only_litter_removed(prefetch, blobs, litter)
    assert prefetch("verify", str(manifest.with_suffix(".lock"))).code == 0


def test_prune_removes_state_temp_files_and_stale_partials_but_keeps_resumable_ones(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    manifest, blobs, litter = littered(prefetch, hub)
    small = hashlib.sha1(b"blob %d\0" % len(SMALL) + SMALL).hexdigest()
    stale = blobs / f"{hashlib.sha256(BIG).hexdigest()}.prefetch-partial"  # its blob is complete
    stale.write_bytes(b"x" * 10)
    (blobs / small).unlink()  # a needed blob still missing: its partial file resumes, so it stays
    resumable = blobs / f"{small}.prefetch-partial"
    resumable.write_bytes(b"y" * 5)

    result = prefetch("--json", "prune", "--lock", str(manifest.with_suffix(".lock")))
    assert result.code == 0, result
    assert_only_litter_removed(prefetch, blobs, [*litter, stale])
    assert resumable.read_bytes() == b"y" * 5
