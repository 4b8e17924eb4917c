"""`prefetch prune` through the real CLI: only what no given lockfile needs goes, only in the repos they name.

The cache is always written by a real `prefetch sync` against the test Hub, then upgraded and littered by hand.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from prefetch.progress import human_bytes
from tests.conftest import PrefetchRunner
from tests.offline_helpers import LFS, blob_of, entries, make_model, tree_state
from tests.test_interop import sync


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
    # The partial of a complete blob is stale (another run finished it): it goes, needed or not.
    (folder / "blobs" / (new_lfs.name + ".prefetch-partial")).write_bytes(b"y" * 10)
    stray = folder / "snapshots" / c2 / "stray.bin"
    stray.symlink_to(f"../../blobs/{old_lfs.name}")  # a link no lock lists, in a kept snapshot
    trees = folder / "trees"  # huggingface_hub's listings: one goes with its snapshot
    trees.mkdir()
    (trees / f"{r['c1']}.json").write_text("[]")
    (trees / f"{c2}.json").write_text("[]")

    before = tree_state(prefetch.cache_dir)
    dry = prefetch("prune", "--lock", str(lock), "--dry-run")
    assert dry.code == 0, dry
    assert tree_state(prefetch.cache_dir) == before
    assert dry.stdout.startswith("would remove 1 snapshot(s), 1 stray link(s), 1 ref(s), 1 blob(s)")
    assert "left alone, no lockfile names them: models--org--other (" in dry.stdout

    both = prefetch("--json", "prune", "--lock", str(lock), "--lock", str(prefetch.tmp / "old.lock"))
    assert both.code == 0, both
    report = json.loads(both.stdout)
    assert (report["removed_snapshots"], report["removed_blobs"], report["removed_links"]) == ([], 0, 1)
    assert old_lfs.exists() and (folder / "snapshots" / r["c1"]).is_dir() and not stray.is_symlink()
    assert report["removed_partials"] == 1 and not Path(str(new_lfs) + ".prefetch-partial").exists()
    (folder / "blobs" / (old_lfs.name + ".prefetch-partial")).write_bytes(b"x" * 100)  # not needed: goes

    pruned = prefetch("--json", "prune", "--lock", str(lock))
    assert pruned.code == 0, pruned
    report = json.loads(pruned.stdout)
    assert report["removed_snapshots"] == [f"models--org--model@{r['c1']}"]
    assert report["removed_refs"] == [f"models--org--model/refs/v1 ({r['c1'][:12]})"]
    assert (report["removed_blobs"], report["removed_partials"]) == (1, 1)
    assert report["freed_bytes"] == 48 * 1024 + 100
    assert report["busy"] == [] and report["dry_run"] is False
    assert (report["repos"], report["untouched"]) == (["models--org--model"], ["models--org--other"])
    assert report["cache_dir"] == str(prefetch.cache_dir)
    assert not old_lfs.exists() and not (folder / "snapshots" / r["c1"]).exists()
    assert not (trees / f"{r['c1']}.json").exists() and (trees / f"{c2}.json").exists()
    assert shared.exists() and new_lfs.exists()
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


def test_prune_follows_no_link_below_the_cache_root(prefetch: PrefetchRunner, hub: Any) -> None:
    """Links planted in a repo's folders: a ref to a file outside the cache (its bytes must not be
    printed), a ref to /dev/zero (it must not be read whole), a ref that is a FIFO, a folder of refs and a
    kept snapshot's folder linked to folders outside (nothing there is listed or deleted). Each link is
    left in place and named; what prune can judge is pruned as before."""
    make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}])
    folder = prefetch.cache_dir / "models--org--model"
    secret = prefetch.tmp / "secret.txt"
    secret.write_text("ssh-rsa AAAA the victim's key\n")
    outside = prefetch.tmp / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "keep-me").write_text("not the cache's")
    refs = folder / "refs"
    (refs / "to-secret").symlink_to(secret)
    (refs / "to-zero").symlink_to("/dev/zero")
    os.mkfifo(refs / "fifo")
    (refs / "linked-folder").symlink_to(outside)
    commit = entries(lock)[0]["commit"]
    (folder / "snapshots" / commit / "nested" / "linked").symlink_to(outside / "sub")
    before = tree_state(outside)

    dry = prefetch("prune", "--lock", str(lock), "--dry-run", timeout=30)
    assert dry.code == 0, dry
    assert "ssh-rsa" not in dry.output and "AAAA" not in dry.output
    for name in ("to-secret", "to-zero", "fifo"):
        assert f"models--org--model/refs/{name}" in dry.stdout, dry
    assert (
        f"left alone: models--org--model/refs/to-secret: a symlink to '{secret}' (not followed)" in dry.stdout
    )
    assert "left alone: models--org--model/refs/fifo: not a regular file" in dry.stdout, dry
    done = prefetch("--json", "prune", "--lock", str(lock), timeout=30)
    assert done.code == 0, done
    report = json.loads(done.stdout)
    assert report["removed_refs"] == [] and report["removed_snapshots"] == []
    assert len(report["skipped"]) == 4, report["skipped"]
    assert tree_state(outside) == before
    assert secret.read_text().startswith("ssh-rsa") and (refs / "to-secret").is_symlink()
    assert prefetch("verify", str(lock)).code == 0


def test_prune_after_remove_says_how_to_free_the_removed_repo_and_unlocked_does(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    """`prefetch remove` takes an entry out of the manifest and the lock; its repo stays in the cache, and
    a plain `prune` (models.lock by default, as every command) must not remove what no lock names (a
    shared cache holds other projects' repos): it says what it left, with the size, and how to remove it.
    `--unlocked` removes it whole; the repos the lock names stay intact."""
    from huggingface_hub import scan_cache_dir

    make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}, {"repo": "org/data", "type": "dataset"}])
    data = prefetch.cache_dir / "datasets--org--data"
    size = sum(p.stat().st_size for p in (data / "blobs").iterdir())
    assert prefetch("remove", "org/data", "--type", "dataset").code == 0

    plain = prefetch("prune")
    assert plain.code == 0, plain
    assert (
        f"left alone, no lockfile names them: datasets--org--data ({human_bytes(size)}). Give their lockfiles "
        "with --lock to prune within them, or remove them whole with `prefetch prune --unlocked`"
    ) in " ".join(plain.stdout.split()), plain
    assert data.is_dir()
    before = tree_state(prefetch.cache_dir)
    dry = prefetch("prune", "--unlocked", "--dry-run")
    assert dry.code == 0 and "repo datasets--org--data (whole: no lockfile names it)" in dry.stdout, dry
    assert tree_state(prefetch.cache_dir) == before
    done = prefetch("--json", "prune", "--unlocked")
    assert done.code == 0, done
    report = json.loads(done.stdout)
    assert report["removed_repos"] == ["datasets--org--data"] and report["untouched"] == []
    assert report["freed_bytes"] == size
    assert not data.exists()
    assert prefetch("verify", str(lock)).code == 0
    info = scan_cache_dir(prefetch.cache_dir)
    assert info.warnings == [] and [r.repo_id for r in info.repos] == ["org/model"]
