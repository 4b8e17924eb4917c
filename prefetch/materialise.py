"""Stage 4, materialise: blobs in the cache -> each entry's snapshot links, then its ref.

A snapshot link is made only to a blob that is in place (the transfer fsynced the blobs' folders first),
and a ref only once every file of its entry is linked: huggingface_hub, transformers and vLLM may read
the cache at any moment, and must never find a ref to a half-made snapshot.
"""

from __future__ import annotations

from prefetch.errors import VerifyError
from prefetch.lockfile import LockedFile
from prefetch.plan import EntryPlan, Plan
from prefetch.progress import human_bytes
from prefetch.run import RunContext
from prefetch.terminal import printable


def materialise(ctx: RunContext, plan: Plan) -> None:
    """Snapshot links, then refs, for every entry (after its blobs are in place); VerifyError (exit 7)
    naming the locked files whose blobs are not in the cache."""
    missing = []
    for p in plan.entries:
        cache = ctx.repo_cache(p.locked.repo, p.locked.type)
        present: list[LockedFile] = []
        absent: list[LockedFile] = []
        fetched = {f.path for f in p.missing}  # the others were found in place by the plan, just before
        for f in p.locked.files:
            (present if f.path not in fetched or cache.has_blob(f.etag, f.size) else absent).append(f)
        cache.link_all(p.locked.commit, [(f.path, f.etag) for f in present])
        missing += [
            f"{p.locked.repo}@{p.locked.commit[:12]}: {printable(f.path)} ({human_bytes(f.size)})"
            for f in absent
        ]
        if not absent:
            cache.write_ref(p.locked.revision, p.locked.commit)
    if missing:
        raise VerifyError(
            f"{len(missing)} locked file(s) are not in the cache {ctx.cache_dir}:\n  - "
            + "\n  - ".join(missing),
            missing,
        )


def refuse_corrupt_offline(entries: list[EntryPlan]) -> None:
    """An offline run cannot repair what `--verify` found: say so rather than link bad bytes."""
    corrupt = [f"{p.entry.label}: {f.path} (blob {f.etag})" for p in entries for f in p.corrupt]
    if corrupt:
        raise VerifyError(
            f"{len(corrupt)} cached file(s) do not match their hash, and an offline run cannot fetch them "
            "again; run `prefetch sync --verify` with the network:\n  - " + "\n  - ".join(corrupt),
            corrupt,
        )
