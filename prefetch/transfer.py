"""Stage 3, transfer: the plan's jobs -> blobs in the cache, verified.

The download engine (`prefetch.download`) fetches the first job of every distinct blob, then the jobs of
the same blobs for other repos' folders (hard-linked from the first). What the bytes taught (the sha256 of
a file whose endpoint published no hash, or of an LFS file known only by its pointer's id) goes into the
plan's locked files, so the lock written last records it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from prefetch.download.engine import Transfer
from prefetch.download.job import TransferStats
from prefetch.errors import IntegrityError, LockDisagreesWithHub, PrefetchError
from prefetch.plan import Plan, first_use_key
from prefetch.resolve import endpoint_for_lock
from prefetch.run import RunContext

if TYPE_CHECKING:
    from prefetch.net.session import Http


def transfer(
    ctx: RunContext, plan: Plan, locked_against: str | None = None, source: Http | None = None
) -> TransferStats:
    """Fetch every job of `plan` into the cache; raises the most severe failure once the others ended.

    `locked_against`: the endpoint the lock was resolved against (it says who to believe when this
    endpoint states other hashes than the lock). `source`: the session of where the jobs' `source_url`s
    are (a registry's), instead of the Hub's; its files stay in this process (a helper process could not
    be handed the registry's credential)."""
    try:
        return _run(ctx, plan, source)
    except LockDisagreesWithHub as e:
        raise _disagreement(e, ctx, locked_against) from None


def _run(ctx: RunContext, plan: Plan, source: Http | None) -> TransferStats:
    engine = Transfer(
        source or ctx.http,
        jobs=ctx.settings.jobs,
        segment_threshold=ctx.settings.segment_threshold,
        segment_size=ctx.settings.segment_size,
        reporter=ctx.progress,
        cancel=ctx.cancel,
        processes=1 if source is not None else ctx.settings.processes,
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


def _disagreement(error: LockDisagreesWithHub, ctx: RunContext, locked_against: str | None) -> PrefetchError:
    """What to say, and with which exit code, when the endpoint states other hashes than the lock: a lock
    made against another endpoint is the root of trust (exit 5: this endpoint serves other bytes); one
    made against this endpoint was edited (exit 6). Either way, with the command that trusts the endpoint
    instead."""
    repos = sorted({line.partition(":")[0] for line in str(error).splitlines() if ":" in line})
    upgrade = " ".join(f"--upgrade-repo {repo}" for repo in repos) or "--upgrade"
    fix = f"to take this endpoint's files instead, re-resolve: `prefetch lock {upgrade}`"
    if locked_against and locked_against != endpoint_for_lock(ctx.endpoint):
        return IntegrityError(
            f"{error}\nthe lock was resolved against {locked_against}, and this run asks {ctx.endpoint_name}, "
            f"which serves other files at the same commit (a mirror out of step, or not to be trusted); {fix}"
        )
    return LockDisagreesWithHub(f"{error}\nwas the lockfile edited? restore it, or {fix}")
