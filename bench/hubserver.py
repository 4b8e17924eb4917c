"""The test Hub for benchmarks, in its own process, driven over stdin/stdout (one JSON object per line).

Why a separate process: the emulator is pure Python; inside the benchmark's process its threads
would share a GIL (and on a 2-core machine, a core) with the bookkeeping of the runner, and a
client measured in-process would share it too. Here the clients are subprocesses and the Hub is one
more, so each competes only for CPU, as a real client and server would.

    python bench/hubserver.py --repo bench/big:4:268435456:lfs --repo bench/small:2000:4096:small [--tls]

prints `{"ready": true, "url": ..., "cdn_url": ..., "ca_file": ..., "repos": {...}}` once serving (with
`--tls` both origins speak HTTPS and `ca_file` is the PEM of the CA to trust; else it is null), then
answers commands read from stdin, one per line:

    {"cmd": "stats"}                 request counts and body bytes served since the last reset
    {"cmd": "reset"}                 clear the counters
    {"cmd": "bandwidth", "bps": N}   cap each CDN connection at N bytes/s (0 or null: no cap)
    {"cmd": "final_urls", "repo": ID} every file's URL after the Hub's redirect (CDN for LFS files)
    {"cmd": "quit"}                  stop (so does end of input)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.hubemu import HubEmulator  # noqa: E402

MODEL_CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "README.md")
LIFETIME = 4 * 3600.0  # the emulator stops by itself after this (a forgotten process cannot linger)


def small_file(i: int, size: int) -> tuple[str, bytes]:
    """A small regular (non-LFS) file: sizes vary from size/2 to 3*size/2, content is deterministic."""
    n = max(1, size // 2 + (i * 7919) % max(size, 1))
    rng = random.Random(i)
    return f"data/part-{i // 250:03d}/sample-{i:05d}.json", rng.randbytes(n)


def populate(hub: HubEmulator, specs: list[str]) -> dict[str, dict[str, Any]]:
    """Create the repos named by `NAME:COUNT:SIZE:KIND` specs; one commit each.

    KIND: `lfs` (COUNT LFS files), `small` (COUNT regular files), `model` (a few small config files
    beside COUNT LFS files: a typical entry of a many-repo manifest).
    """
    repos: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, count_s, size_s, kind = spec.rsplit(":", 3)
        count, size = int(count_s), int(size_s)
        files: dict[str, bytes] = {}
        if kind == "lfs":
            for i in range(count):
                files[f"model-{i + 1:05d}-of-{count:05d}.safetensors"] = os.urandom(size)
        elif kind == "small":
            files.update(small_file(i, size) for i in range(count))
        elif kind == "model":
            rng = random.Random(name)
            files.update({n: rng.randbytes(700 + 300 * j) for j, n in enumerate(MODEL_CONFIG_FILES)})
            files.update({f"model-{i + 1:05d}.safetensors": rng.randbytes(size) for i in range(count)})
        else:
            raise SystemExit(f"unknown kind {kind!r} in --repo {spec}")
        repo = hub.create_repo(name)
        commit = repo.commit(files, message="benchmark content")
        repos[name] = {
            "commit": commit,
            "files": len(files),
            "paths": sorted(files),
            "bytes": sum(len(b) for b in files.values()),
            "lfs": sorted(repo.lfs_paths(commit)),
            "sha256": {p: repo.file_info(commit, p).sha256 for p in repo.lfs_paths(commit)},
        }
    return repos


def stats(hub: HubEmulator) -> dict[str, Any]:
    """Counters since the last reset: requests by kind and method, and file bytes served."""
    return {
        "requests": hub.count(),
        "meta": hub.count(kind="meta"),
        "file": hub.count(kind="file"),
        "head": hub.count(method="HEAD"),
        "get": hub.count(method="GET"),
        "cdn": hub.count(origin="cdn"),
        "telemetry": hub.count(path_contains="agent-harnesses"),
        "bytes_served": hub.bytes_served(),
    }


def serve(hub: HubEmulator, repos: dict[str, dict[str, Any]]) -> None:
    """Answer commands until `quit` or end of input."""

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    ca_file = hub.ca_file if hub.tls else None
    reply({"ready": True, "url": hub.url, "cdn_url": hub.cdn_url, "ca_file": ca_file, "pid": os.getpid(),
           "repos": repos})  # fmt: skip
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            what = cmd.get("cmd")
            if what == "stats":
                reply(stats(hub))
            elif what == "reset":
                hub.reset_counters()
                reply({"ok": True})
            elif what == "bandwidth":
                hub.bandwidth_per_connection = float(cmd["bps"]) if cmd.get("bps") else None
                reply({"ok": True, "bps": hub.bandwidth_per_connection})
            elif what == "final_urls":
                info = repos[cmd["repo"]]
                lfs = set(info["lfs"])
                reply({"urls": {
                    p: hub.cdn_file_url(info["sha256"][p]) if p in lfs
                    else hub.file_url(cmd["repo"], p, info["commit"])
                    for p in info["paths"]
                }})  # fmt: skip
            elif what == "quit":
                reply({"ok": True})
                return
            else:
                reply({"error": f"unknown command {what!r}"})
        except Exception as exc:  # a bad command must not kill the Hub mid-benchmark
            reply({"error": repr(exc)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", action="append", default=[], help="NAME:COUNT:SIZE:KIND (lfs|small|model)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (a throwaway CA, see ca_file)")
    parser.add_argument("--lifetime", type=float, default=LIFETIME, help="stop by itself after this (s)")
    args = parser.parse_args(argv)
    hub = HubEmulator(max_lifetime=args.lifetime, tls=args.tls)
    repos = populate(hub, args.repo)
    hub.start()
    try:
        serve(hub, repos)
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
