"""The test Hub for benchmarks, in its own process, driven over stdin/stdout (one JSON object per line).

Why a separate process: the emulator is pure Python; inside the benchmark's process its threads
would share a GIL (and on a 2-core machine, a core) with the bookkeeping of the runner, and a
client measured in-process would share it too. Here the clients are subprocesses and the Hub is one
more, so each competes only for CPU, as a real client and server would.

    python bench/hubserver.py --repo bench/big:4:268435456:lfs --repo bench/small:2000:4096:small [--tls]

prints `{"ready": true, "url": ..., "cdn_url": ..., "ca_file": ..., "repos": {...}}` once serving (with
`--tls` both origins speak HTTPS and `ca_file` is the PEM of the CA to trust; else it is null), then
answers commands read from stdin, one per line:

    {"cmd": "stats"}                 request counts, body bytes served, rate-limit counts since the last reset
    {"cmd": "reset"}                 clear the counters (and open a fresh rate-limit window)
    {"cmd": "bandwidth", "bps": N}   cap each CDN connection at N bytes/s (0 or null: no cap)
    {"cmd": "final_urls", "repo": ID} every file's URL after the Hub's redirect (CDN for LFS files)
    {"cmd": "front", "url": U, "cdn_url": C}  name these origins in every URL handed out (null: our own)
    {"cmd": "write_blobs", "repo": ID, "dir": D}  write the repo's LFS blobs to D/{sha256}
    {"cmd": "ratelimit", "window": S, "resolvers": N, "headers": H}  limit as the Hub does (no window: off)
    {"cmd": "quit"}                  stop (so does end of input)

`front` and `write_blobs` put a C server in front (bench/run.py's nginx rows): it serves the LFS bytes from
the written blobs at `/lfs/{sha256}`, the path of our CDN's URLs, and proxies everything else to `url`.
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
from tests.hubemu.ratelimit import LOCAL_ANONYMOUS, RateLimiter  # noqa: E402

MODEL_CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "README.md")
LIFETIME = 4 * 3600.0  # the emulator stops by itself after this (a forgotten process cannot linger)


class BenchHub(HubEmulator):
    """The test Hub, able to hand out another server's origins (a C server in front of it).

    Why: a client must talk to the server in front only, so the 302 to the CDN, pagination links and
    every URL the Hub builds name that server's origins. Requests it proxies still reach this Hub and
    are counted here; the bytes it serves itself are counted by it.
    """

    public_url: str | None = None  # the API origin clients are given (None: this Hub's own)
    public_cdn_url: str | None = None  # the CDN origin the 302s name (None: this Hub's own)

    @property
    def url(self) -> str:
        return self.public_url or super().url

    @property
    def cdn_url(self) -> str:
        return self.public_cdn_url or super().cdn_url

    @property
    def own_url(self) -> str:
        """Where this Hub itself listens (what the server in front proxies to)."""
        return super().url


def small_file(i: int, size: int) -> tuple[str, bytes]:
    """A small regular (non-LFS) file: sizes vary from size/2 to 3*size/2, content is deterministic."""
    n = max(1, size // 2 + (i * 7919) % max(size, 1))
    rng = random.Random(i)
    return f"data/part-{i // 250:03d}/sample-{i:05d}.json", rng.randbytes(n)


def populate(hub: HubEmulator, specs: list[str]) -> dict[str, dict[str, Any]]:
    """Create the repos named by `NAME:COUNT:SIZE:KIND` specs; one commit each.

    KIND: `lfs` (COUNT LFS files), `small` (COUNT regular files), `model` (a few small config files
    beside COUNT LFS files: a typical entry of a many-repo manifest), `xet` (COUNT LFS files stored in
    Xet; their content comes from a seed, so that with HUBEMU_XET_CACHE set their chunk lists are
    built once and read back by the next run).
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
        elif kind == "xet":
            for i in range(count):
                seeded = random.Random(
                    f"{name}:{i}:{size}"
                )  # (randbytes takes at most 2**28 bytes at a time)
                pieces = [seeded.randbytes(min(1 << 24, size - at)) for at in range(0, size, 1 << 24)]
                files[f"model-{i + 1:05d}-of-{count:05d}.safetensors"] = b"".join(pieces)
        elif kind == "model":
            rng = random.Random(name)
            files.update({n: rng.randbytes(700 + 300 * j) for j, n in enumerate(MODEL_CONFIG_FILES)})
            files.update({f"model-{i + 1:05d}.safetensors": rng.randbytes(size) for i in range(count)})
        else:
            raise SystemExit(f"unknown kind {kind!r} in --repo {spec}")
        repo = hub.create_repo(name, xet=kind == "xet")
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
    """Counters since the last reset: requests by kind and method, file bytes served, `/resolve` calls,
    and the rate limiter's requests and 429 answers per bucket (every identity summed)."""
    limited: dict[str, dict[str, int]] = {}
    if hub.rate_limiter is not None:
        for (_, bucket), count in hub.rate_limiter.counts().items():
            total = limited.setdefault(bucket, {"requests": 0, "rejected": 0})
            total["requests"] += count.requests
            total["rejected"] += count.rejected
    return {
        "requests": hub.count(),
        "meta": hub.count(kind="meta"),
        "file": hub.count(kind="file"),
        "head": hub.count(method="HEAD"),
        "get": hub.count(method="GET"),
        "cdn": hub.count(origin="cdn"),
        "telemetry": hub.count(path_contains="agent-harnesses"),
        "bytes_served": hub.bytes_served(),
        "resolve": hub.count(origin="api", path_contains="/resolve/"),
        "xet": hub.xet.counts(),
        "ratelimit": limited,
    }


def write_blobs(hub: HubEmulator, info: dict[str, Any], repo_id: str, folder: Path) -> int:
    """Write a repo's LFS blobs as `folder/{sha256}` (kept when already there, whole); how many were written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in info["lfs"]:
        stored = hub.repo(repo_id).file_info(info["commit"], path)
        target = folder / info["sha256"][path]
        if target.exists() and target.stat().st_size == stored.size:
            continue
        partial = target.with_suffix(".partial")
        partial.write_bytes(stored.data)
        partial.replace(target)
        written += 1
    return written


def rate_limit(hub: HubEmulator, cmd: dict[str, Any]) -> dict[str, Any]:
    """Turn the Hub's rate limits on (a window, the anonymous identity's resolver quota, a header profile) or off.

    The bench's clients send no token, so they all count for 127.0.0.1 under the anonymous tier; the
    resolver quota is set for that identity, the other buckets keep the tier's documented quotas.
    """
    if not cmd.get("window"):
        hub.rate_limiter = None
        return {"ok": True, "ratelimit": None}
    limiter = RateLimiter(float(cmd["window"]), headers=cmd.get("headers") or "always")
    if cmd.get("resolvers"):
        limiter.set_quotas(LOCAL_ANONYMOUS, resolvers=int(cmd["resolvers"]))
    hub.rate_limiter = limiter
    return {"ok": True, "quota": limiter.quota(LOCAL_ANONYMOUS, "resolvers"), "window": limiter.window}


def serve(hub: BenchHub, repos: dict[str, dict[str, Any]]) -> None:
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
                if hub.rate_limiter is not None:
                    hub.rate_limiter.reset()
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
            elif what == "front":
                hub.public_url, hub.public_cdn_url = cmd.get("url"), cmd.get("cdn_url")
                reply({"ok": True, "url": hub.url, "cdn_url": hub.cdn_url, "own_url": hub.own_url})
            elif what == "write_blobs":
                repo_id = cmd["repo"]
                reply({"written": write_blobs(hub, repos[repo_id], repo_id, Path(cmd["dir"]))})
            elif what == "ratelimit":
                reply(rate_limit(hub, cmd))
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
    parser.add_argument(
        "--repo", action="append", default=[], help="NAME:COUNT:SIZE:KIND (lfs|small|model|xet)"
    )
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (a throwaway CA, see ca_file)")
    parser.add_argument("--lifetime", type=float, default=LIFETIME, help="stop by itself after this (s)")
    args = parser.parse_args(argv)
    hub = BenchHub(max_lifetime=args.lifetime, tls=args.tls)
    repos = populate(hub, args.repo)
    hub.start()
    try:
        serve(hub, repos)
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
