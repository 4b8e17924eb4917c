"""What huggingface_hub's own `hf cache prune` does to a cache prefetch filled (docs/offline.md, "`hf
cache prune` deletes entries pinned to a commit"), checked with the real CLI.

`hf cache prune` deletes every revision no `refs/` file names. prefetch writes no ref for an entry
pinned to a commit, as huggingface_hub writes none for `snapshot_download(revision=COMMIT)`: so the
real CLI deletes such an entry, keeps one pinned to a tag, and `prefetch prune --lock` keeps both.
The docs say so and what to do; these tests keep that true for the huggingface_hub installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, PrefetchRunner


def hf(prefetch: PrefetchRunner, *args: str) -> subprocess.CompletedProcess[str]:
    """huggingface_hub's `hf` CLI (the module its console script runs), in the test's environment."""
    proc = subprocess.run(
        [sys.executable, "-m", "huggingface_hub.cli.hf", *args],
        cwd=prefetch.tmp,
        env=prefetch.env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def snapshots(cache: Path, repo_id: str) -> set[str]:
    folder = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def two_pinned_repos(hub: Any) -> tuple[str, str]:
    """acme/by-commit and acme/by-tag, each with one commit (tagged v1 in the second); the commits."""
    by_commit = hub.create_repo("acme/by-commit").commit({"config.json": b'{"a": 1}'})
    repo = hub.create_repo("acme/by-tag")
    by_tag = repo.commit({"config.json": b'{"b": 2}'})
    repo.create_tag("v1", at=by_tag)
    return by_commit, by_tag


def test_hf_cache_prune_deletes_a_commit_pinned_entry_and_keeps_a_tag_pinned_one(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    by_commit, by_tag = two_pinned_repos(hub)
    prefetch.manifest(
        [{"repo": "acme/by-commit", "revision": by_commit}, {"repo": "acme/by-tag", "revision": "v1"}]
    )
    assert prefetch("sync", "models.yaml").code == 0
    cache = prefetch.cache_dir
    assert not (cache / "models--acme--by-commit" / "refs").exists(), "no ref for a commit"

    # huggingface_hub itself writes no ref for a commit either: the same layout, the same fate
    hf(
        prefetch,
        "download",
        "acme/by-commit",
        "--revision",
        by_commit,
        "--cache-dir",
        str(prefetch.tmp / "hf"),
    )
    assert snapshots(prefetch.tmp / "hf", "acme/by-commit") == {by_commit}
    assert not (prefetch.tmp / "hf" / "models--acme--by-commit" / "refs").exists()

    assert prefetch("prune", "--lock", "models.lock").code == 0
    assert snapshots(cache, "acme/by-commit") == {by_commit} and snapshots(cache, "acme/by-tag") == {by_tag}

    hf(prefetch, "cache", "prune", "--cache-dir", str(cache), "--yes")
    assert snapshots(cache, "acme/by-commit") == set(), "hf cache prune kept a revision no ref names"
    assert snapshots(cache, "acme/by-tag") == {by_tag}
    gone = prefetch("verify", "models.lock")
    assert gone.code == 7 and "acme/by-commit" in gone.output and "acme/by-tag" not in gone.output, gone
    assert prefetch("sync", "models.yaml", "--frozen").code == 0
    assert prefetch("verify", "models.lock").code == 0


def test_a_tag_pinned_entry_keeps_its_locked_commit_when_the_tag_moves(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    """The docs' advice: pin by tag where `hf cache prune` runs. The lock still holds the commit: after
    the tag moves on the Hub, `sync --frozen` fetches the locked commit and `refs/v1` names it."""
    _, by_tag = two_pinned_repos(hub)
    prefetch.manifest([{"repo": "acme/by-tag", "revision": "v1"}])
    assert prefetch("lock", "models.yaml").code == 0
    repo = hub.repo("acme/by-tag")
    repo.create_tag("v1", at=repo.commit({"config.json": b'{"b": 3}'}))
    assert prefetch("sync", "models.yaml", "--frozen").code == 0
    ref = prefetch.cache_dir / "models--acme--by-tag" / "refs" / "v1"
    assert ref.read_text() == by_tag
    hf(prefetch, "cache", "prune", "--cache-dir", str(prefetch.cache_dir), "--yes")
    assert snapshots(prefetch.cache_dir, "acme/by-tag") == {by_tag}


def test_offline_md_warns_about_hf_cache_prune() -> None:
    doc = (ROOT / "docs" / "offline.md").read_text(encoding="utf-8")
    section = doc[doc.index("### `hf cache prune` deletes entries pinned to a commit") :]
    section = section[: section.index("\n## ")]
    for needle in ("prefetch prune --lock", "revision: v1.0", "verify --repair", Path(__file__).name):
        assert needle in section, f"docs/offline.md's hf cache prune section should say {needle!r}"
