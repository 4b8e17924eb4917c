"""Which files a documented command leaves in a checkout that `git status` would then show.

The docs' commands run from the root of a prefetch checkout (the README's demo writes
`manifests/demo.lock`, docs/docker.md's host-cache recipe `docs/examples/app/hf-cache/`...). What they
write there must be covered by the checkout's .gitignore, or a new user's first `git status` (and
`git add .`) picks up lockfiles and model caches. git itself decides: the written paths are recreated,
empty, in a scratch repository that holds only the checkout's .gitignore, and `git status` lists the
ones it does not ignore.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import ROOT


def files_under(folder: Path) -> set[Path]:
    """Every file and symlink below `folder` (symlinks not followed), relative to it."""
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_symlink() or p.is_file()}


def not_ignored(paths: Iterable[Path], scratch: Path) -> list[str]:
    """The checkout-relative `paths` that ROOT/.gitignore does not ignore, as `git status` lists them
    (a new folder is listed once, as `folder/`)."""
    scratch.mkdir(parents=True)
    (scratch / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    for path in paths:
        (scratch / path).parent.mkdir(parents=True, exist_ok=True)
        (scratch / path).touch()
    git = ["git", "-c", "core.excludesFile=", "-C", str(scratch)]
    subprocess.run([*git, "init", "-q"], check=True, timeout=60)
    status = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=normal"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    listed = [line[3:] for line in status.splitlines() if line.startswith("?? ")]
    return [name for name in listed if name != ".gitignore"]
