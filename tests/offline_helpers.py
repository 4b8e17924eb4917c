"""What the offline command tests share: a test Hub with a model (LFS file, nested paths, a tag) and a dataset,
and ways to find, damage and snapshot what `prefetch sync` wrote into the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

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
