"""The `prefetch` command: thin click wrappers over `prefetch.sync` and `prefetch.offline`.

Every command is one library call; this module only parses flags, picks the display, and maps
errors to exit codes (through `errors.exit_code_for`, the single mapping).
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from prefetch import __version__, settings
from prefetch import sync as sync_mod
from prefetch.auth import redact
from prefetch.cancel import CancelToken
from prefetch.errors import ExitCode, PrefetchError, exit_code_for, filesystem_error
from prefetch.files import atomic_write
from prefetch.offline import bundle as bundle_mod
from prefetch.offline import prune as prune_mod
from prefetch.offline import runtime_env
from prefetch.offline import sbom as sbom_mod
from prefetch.offline import unbundle as unbundle_mod
from prefetch.offline import verify as verify_mod
from prefetch.progress import Progress, human_bytes, make_progress, parse_size, setup_logging, shown

log = logging.getLogger("prefetch")
DEFAULTS = sync_mod.Settings()
MiB = 1024 * 1024

manifest_arg = click.argument(
    "manifest", type=click.Path(path_type=Path), default="models.yaml", required=False
)
lock_arg = click.argument("lockfile", type=click.Path(path_type=Path), default="models.lock", required=False)
cache_opt = click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="HF cache (default: HF_HUB_CACHE...)."
)


class SizeType(click.ParamType):
    """A size in human units (512M, 10G), as bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def network_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by the commands that talk to the Hub."""
    options = [
        click.option(
            "--lock", "lock_path", type=click.Path(path_type=Path), help="Lockfile (default: MANIFEST.lock)."
        ),
        cache_opt,
        click.option("--endpoint", help="Hub URL (default: manifest, HF_ENDPOINT, https://huggingface.co)."),
        click.option("--token-file", type=click.Path(path_type=Path), help="Read the token from this file."),
        click.option(
            "--proxy", "proxies", multiple=True, help="HTTP(S) proxy URL; repeat for failover order."
        ),
        click.option(
            "--jobs",
            "-j",
            type=click.IntRange(1, 256),
            default=DEFAULTS.jobs,
            show_default=True,
            help="Concurrent connections.",
        ),
        click.option(
            "--retries", type=click.IntRange(1, 100), help="Attempts per request (manifest retry.attempts)."
        ),
        click.option("--max-wait", type=click.FloatRange(0, 3600), help="Longest backoff wait, seconds."),
        click.option(
            "--segment-size",
            type=click.IntRange(1, 4096),
            default=DEFAULTS.segment_size // MiB,
            show_default=True,
            help="Big files are fetched as parallel Range segments of this many MiB.",
        ),
        click.option(
            "--min-free",
            type=SizeType(),
            help="Space to keep free after the download, e.g. 10G (default: 1 MiB + 1/16 of it, at most 64 MiB).",
        ),
        click.option(
            "--segment-threshold",
            type=click.IntRange(1, 1 << 20),
            default=DEFAULTS.segment_threshold // MiB,
            show_default=True,
            help="Files of at least this many MiB are split into segments.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def settings_from(kw: dict[str, Any], offline_flag: bool = False) -> sync_mod.Settings:
    return sync_mod.Settings(
        lock_path=kw.get("lock_path"),
        cache_dir=kw.get("cache_dir"),
        endpoint=kw.get("endpoint"),
        token_file=kw.get("token_file"),
        proxies=tuple(kw.get("proxies") or ()),
        jobs=kw.get("jobs") or DEFAULTS.jobs,
        retry_attempts=kw.get("retries"),
        retry_max_wait=kw.get("max_wait"),
        offline=offline_flag,
        segment_size=(kw.get("segment_size") or DEFAULTS.segment_size // MiB) * MiB,
        segment_threshold=(kw.get("segment_threshold") or DEFAULTS.segment_threshold // MiB) * MiB,
        min_free=kw.get("min_free"),
    )


class Context:
    def __init__(self, verbose: int, quiet: bool, as_json: bool, cancel: CancelToken | None = None) -> None:
        self.verbose, self.quiet, self.as_json = verbose, quiet, as_json
        self.cancel = cancel or CancelToken()  # the command's run: Ctrl-C / SIGTERM cancel it

    def progress(self) -> Progress:
        return make_progress("json" if self.as_json else "quiet" if self.quiet else "auto")

    def say(self, text: str) -> None:
        if not self.quiet and not self.as_json:
            click.echo(shown(text))

    def emit(self, data: dict[str, Any]) -> None:
        click.echo(redact(json.dumps(data, sort_keys=True, indent=None)))

    def show(self, report: Any) -> None:
        """A command's report: its JSON form under --json, else its text."""
        if self.as_json:
            self.emit(report.to_json())
        else:
            self.say(report.render())


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="prefetch")
@click.option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
@click.option("--quiet", "-q", is_flag=True, help="Only errors.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON lines on stdout).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, as_json: bool) -> None:
    """Prefetch Hugging Face Hub repos listed in a YAML manifest into the HF cache, verified and locked."""
    setup_logging(verbose if not quiet else -1)
    ctx.obj = Context(verbose, quiet, as_json, cancel=ctx.obj)  # main() passes the run's token


@cli.command()
@manifest_arg
@network_options
@click.option(
    "--frozen", is_flag=True, help="Use the lockfile exactly; fail (exit 6) if missing or out of date."
)
@click.option(
    "--offline",
    "offline_flag",
    is_flag=True,
    help="No network: materialize from the cache (also HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be fetched; download nothing.")
@click.option("--upgrade", is_flag=True, help="Re-resolve every entry instead of keeping locked commits.")
@click.option(
    "--upgrade-repo", "upgrade_repos", multiple=True, help="Re-resolve this repo only (repeatable)."
)
@pass_ctx
def sync(
    c: Context,
    manifest: Path,
    frozen: bool,
    offline_flag: bool,
    dry_run: bool,
    upgrade: bool,
    upgrade_repos: tuple[str, ...],
    **kw: Any,
) -> None:
    """Download every manifest entry into the cache and write the lockfile."""
    progress = c.progress()
    try:
        result = sync_mod.sync(
            manifest,
            settings=settings_from(kw, offline_flag),
            frozen=frozen,
            dry_run=dry_run,
            upgrade=upgrade,
            upgrade_repos=upgrade_repos,
            progress=progress,
            cancel=c.cancel,
        )
    finally:
        progress.close()
    summary = result.summary()
    if c.as_json:
        progress.event("summary", dry_run=dry_run, **summary)
        return
    for line in result.changes:
        c.say(line)
    if dry_run:
        c.say("dry run: nothing downloaded, lockfile not written")
    else:
        c.say(
            f"synced {summary['entries']} entries ({summary['files']} files; fetched {summary['fetched_files']} "
            f"files, {human_bytes(summary['fetched_bytes'])}) into {summary['cache_dir']}; "
            f"lockfile {summary['lockfile']}"
        )


@cli.command()
@manifest_arg
@network_options
@pass_ctx
def plan(c: Context, manifest: Path, **kw: Any) -> None:
    """What `sync` would fetch, per repo (same as `sync --dry-run`)."""
    progress = c.progress()
    result = sync_mod.sync(
        manifest, settings=settings_from(kw), dry_run=True, progress=progress, cancel=c.cancel
    )
    if c.as_json:
        progress.event("summary", dry_run=True, **result.summary())


@cli.command()
@manifest_arg
@network_options
@pass_ctx
def check(c: Context, manifest: Path, **kw: Any) -> None:
    """Check access to every entry (token, gating, visibility, revision) without downloading."""
    report = sync_mod.check(manifest, settings=settings_from(kw), cancel=c.cancel)
    if c.as_json:
        c.emit(
            {
                "ok": report.ok,
                "exit_code": int(report.exit_code),
                "entries": [r.to_json() for r in report.results],
            }
        )
    else:
        click.echo(shown(report.render()))
    if not report.ok:
        raise report.error(shown=True)


@cli.command(name="lock")
@manifest_arg
@network_options
@click.option("--upgrade", is_flag=True, help="Re-resolve every entry.")
@click.option(
    "--upgrade-repo", "upgrade_repos", multiple=True, help="Re-resolve this repo only (repeatable)."
)
@pass_ctx
def lock_cmd(c: Context, manifest: Path, upgrade: bool, upgrade_repos: tuple[str, ...], **kw: Any) -> None:
    """Resolve revisions and write the lockfile, downloading nothing."""
    result = sync_mod.lock(
        manifest, settings=settings_from(kw), upgrade=upgrade, upgrade_repos=upgrade_repos, cancel=c.cancel
    )
    if c.as_json:
        c.emit({"lockfile": str(result.lock_path), "changes": result.changes})
        return
    for line in result.changes or ["no changes"]:
        c.say(line)
    c.say(f"wrote {result.lock_path}")


@cli.command()
@lock_arg
@cache_opt
@click.option("--fast", is_flag=True, help="Check sizes only, not hashes.")
@click.option(
    "--jobs", "-j", type=click.IntRange(1, 256), help="Files hashed in parallel (default: CPU count)."
)
@pass_ctx
def verify(c: Context, lockfile: Path, cache_dir: Path | None, fast: bool, jobs: int | None) -> None:
    """Check, offline, that every locked file is in the cache intact (exit 7 if not)."""
    report = verify_mod.verify(lockfile, cache_dir=cache_dir, fast=fast, jobs=jobs)
    c.show(report)


@cli.command()
@lock_arg
@cache_opt
def env(lockfile: Path, cache_dir: Path | None) -> None:
    """Print the `export` lines a runtime container needs (HF_HUB_CACHE, HF_HUB_OFFLINE=1)."""
    for line in runtime_env.env_exports(lockfile, cache_dir=cache_dir):
        click.echo(line)


@cli.command()
@lock_arg
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here instead of stdout.")
def sbom(lockfile: Path, output: Path | None) -> None:
    """A CycloneDX JSON SBOM of the locked repos and files."""
    text = json.dumps(sbom_mod.sbom(lockfile), indent=2, sort_keys=True) + "\n"
    if output:
        atomic_write(output, text.encode())
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option(
    "--lock",
    "lock_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Keep what this lockfile needs (repeatable).",
)
@cache_opt
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@pass_ctx
def prune(c: Context, lock_paths: tuple[Path, ...], cache_dir: Path | None, dry_run: bool) -> None:
    """Remove cached revisions and blobs that no given lockfile needs."""
    report = prune_mod.prune(list(lock_paths), cache_dir=cache_dir, dry_run=dry_run)
    c.show(report)


@cli.command()
@lock_arg
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Tar file to write.")
@cache_opt
@pass_ctx
def bundle(c: Context, lockfile: Path, output: Path, cache_dir: Path | None) -> None:
    """Pack exactly the locked subset of the cache into a tar, for an air gap."""
    report = bundle_mod.bundle(lockfile, output, cache_dir=cache_dir)
    c.show(report)


@cli.command()
@click.argument("archive", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@cache_opt
@click.option(
    "--lock-out",
    type=click.Path(path_type=Path),
    help="Also write the bundled lockfile here (e.g. models.lock).",
)
@pass_ctx
def unbundle(c: Context, archive: Path, cache_dir: Path | None, lock_out: Path | None) -> None:
    """Verify and merge a bundle into a cache."""
    report = unbundle_mod.unbundle(archive, cache_dir=cache_dir, lock_out=lock_out)
    c.show(report)


def _on_signal(cancel: CancelToken, signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM (preemption): stop every worker at once, keep partial files, exit 130."""
    cancel.cancel()  # worker threads never see KeyboardInterrupt: they watch the run's token
    raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, map any error to its exit code, never print a secret."""
    cancel = CancelToken()  # this command's run
    signal.signal(signal.SIGTERM, functools.partial(_on_signal, cancel))
    signal.signal(signal.SIGINT, functools.partial(_on_signal, cancel))
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="prefetch", standalone_mode=False, obj=cancel)
        if isinstance(code, int) and code:  # click returns (not raises) ctx.exit codes here
            raise SystemExit(code)
    except click.ClickException as e:
        e.show()
        raise SystemExit(ExitCode.USAGE) from None
    except SystemExit:
        raise
    except BaseException as e:  # the one place errors become exit codes
        if isinstance(e, click.exceptions.Abort):  # click's wrapping of Ctrl-C
            e = KeyboardInterrupt()
        e = filesystem_error(e, "a file") or e  # an ordinary OS failure, named (exit 9), not a bug
        code = exit_code_for(e)
        if isinstance(e, PrefetchError) and e.shown:  # the command already printed it as its output
            raise SystemExit(int(code)) from None
        if code == ExitCode.INTERRUPTED:
            message = "interrupted; partial downloads are kept and the next run resumes them"
        elif isinstance(e, PrefetchError) or code != ExitCode.INTERNAL:
            message = str(e)
        else:
            message = f"internal error: {type(e).__name__}: {e}"
            if log.isEnabledFor(logging.DEBUG) or settings.show_traceback():
                message += "\n" + "".join(traceback.format_exception(e))
            else:
                message += " (run with -vv for the traceback; please report it)"
        if as_json:
            event: dict[str, Any] = {"event": "error", "exit_code": int(code), "message": message}
            report = getattr(e, "report", None)  # an access check failure carries its rows
            if report is not None:
                event["entries"] = [row.to_json() for row in report.results]
            click.echo(redact(json.dumps(event)))
        click.echo(shown(f"prefetch: error: {message}"), err=True)
        raise SystemExit(int(code)) from None
