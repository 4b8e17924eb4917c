"""Stage 3, transfer: the plan's jobs -> blobs in the cache, verified.

The download engine (`prefetch.download`) fetches the first job of every distinct blob, then the jobs of
the same blobs for other repos' folders (hard-linked from the first). What the bytes taught (the sha256 of
a file whose endpoint published no hash, or of an LFS file known only by its pointer's id) goes into the
plan's locked files, so the lock written last records it.
"""

from __future__ import annotations

from dataclasses import replace

from prefetch.download.engine import Transfer
from prefetch.download.job import TransferStats
from prefetch.plan import Plan, first_use_key
from prefetch.run import RunContext


def transfer(ctx: RunContext, plan: Plan) -> TransferStats:
    """Fetch every job of `plan` into the cache; raises the most severe failure once the others ended."""
    engine = Transfer(
        ctx.http,
        jobs=ctx.settings.jobs,
        segment_threshold=ctx.settings.segment_threshold,
        segment_size=ctx.settings.segment_size,
        reporter=ctx.progress,
        cancel=ctx.cancel,
        processes=ctx.settings.processes,
        secrets=ctx.secrets,
        warn=lambda message: _warn(ctx, message),
    )
    engine.run(plan.first)
    if plan.later:
        engine.run(plan.later)
    return engine.stats


def _warn(ctx: RunContext, message: str) -> None:
    ctx.progress.message(f"warning: {ctx.endpoint_name}: {message}")
    ctx.progress.event("warning", message=message)


def record_learned(ctx: RunContext, plan: Plan, learned: dict[tuple[str, str], str]) -> None:
    """Put the sha256s the transfer learned from the bytes into the plan's locked files: a file the
    endpoint published no hash for (said per file), or an LFS file known only by its pointer's id."""
    for p in plan.entries:
        locked = p.locked
        folder = ctx.repo_cache(locked.repo, locked.type).folder.name
        files = []
        for f in locked.files:
            key = f.etag or first_use_key(locked.commit, f"{locked.repo}:{f.path}")
            sha256 = learned.get((folder, key))
            if sha256 and not f.etag:
                message = (
                    f"the endpoint published no hash for {locked.repo}:{f.path}; recorded sha256 "
                    f"{sha256} on first use"
                )
                ctx.progress.message(message)
                ctx.progress.event("first_use_hash", repo=locked.repo, path=f.path, sha256=sha256)
            files.append(replace(f, sha256=sha256, git_sha1=None) if sha256 else f)
        p.locked = replace(locked, files=tuple(files))
