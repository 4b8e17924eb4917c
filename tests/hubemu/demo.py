"""Deterministic demo content for `python -m tests.hubemu` (and for tests that want a ready-made Hub).

Why deterministic: content comes from seeded PRNGs and commits use fixed dates, so file hashes *and* commit
shas are identical across runs and machines, which makes demo output and lockfiles comparable.
"""

from __future__ import annotations

import json
import random
import struct

from .hub import HubEmulator

DEMO_USER = "demo"
DEMO_TOKEN = "hf_demo_token_not_secret"
_T0 = 1_700_000_000.0  # fixed commit dates => stable commit shas


def seeded_bytes(seed: int, size: int) -> bytes:
    """Reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def tiny_safetensors(seed: int, rows: int = 512, cols: int = 1024) -> bytes:
    """A valid safetensors file (one F32 tensor) with seeded content: rows*cols*4 bytes of data."""
    nbytes = rows * cols * 4
    header = json.dumps(
        {
            "weight": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, nbytes]},
            "__metadata__": {"format": "pt"},
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + seeded_bytes(seed, nbytes)


def populate_demo(hub: HubEmulator) -> None:
    """Create the demo repos, tag and user on a (started or not) HubEmulator."""
    hub.add_user(DEMO_USER, token=DEMO_TOKEN, role="read", fullname="Demo User")

    model = hub.create_repo("demo/tiny-model", owner="demo-org")
    config = {"architectures": ["TinyModel"], "hidden_size": 1024, "model_type": "tiny", "vocab_size": 512}
    vocab = {f"tok{i}": i for i in range(512)}
    tokenizer = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "tok0"}}
    v1 = model.commit(
        {
            "config.json": json.dumps(config, indent=2, sort_keys=True).encode() + b"\n",
            "tokenizer.json": json.dumps(tokenizer, sort_keys=True).encode(),
            "model.safetensors": tiny_safetensors(1),  # ~2 MiB, LFS
        },
        message="Initial upload",
        date=_T0,
    )
    model.create_tag("v1.0", at=v1)
    model.commit(
        {"README.md": b"# tiny-model\n\nA deterministic demo model served by hubemu.\n"},
        message="Add model card",
        date=_T0 + 60,
    )

    dataset = hub.create_repo("demo/tiny-dataset", repo_type="dataset", owner="demo-org")
    files = {
        f"data/train-{i:05d}-of-00003.csv": b"id,text\n"
        + b"".join(
            f"{j},row {j} of shard {i} {seeded_bytes(100 * i + j, 8).hex()}\n".encode() for j in range(200)
        )
        for i in range(3)
    }
    files["data/validation.jsonl"] = b"".join(
        json.dumps({"id": j, "text": f"val {j}"}).encode() + b"\n" for j in range(50)
    )
    files["README.md"] = b"# tiny-dataset\n"
    dataset.commit(files, message="Initial upload", date=_T0 + 120)

    gated = hub.create_repo("demo/gated-model", gated="manual", owner="demo-org")
    gated.commit(
        {"config.json": b'{"model_type": "tiny"}\n', "model.safetensors": tiny_safetensors(2, 64, 64)},
        message="Initial upload",
        date=_T0 + 180,
    )
    hub.grant_gated("demo/gated-model", DEMO_USER, status="accepted")
    populate_quickstart(hub)


# The real Hub commit that manifests/quickstart.yaml pins; the emulator serves small stand-ins of its files.
QUICKSTART_REPO = "sentence-transformers/all-MiniLM-L6-v2"
QUICKSTART_COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def populate_quickstart(hub: HubEmulator) -> None:
    """The repos README.md and docs/ name (public, ungated: no token needed): the first command's, at its
    pinned commit, and the one the README's `prefetch add` example adds."""
    hub.create_repo("BAAI/bge-small-en-v1.5", owner="BAAI").commit(
        {
            "config.json": b'{"model_type": "bert", "hidden_size": 384}\n',
            "tokenizer.json": b'{"version": "1.0"}\n',
            "model.safetensors": tiny_safetensors(5, 32, 384),
            "pytorch_model.bin": seeded_bytes(6, 2048),
        },
        message="Initial upload",
        date=_T0 + 300,
    )
    repo = hub.create_repo(QUICKSTART_REPO, owner="sentence-transformers")
    config = {"architectures": ["BertModel"], "hidden_size": 384, "model_type": "bert"}
    repo.commit(
        {
            "config.json": json.dumps(config, indent=2, sort_keys=True).encode() + b"\n",
            "tokenizer_config.json": b'{"do_lower_case": true}\n',
            "modules.json": b'[{"idx": 0, "name": "0", "path": "", "type": "Transformer"}]\n',
            "1_Pooling/config.json": b'{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}\n',
            "vocab.txt": b"".join(f"tok{i}\n".encode() for i in range(1000)),
            "model.safetensors": tiny_safetensors(3, 96, 384),
            "pytorch_model.bin": seeded_bytes(4, 4096),
            "README.md": b"# all-MiniLM-L6-v2 (hubemu stand-in)\n",
        },
        message="Initial upload",
        date=_T0 + 240,
        sha=QUICKSTART_COMMIT,
    )
