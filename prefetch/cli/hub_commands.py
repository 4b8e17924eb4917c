"""The commands that talk to the Hub: `sync`, `plan`, `check`, `lock`, each one call into `prefetch.sync`.

Loaded only when one of them runs (see `prefetch.cli.lazy_group`): `prefetch.sync` brings the network
stack, which the offline commands never need.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import click

from prefetch import sync as sync_mod
from prefetch.cli.command import command
from prefetch.cli.context import Context, pass_ctx
from prefetch.cli.options import (
    hub_options,
    lock_mode_options,
    lock_opt,
    manifest_arg,
    settings_from,
    source_opt,
    transfer_options,
    upgrade_options,
)
from prefetch.plan import SyncResult
from prefetch.progress import Progress, QuietProgress, counted, human_bytes, shown
from prefetch.run import Settings


def _stdout_columns() -> int | None:
    """The width to fit plan lines into when stdout is a terminal (None: a pipe, print whole lines)."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


@command(
    "prefetch sync                     # models.yaml -> cache + models.lock",
    "prefetch sync --locked            # CI: exit 6 if models.lock is stale",
    "prefetch sync --frozen --offline  # air gap: the lock as it is",
    "prefetch sync --source oci://registry.internal/ml/models:prod  # the lock's files from a registry",
)
@manifest_arg
@lock_opt
@hub_options
@transfer_options
@lock_mode_options
@source_opt
@click.option(
    "--offline",
    "offline_flag",
    is_flag=True,
    help="No network: materialize from the cache (also HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1).",
)
@click.option("--dry-run", is_flag=True, help="List the files that would be fetched; download nothing.")
@upgrade_options
@click.option(
    "--verify",
    "verify_cached",
    is_flag=True,
    help="Hash cached blobs first; fetch again any that fail (else a blob of the right size is trusted).",
)
@pass_ctx
def sync(
    c: Context,
    manifest: Path,
    locked: bool,
    frozen: bool,
    offline_flag: bool,
    dry_run: bool,
    upgrade: bool,
    upgrade_repos: tuple[str, ...],
    verify_cached: bool,
    **kw: Any,
) -> None:
    """Download every manifest entry into the cache and write the lockfile."""
    result, progress = _run_sync(
        c,
        manifest,
        settings_from(kw, offline_flag),
        locked=locked,
        frozen=frozen,
        dry_run=dry_run,
        upgrade=upgrade,
        upgrade_repos=upgrade_repos,
        verify=verify_cached,
    )
    summary = result.summary()
    if c.as_json:
        progress.event("summary", dry_run=dry_run, **summary)
        return
    if dry_run:
        c.say(result.render_plan(_stdout_columns()))
    for line in result.changes:
        c.say(line)
    if dry_run:
        c.say("dry run: nothing downloaded, lockfile not written")
    else:
        entries = "1 entry" if summary["entries"] == 1 else f"{summary['entries']:,} entries"
        source = f" from {summary['source']}" if "source" in summary else ""
        c.say(
            f"synced {entries} ({counted(summary['files'], 'file')}; fetched "
            f"{counted(summary['fetched_files'], 'file')}, {human_bytes(summary['fetched_bytes'])}{source}) "
            f"into {summary['cache_dir']}; lockfile {summary['lockfile']}"
        )


def _run_sync(c: Context, manifest: Path, settings: Settings, **options: Any) -> tuple[SyncResult, Progress]:
    """`sync_mod.sync` under this command's progress (closed however the run ends), for sync and plan."""
    progress = c.progress()
    try:
        result = sync_mod.sync(manifest, settings=settings, progress=progress, cancel=c.cancel, **options)
    finally:
        progress.close()
    return result, progress


@command(
    "prefetch plan                     # every file: cached or to fetch",
    "prefetch plan models.yaml --json  # the same as JSON (event 'plan')",
    "prefetch plan --locked            # exit 6 if models.lock is stale",
)
@manifest_arg
@lock_opt
@hub_options
@lock_mode_options
@source_opt
@pass_ctx
def plan(c: Context, manifest: Path, locked: bool, frozen: bool, **kw: Any) -> None:
    """List the files `sync` would fetch, per entry, with their sizes (same as `sync --dry-run`)."""
    result, progress = _run_sync(c, manifest, settings_from(kw), locked=locked, frozen=frozen, dry_run=True)
    if c.as_json:
        progress.event("summary", dry_run=True, **result.summary())
    else:
        c.say(result.render_plan(_stdout_columns()))


@command(
    "prefetch check                    # one row per entry, with the fix",
    "prefetch check models.yaml --json",
    "HF_TOKEN=hf_... prefetch check --endpoint https://hub.internal",
)
@manifest_arg
@hub_options
@pass_ctx
def check(c: Context, manifest: Path, **kw: Any) -> None:
    """Check access to every entry (token, gating, visibility, revision) without downloading."""
    # It shows no progress; the display only lends the run its secrets (the report is this command's output).
    quiet = QuietProgress(c.secrets)
    report = sync_mod.check(manifest, settings=settings_from(kw), progress=quiet, cancel=c.cancel)
    if c.as_json:
        c.emit(
            {
                "ok": report.ok,
                "exit_code": int(report.exit_code),
                "entries": [r.to_json() for r in report.results],
            }
        )
    else:
        click.echo(shown(report.render(), c.secrets))
    if not report.ok:
        raise report.error(shown=True)


@command(
    "prefetch lock                     # resolve new or changed entries only",
    "prefetch lock --upgrade           # re-resolve every entry",
    "prefetch lock --upgrade-repo org/name",
)
@manifest_arg
@lock_opt
@hub_options
@upgrade_options
@pass_ctx
def lock(c: Context, manifest: Path, upgrade: bool, upgrade_repos: tuple[str, ...], **kw: Any) -> None:
    """Resolve revisions and write the lockfile, downloading nothing."""
    result = sync_mod.lock(
        manifest, settings=settings_from(kw), upgrade=upgrade, upgrade_repos=upgrade_repos, cancel=c.cancel
    )
    if c.as_json:
        c.emit({"lockfile": str(result.lock_path), "changes": result.changes, "written": result.lock_written})
        return
    for line in result.changes or ["no changes"]:
        c.say(line)
    c.say(f"wrote {result.lock_path}" if result.lock_written else f"{result.lock_path} is up to date")
