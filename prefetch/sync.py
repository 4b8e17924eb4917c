"""The orchestrator: manifest -> resolve -> access -> plan -> transfer -> materialise -> lockfile.

Each stage is a module that takes and returns plain data (`resolve`, `plan`, `transfer`, `materialise`);
this module only runs them in order over one `RunContext`, and is the library API the CLI calls:
`sync`, `lock`, `check` (and `prefetch.repair.repair`, a verify then a sync).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from prefetch.access import AccessReport, check_entries
from prefetch.cancel import CancelToken
from prefetch.errors import UsageError
from prefetch.gcpause import paused_gc
from prefetch.lockfile import Lock, default_lock_path, load_lock, write_lock
from prefetch.manifest import load_manifest
from prefetch.materialise import materialise, refuse_corrupt_offline
from prefetch.plan import Plan, RequestForecast, SyncResult, announce, check_names, check_space, make_plan
from prefetch.progress import Progress
from prefetch.resolve import (
    LockMode,
    Resolution,
    lock_changes,
    lock_endpoint,
    lock_may_change,
    new_lock,
    resolve,
)
from prefetch.run import RunContext, Settings


@paused_gc()
def sync(
    manifest_path: str | Path,
    *,
    settings: Settings | None = None,
    locked: bool = False,
    frozen: bool = False,
    dry_run: bool = False,
    upgrade: bool = False,
    upgrade_repos: tuple[str, ...] = (),
    verify: bool = False,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> SyncResult:
    """Bring every manifest entry into the cache, verified, and write the lockfile last.

    `locked`: fail (exit 6) unless the lock exists and matches the manifest; `frozen`: use the lock as
    it is. Neither writes the lockfile. `verify`: hash the cached blobs first and fetch again those that
    do not match. With a source (`settings.source`, the manifest's `source:`), the files come from that
    OCI artifact and nothing goes to the Hub (`prefetch.oci.source`). Cancelling `cancel` (from another
    thread, or a signal handler) stops the run with `Cancelled`; its partial downloads are kept for the
    next run to resume.
    """
    settings = settings or Settings()
    manifest = load_manifest(manifest_path)
    lock_path = settings.lock_path or default_lock_path(manifest.path)
    old = load_lock(lock_path) if lock_path.exists() else None
    mode = LockMode(locked, frozen, upgrade, upgrade_repos)
    with RunContext(manifest, settings, progress, cancel) as ctx:
        if settings.source is not None or manifest.source is not None:
            from prefetch.oci.source import sync_from_source  # only for a sync from a registry

            return sync_from_source(ctx, old, lock_path, mode, dry_run=dry_run, verify=verify)
        if not ctx.offline:
            ctx.check_token_transport(manifest.entries)
        if not dry_run:
            ctx.write_before_requests(ctx.cache_dir, "the cache")
            if not ctx.offline and lock_may_change(old, manifest, mode):
                ctx.write_before_requests(
                    lock_path.absolute().parent, f"the lockfile's folder (for {lock_path})"
                )
        resolution = resolve(ctx, manifest, old, lock_path, mode)
        plan = make_plan(ctx, resolution, verify=verify)
        if not dry_run:
            check_names(plan, ctx.cache_dir)
        if ctx.offline:
            refuse_corrupt_offline(plan.entries)
            materialise(ctx, plan)
            lock = old or _lock(ctx, old, resolution, lock_path)
            return SyncResult(plan.entries, lock, lock_path, ctx.cache_dir)
        report = _check_access(ctx, plan, resolution)
        lock = old if mode.frozen and old else _lock(ctx, old, resolution, lock_path)
        result = SyncResult(plan.entries, lock, lock_path, ctx.cache_dir, report=report)
        result.changes = lock_changes(old, lock)
        made, policies = ctx.rate_limits()
        token = any(ctx.token(p.entry) for p in plan.entries if p.missing)
        result.forecast = RequestForecast.of(plan, made, policies, token)
        announce(ctx, plan, result.forecast, dry_run)
        if dry_run:
            return result
        ctx.check_writable()  # a warm run makes no request, but rewrites what links or refs are stale
        check_space(plan, ctx.cache_dir, settings.min_free)
        if plan.jobs:
            from prefetch.transfer import (  # the download engine: only when it has work
                record_learned,
                transfer,
            )

            result.stats = transfer(ctx, plan, old.endpoint if old else None)
            record_learned(ctx, plan, result.stats.learned)
        resolution.locked.update({p.entry.key: p.locked for p in plan.entries})
        resolution.resolved_here = resolution.resolved_here or bool(result.stats.learned)
        result.lock = lock = _lock(ctx, old, resolution, lock_path)
        result.changes = lock_changes(old, lock)
        materialise(ctx, plan)
        if mode.writes_lock and old != lock:  # written last, and only when it changed (it may be read-only)
            write_lock(lock, lock_path)
            result.lock_written = True
        return result


def _lock(ctx: RunContext, old: Lock | None, resolution: Resolution, lock_path: Path) -> Lock:
    endpoint = lock_endpoint(old, resolution.resolved_here, ctx.endpoint)
    return new_lock(ctx.manifest, resolution.entries, resolution.locked, lock_path, endpoint)


def _check_access(ctx: RunContext, plan: Plan, resolution: Resolution) -> AccessReport:
    """The entries that failed to resolve, plus an access check of every entry with bytes to fetch;
    raises the report's error if any entry cannot be read (it shows the warnings), else shows them."""
    needing = [p for p in plan.entries if p.missing]
    rows = list(resolution.failures)
    if needing:
        rows += check_entries(
            ctx.hub,
            [(p.entry, ctx.token(p.entry)) for p in needing],
            commits={p.entry.key: p.locked.commit for p in needing},
            hub_gated=resolution.hub_gated,
            probes={p.entry.key: p.missing[0].path for p in needing},
        ).results
    report = AccessReport(rows)
    if not report.ok:
        raise report.error()  # (its report lists every row with its warnings: they are said there, once)
    for row in rows:
        for warning in row.warnings:
            ctx.progress.message(f"warning: {row.entry.label}: {warning}")
            ctx.progress.event("warning", repo=row.entry.repo, revision=row.entry.revision, message=warning)
    return report


@paused_gc()
def lock(
    manifest_path: str | Path,
    *,
    settings: Settings | None = None,
    upgrade: bool = False,
    upgrade_repos: tuple[str, ...] = (),
    required: Collection[str] | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> SyncResult:
    """Resolve and write the lockfile without downloading (sticky unless upgraded). `required`: the only
    entries (`Entry.key`) whose failure fails the run; another that cannot be resolved is left out of the
    lock (`SyncResult.report` says why): `add` must not fail on an entry it did not add."""
    settings = settings or Settings()
    manifest = load_manifest(manifest_path)
    lock_path = settings.lock_path or default_lock_path(manifest.path)
    old = load_lock(lock_path) if lock_path.exists() else None
    mode = LockMode(upgrade=upgrade, upgrade_repos=upgrade_repos)
    with RunContext(manifest, settings, progress, cancel) as ctx:
        if ctx.offline:
            raise UsageError("`prefetch lock` needs the network (HF_HUB_OFFLINE / --offline is set)")
        ctx.check_token_transport(manifest.entries)
        if lock_may_change(old, manifest, mode):
            ctx.write_before_requests(lock_path.absolute().parent, f"the lockfile's folder (for {lock_path})")
        resolution = resolve(ctx, manifest, old, lock_path, mode)
        failing = [f for f in resolution.failures if required is None or f.entry.key in required]
        if failing:
            raise AccessReport(failing).error()
        new = _lock(ctx, old, resolution, lock_path)
        if old != new:
            write_lock(new, lock_path)
        report = AccessReport(resolution.failures) if resolution.failures else None
        changes = lock_changes(old, new)
        return SyncResult(
            [], new, lock_path, ctx.cache_dir, changes=changes, report=report, lock_written=old != new
        )


def check(
    manifest_path: str | Path,
    *,
    settings: Settings | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    keys: Collection[str] | None = None,
) -> AccessReport:
    """The access check alone, for every entry (or those whose `Entry.key` is in `keys`): token, gating,
    visibility, revision."""
    manifest = load_manifest(manifest_path)
    with RunContext(manifest, settings or Settings(), progress, cancel) as ctx:
        if ctx.offline:
            raise UsageError("`prefetch check` needs the network (HF_HUB_OFFLINE / --offline is set)")
        ctx.check_token_transport(manifest.entries)
        entries = [e for e in manifest.entries if keys is None or e.key in keys]
        return check_entries(ctx.hub, [(e, ctx.token(e)) for e in entries])
