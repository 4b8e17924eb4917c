"""A sync whose bytes come from an OCI artifact (`oci://REGISTRY/REPO[:TAG|@DIGEST]`, or an OCI image layout
`oci:DIR[:TAG]`: what `prefetch push` wrote) instead of the Hub: `sync --source`, or the manifest's
`source:`.

No request goes to the Hub: the lock alone says what to fetch, as `--locked` takes it (it must exist and
match the manifest) or as `--frozen` does (as it is); nothing is resolved, no access is checked, and the
lockfile is not written. That is what makes an air-gapped sync possible, and it is safe because the lock
is the root of trust: the artifact is read through `pull.resolve_pull`, which refuses a layer the lock
does not name before any byte moves, and every byte is then verified against the lock (sha256 for an
LFS file, the git sha1 for a regular one) before it is installed under the lock's blob name.

From a registry, each download job's URL becomes its layer's blob URL, its credential the registry's
(scoped to the registry's origin), and the download engine fetches it as it fetches the Hub's files:
resumable partial files, Range segments, retries. From a layout folder, each blob is hashed and
hard-linked into the cache where the filesystem allows, else copied (`from_layout`).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from prefetch.download.job import FileJob, TransferStats
from prefetch.errors import AccessError, LockOutdatedError, UsageError
from prefetch.lockfile import Lock, diff_lock
from prefetch.manifest import Manifest
from prefetch.materialise import materialise
from prefetch.oci.from_layout import install_from_layout
from prefetch.oci.pull import FileSource, PullPlan, resolve_pull
from prefetch.oci.reference import Reference, parse_reference
from prefetch.plan import Plan, SyncResult, announce, check_names, check_space, make_plan
from prefetch.resolve import LockMode, resolve
from prefetch.run import RunContext
from prefetch.terminal import printable
from prefetch.transfer import transfer

MAX_LISTED = 20  # files a refusal names (then: "and N more")
FETCH_LOCK = "`prefetch lock` where the Hub is reachable, and bring the lockfile along"


def source_of(cli_source: str | None, manifest: Manifest) -> Reference | None:
    """The run's source: `--source` (parsed here: exit 2 when it is not a reference), else the manifest's."""
    return parse_reference(cli_source) if cli_source is not None else manifest.source


def source_lock_mode(
    mode: LockMode, old: Lock | None, lock_path: Path, manifest: Manifest, source: Reference
) -> LockMode:
    """How a sync from `source` takes the lock: as `--frozen` when asked, else as `--locked` (nothing can
    be resolved without the Hub). Without a lockfile, or with one out of date with the manifest (and no
    `--frozen`), exit 6 saying so; `--upgrade` resolves against the Hub: exit 2."""
    if mode.upgrade or mode.upgrade_repos:
        raise UsageError(f"--upgrade resolves against the Hub; a sync from {source} takes the lock as it is")
    if old is None:
        raise LockOutdatedError(
            f"a sync from {source} needs the lockfile {lock_path}: the lock says which files to take and "
            f"checks every byte of them (a registry is trusted no more than a mirror). Run {FETCH_LOCK}"
        )
    differences = [] if mode.frozen else diff_lock(old, manifest)
    if differences:
        raise LockOutdatedError(
            f"a sync from {source} takes {lock_path} as --locked does (nothing is resolved against the Hub), "
            f"and it is out of date with {manifest.path}:\n  - " + "\n  - ".join(differences) + "\n"
            f"Run {FETCH_LOCK}, or pass --frozen to take the lock as it is"
        )
    return LockMode(locked=not mode.frozen, frozen=mode.frozen)


def _job_key(job: FileJob) -> tuple[str, str]:
    return job.cache.folder.name, job.etag


class OciSource:
    """An artifact opened for a sync: where each locked file's bytes are in it, and (a registry) the
    session the engine fetches them through. A context manager: the session closes with it."""

    def __init__(self, pull: PullPlan) -> None:
        self.pull = pull
        self._where: dict[tuple[str, str], FileSource] = {}  # (repo folder, blob name) -> its layer

    @classmethod
    def open(cls, ctx: RunContext, source: Reference, lock: Lock) -> OciSource:
        """Read the artifact's index and each locked entry's manifest (refusing what the lock does not
        name), with the run's retries, cancellation, secrets and display."""
        pull = resolve_pull(
            source,
            lock,
            retry=ctx.retry_settings(),
            cancel=ctx.cancel,
            secrets=ctx.secrets,
            pool_size=ctx.settings.jobs * 2 + 4,
            on_retry=ctx.progress.retry,
        )
        return cls(pull)

    @property
    def name(self) -> str:
        return self.pull.reference

    def close(self) -> None:
        self.pull.close()

    def __enter__(self) -> OciSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def route(self, ctx: RunContext, plan: Plan) -> None:
        """Point every job of `plan` at its layer (a registry's blob URL and credential). A file the cache
        lacks and the artifact does not hold is exit 3, naming the files, before any byte moves."""
        layers = {(s.entry, s.path): s for s in self.pull.sources}
        absent = []
        for p in plan.entries:
            folder = ctx.repo_cache(p.locked.repo, p.locked.type).folder.name
            for f in p.missing:
                layer = layers.get((p.locked.key, f.path))
                if layer is None:
                    absent.append(f"{p.locked.key}: {printable(f.path)}")
                else:
                    self._where[(folder, f.etag)] = layer
        if absent:
            more = f"\n  - and {len(absent) - MAX_LISTED} more" if len(absent) > MAX_LISTED else ""
            raise AccessError(
                f"{self.name} lacks {len(absent)} locked file(s) the cache needs (was it pushed from "
                "another lock?); nothing was fetched:\n  - " + "\n  - ".join(absent[:MAX_LISTED]) + more
            )
        plan.first = [self._routed(job) for job in plan.first]
        plan.later = [self._routed(job) for job in plan.later]

    def _routed(self, job: FileJob) -> FileJob:
        layer = self._where[_job_key(job)]
        return replace(job, source_url=layer.url, token=layer.credential) if layer.url else job

    def transfer(self, ctx: RunContext, plan: Plan) -> TransferStats:
        """Bring every job's bytes into the cache, verified: the download engine on the registry's
        session, or hashed and linked (or copied) from the layout's blob files."""
        if self.pull.registry is not None:
            return transfer(ctx, plan, source=self.pull.registry.http)
        files = {key: layer.file for key, layer in self._where.items() if layer.file is not None}
        return install_from_layout(ctx, plan.jobs, lambda job: files[_job_key(job)])


def sync_from_source(
    ctx: RunContext, old: Lock | None, lock_path: Path, mode: LockMode, *, dry_run: bool, verify: bool
) -> SyncResult:
    """The locked files from an OCI artifact (`prefetch.oci.source`): the lock as `--locked` (or
    `--frozen`) takes it, no request to the Hub, the lockfile not written; then the same cache, links
    and refs as a Hub sync's."""
    source = source_of(ctx.settings.source, ctx.manifest)
    assert source is not None
    mode = source_lock_mode(mode, old, lock_path, ctx.manifest, source)
    assert old is not None
    if not dry_run:
        ctx.write_before_requests(ctx.cache_dir, "the cache")
    plan = make_plan(ctx, resolve(ctx, ctx.manifest, old, lock_path, mode), verify=verify, hub=False)
    if not dry_run:
        check_names(plan, ctx.cache_dir)
    result = SyncResult(plan.entries, old, lock_path, ctx.cache_dir, source=str(source))
    with contextlib.ExitStack() as opened:  # the source is read only for files to fetch (warm: no request)
        oci = opened.enter_context(OciSource.open(ctx, source, old)) if plan.jobs else None
        if oci is not None:
            oci.route(ctx, plan)
        announce(ctx, plan, None, dry_run)
        if dry_run:
            return result
        ctx.check_writable()
        check_space(plan, ctx.cache_dir, ctx.settings.min_free)
        if oci is not None:
            result.stats = oci.transfer(ctx, plan)
    materialise(ctx, plan)
    return result
