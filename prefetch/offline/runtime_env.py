"""`prefetch env`: the shell lines that point a runtime (huggingface_hub, transformers, vLLM...) at the
verified cache, offline."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from prefetch.lockfile import load_lock
from prefetch.offline.shared import cache_root


def env_exports(lock_path: str | Path, *, cache_dir: str | Path | None = None) -> list[str]:
    """`export` lines for HF_HUB_CACHE (the lock's cache, shell-quoted), HF_HUB_OFFLINE and no telemetry."""
    lock_path = Path(lock_path)
    root = cache_root(load_lock(lock_path), lock_path, cache_dir)
    return [
        f"export HF_HUB_CACHE={shlex.quote(os.path.abspath(root))}",
        "export HF_HUB_OFFLINE=1",
        "export HF_HUB_DISABLE_TELEMETRY=1",
    ]
