"""Copy exactly what a lockfile pins from one HF cache to another.

    python copy-locked.py models.lock SRC_CACHE DST_CACHE

Used by the application Dockerfile beside it: `prefetch sync` fills a BuildKit cache mount that keeps
every model this build ever fetched (so rebuilds download nothing twice), and this copies into the
image layer only the locked snapshots: for each entry of the lock, `snapshots/<commit>/` (relative
symlinks, as the HF cache keeps them), the blobs those symlinks point to, `refs/<revision>` (so
offline loaders resolve a branch or tag name) and huggingface_hub's `trees/<commit>.json` listing
when present. Run `prefetch verify LOCK --cache-dir DST_CACHE` afterwards: it proves the copy is whole.
Needs PyYAML (a dependency of prefetch and of huggingface_hub).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def repo_folder(repo: str, repo_type: str) -> str:
    """`models--org--name`, as huggingface_hub names a repo's folder in the cache."""
    return f"{repo_type}s--" + repo.replace("/", "--")


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copy2(src, dst)


def copy_snapshot(src_repo: Path, dst_repo: Path, commit: str) -> int:
    """Copy `snapshots/<commit>` and its blobs; return the number of files."""
    snapshot = src_repo / "snapshots" / commit
    if not snapshot.is_dir():
        raise SystemExit(f"copy-locked: {snapshot} is missing: did `prefetch sync` succeed?")
    count = 0
    for root, _dirs, files in os.walk(snapshot):
        for name in files:
            link = Path(root) / name
            dst = dst_repo / link.relative_to(src_repo)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                target = os.readlink(link)
                blob = Path(os.path.normpath(link.parent / target))
                if src_repo / "blobs" not in blob.parents:
                    raise SystemExit(f"copy-locked: {link} points outside the cache: {target}")
                copy_file(blob, dst_repo / "blobs" / blob.name)
                if not dst.is_symlink():
                    dst.symlink_to(target)
            else:  # a cache written where symlinks are unavailable holds plain files
                copy_file(link, dst)
            count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    lock_path, src, dst = Path(argv[1]), Path(argv[2]), Path(argv[3])
    lock: dict[str, Any] = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    entries: list[dict[str, Any]] = lock.get("entries") or lock.get("repos") or []
    for entry in entries:
        repo, commit = entry["repo"], entry["commit"]
        revision = str(entry.get("revision") or commit)
        folder = repo_folder(repo, entry.get("type") or "model")
        src_repo, dst_repo = src / folder, dst / folder
        count = copy_snapshot(src_repo, dst_repo, commit)
        if not COMMIT.match(revision):
            ref = dst_repo / "refs" / revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit, encoding="utf-8")  # no trailing newline, as huggingface_hub writes it
        tree = src_repo / "trees" / f"{commit}.json"
        if tree.is_file():
            copy_file(tree, dst_repo / "trees" / tree.name)
        print(f"copy-locked: {repo}@{revision} ({commit[:12]}): {count} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
