"""Copy exactly what a lockfile pins from one HF cache to another.

    python copy-locked.py models.lock SRC_CACHE DST_CACHE

Used by the application Dockerfile beside it: `prefetch sync` fills a BuildKit cache mount that keeps
every model this build ever fetched (so rebuilds download nothing twice), and this copies into the
image layer only what the lock pins: for each entry, its files under `snapshots/<commit>/` (relative
symlinks, as the HF cache keeps them), the blobs those symlinks point to, and `refs/<revision>` (so
offline loaders resolve a branch or tag name). Nothing else: no other revision or repo the cache
mount holds, no lock files, no partial downloads. A blob several repos share (a fine-tune's
tokenizer, the same weights under two names) is copied once and hard-linked into the other repos'
folders, as prefetch links it in a cache: an image holds its bytes once. Run `prefetch verify LOCK
--cache-dir DST_CACHE` afterwards: it proves the copy whole. Runs where prefetch is installed (it
reads the lockfile with prefetch's own strict loader).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from prefetch.lockfile import load_lock

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def repo_folder(repo: str, repo_type: str) -> str:
    """`models--org--name`, as huggingface_hub names a repo's folder in the cache."""
    return f"{repo_type}s--" + repo.replace("/", "--")


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copy2(src, dst)


class BlobCopier:
    """Copies each blob once. A blob's name is its content's hash (sha256, or the git blob sha1), so a
    name already copied for another repo is the same bytes: it becomes a hard link to that copy (a
    copy where the destination refuses links). `prefetch verify` then checks every repo's blobs
    against its own lock entry, so a link can never stand in for other bytes unnoticed."""

    def __init__(self) -> None:
        self.copied: dict[str, Path] = {}

    def copy(self, src: Path, dst: Path) -> None:
        if dst.exists():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        first = self.copied.get(src.name)
        if first is not None:
            try:
                os.link(first, dst)
                return
            except OSError:  # another filesystem, or none that links: a copy
                pass
        shutil.copy2(src, dst)
        self.copied.setdefault(src.name, dst)


def copy_snapshot(src_repo: Path, dst_repo: Path, commit: str, paths: list[str], blobs: BlobCopier) -> None:
    """Copy the locked files of `snapshots/<commit>` (symlinks kept) and the blobs they point to."""
    for path in paths:
        link = src_repo / "snapshots" / commit / path
        dst = dst_repo / "snapshots" / commit / path
        if not (link.is_symlink() or link.is_file()):
            raise SystemExit(f"copy-locked: {link} is missing: did `prefetch sync` succeed?")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            target = os.readlink(link)
            blob = Path(os.path.normpath(link.parent / target))
            if blob.parent != src_repo / "blobs":
                raise SystemExit(f"copy-locked: {link} points outside the cache: {target}")
            blobs.copy(blob, dst_repo / "blobs" / blob.name)
            if not dst.is_symlink():
                dst.symlink_to(target)
        else:  # a cache written where symlinks are unavailable holds plain files
            copy_file(link, dst)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    lock_path, src, dst = Path(argv[1]), Path(argv[2]), Path(argv[3])
    blobs = BlobCopier()
    for entry in load_lock(lock_path).entries:
        repo, commit, revision = entry.repo, entry.commit, entry.revision
        folder = repo_folder(repo, entry.type)
        src_repo, dst_repo = src / folder, dst / folder
        paths = [f.path for f in entry.files]
        copy_snapshot(src_repo, dst_repo, commit, paths, blobs)
        if not COMMIT.match(revision):
            ref = dst_repo / "refs" / revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit, encoding="utf-8")  # no trailing newline, as huggingface_hub writes it
        print(f"copy-locked: {repo}@{revision} ({commit[:12]}): {len(paths)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
