"""A stand-in for your application: open every model of models.yaml from the baked-in HF cache.

With HF_HUB_OFFLINE=1 nothing here touches the network; a real application would call
`AutoModel.from_pretrained("org/name")` (transformers) or `LLM("org/name")` (vLLM) the same way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from huggingface_hub import snapshot_download


def main() -> int:
    manifest = yaml.safe_load(Path(__file__).with_name("models.yaml").read_text(encoding="utf-8"))
    print(f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')} HF_HUB_CACHE={os.environ.get('HF_HUB_CACHE')}")
    for entry in manifest["repos"]:
        if isinstance(entry, str):
            entry = {"repo": entry}
        path = snapshot_download(
            entry["repo"],
            repo_type=entry.get("type", "model"),
            revision=entry.get("revision", "main"),
            allow_patterns=entry.get("include"),
            ignore_patterns=entry.get("exclude"),
        )
        files = sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())
        print(f"{entry['repo']}: {len(files)} files at {path}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
