"""The `prefetch` command: thin click wrappers over `prefetch.sync`, `prefetch.manifest_edit` and
`prefetch.offline`.

Every command is one library call; this module only parses flags, picks the display, and maps
errors to exit codes (through `errors.exit_code_for`, the single mapping).

Option structure: each command is declared with `@command(examples...)` (which adds the output options
`--json`, `-q`, `-v`, accepted before or after the command name, and the help's examples), then one
decorator line per option or option group (`hub_options`, `transfer_options`, `lock_mode_options`...).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from prefetch import __version__, settings
from prefetch import sync as sync_mod
from prefetch.auth import Secrets
from prefetch.cancel import CancelToken
from prefetch.errors import ExitCode, PrefetchError, exit_code_for, filesystem_error
from prefetch.files import atomic_write
from prefetch.hfhub import REPO_TYPES
from prefetch.offline import bundle as bundle_mod
from prefetch.offline import prune as prune_mod
from prefetch.offline import runtime_env
from prefetch.offline import sbom as sbom_mod
from prefetch.offline import status as status_mod
from prefetch.offline import unbundle as unbundle_mod
from prefetch.offline import verify as verify_mod
from prefetch.progress import (
    Progress,
    QuietProgress,
    human_bytes,
    make_progress,
    parse_size,
    setup_logging,
    shown,
    terminal_lines,
)
from prefetch.run import Settings
from prefetch.sync import SyncResult

log = logging.getLogger("prefetch")
DEFAULTS = Settings()
MiB = 1024 * 1024
F = Callable[..., Any]

manifest_arg = click.argument(
    "manifest", type=click.Path(path_type=Path), default="models.yaml", required=False
)
lock_arg = click.argument("lockfile", type=click.Path(path_type=Path), default="models.lock", required=False)
repo_arg = click.argument("repo", metavar="REPO[@REVISION]")
cache_opt = click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="HF cache (default: HF_HUB_CACHE...)."
)
lock_opt = click.option(
    "--lock", "lock_path", type=click.Path(path_type=Path), help="Lockfile (default: MANIFEST.lock)."
)
manifest_opt = click.option(
    "--manifest",
    "-m",
    type=click.Path(path_type=Path),
    default="models.yaml",
    show_default=True,
    help="The manifest to edit.",
)
type_opt = click.option(
    "--type", "repo_type", type=click.Choice(REPO_TYPES), default="model", show_default=True
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


def option_group(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Several options as one decorator, in the order given (help lists them in that order)."""

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


# Flags of the commands that talk to the Hub (sync, plan, lock, check, add).
hub_options = option_group(
    cache_opt,
    click.option("--endpoint", help="Hub URL (default: manifest, HF_ENDPOINT, https://huggingface.co)."),
    click.option("--token-file", type=click.Path(path_type=Path), help="Read the token from this file."),
    click.option("--proxy", "proxies", multiple=True, help="HTTP(S) proxy URL; repeat for failover order."),
    click.option(
        "--retries", type=click.IntRange(1, 100), help="Attempts per request (manifest retry.attempts)."
    ),
    click.option("--max-wait", type=click.FloatRange(0, 3600), help="Longest backoff wait, seconds."),
)
# Flags of the commands that move bytes (sync only).
transfer_options = option_group(
    click.option(
        "--jobs",
        "-j",
        type=click.IntRange(1, 256),
        default=DEFAULTS.jobs,
        show_default=True,
        help="Most connections at once; per host, prefetch uses fewer where more do not raise the rate.",
    ),
    click.option(
        "--segment-size",
        type=click.IntRange(1, 4096),
        default=DEFAULTS.segment_size // MiB,
        show_default=True,
        help="Big files are fetched as parallel Range segments of this many MiB.",
    ),
    click.option(
        "--segment-threshold",
        type=click.IntRange(1, 1 << 20),
        default=DEFAULTS.segment_threshold // MiB,
        show_default=True,
        help="Files of at least this many MiB are split into segments.",
    ),
    click.option(
        "--min-free",
        type=SizeType(),
        help="Space to keep free after the download, e.g. 10G (default: 1 MiB + 1/16 of it, at most 64 MiB).",
    ),
)
# uv's and Cargo's lock modes.
lock_mode_options = option_group(
    click.option(
        "--locked",
        is_flag=True,
        help="Fail (exit 6) if the lockfile is missing or out of date with the manifest; else use it.",
    ),
    click.option(
        "--frozen",
        is_flag=True,
        help="Use the lockfile as it is, without checking it against the manifest's entries (exit 6 if missing).",
    ),
)
upgrade_options = option_group(
    click.option("--upgrade", is_flag=True, help="Re-resolve every entry instead of keeping locked commits."),
    click.option(
        "--upgrade-repo", "upgrade_repos", multiple=True, help="Re-resolve this repo only (repeatable)."
    ),
)
pattern_options = option_group(
    click.option(
        "--include", multiple=True, help="Glob of files to fetch (repeatable; default: every file)."
    ),
    click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable)."),
)


def settings_from(kw: dict[str, Any], offline_flag: bool = False) -> Settings:
    return Settings(
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
    def __init__(
        self, verbose: int, quiet: bool, as_json: bool, cancel: CancelToken, secrets: Secrets
    ) -> None:
        self.verbose, self.quiet, self.as_json = verbose, quiet, as_json
        self.cancel = cancel  # the command's run: Ctrl-C / SIGTERM cancel it
        self.secrets = secrets  # the run's: every output of the command is redacted with them
        setup_logging(self.verbosity, secrets)

    @property
    def verbosity(self) -> int:
        return -1 if self.quiet else self.verbose

    def merge(self, name: str, value: Any) -> None:
        """An output option given after the command name adds to the one given before it."""
        if name == "verbose":
            self.verbose += value
        else:
            setattr(self, name, getattr(self, name) or value)
        setup_logging(self.verbosity, self.secrets)

    def progress(self) -> Progress:
        return make_progress("json" if self.as_json else "quiet" if self.quiet else "auto", self.secrets)

    def say(self, text: str) -> None:
        if not self.quiet and not self.as_json:
            click.echo(terminal_lines(shown(text, self.secrets), sys.stdout))

    def emit(self, data: dict[str, Any]) -> None:
        click.echo(self.secrets.redact(json.dumps(data, sort_keys=True, indent=None)))

    def show(self, report: Any) -> None:
        """A command's report: its JSON form under --json, else its text."""
        if self.as_json:
            self.emit(report.to_json())
        else:
            self.say(report.render())


pass_ctx = click.make_pass_decorator(Context)


def _merge_output_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value and param.name:
        ctx.find_object(Context).merge(param.name, value)  # type: ignore[union-attr]


def output_options(**extra: Any) -> Callable[[F], F]:
    """`--json`, `-q/--quiet`, `-v/--verbose`: on the group (before the command name) and, merged into
    the group's choice by `_merge_output_option`, on every command (after it)."""
    return option_group(
        click.option(
            "--json", "as_json", is_flag=True, help="Machine-readable output (JSON lines on stdout).", **extra
        ),
        click.option("--quiet", "-q", is_flag=True, help="Only errors.", **extra),
        click.option("--verbose", "-v", count=True, help="More log output (-vv: debug).", **extra),
    )


def command(*examples: str, name: str | None = None) -> Callable[[F], click.Command]:
    """A `prefetch` subcommand: it takes the output options too, and its help ends with `examples`."""
    epilog = "\b\nExamples:\n" + "\n".join(f"  {example}" for example in examples)
    merged_output_options = output_options(expose_value=False, callback=_merge_output_option)

    def decorate(f: F) -> click.Command:
        cmd = cli.command(name=name, epilog=epilog)(merged_output_options(f))
        shared = {"as_json", "quiet", "verbose"}  # listed last in the help, after the command's own
        cmd.params = [p for p in cmd.params if p.name not in shared] + [
            p for p in cmd.params if p.name in shared
        ]
        return cmd

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="prefetch")
@output_options()
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, as_json: bool) -> None:
    """Prefetch Hugging Face Hub repos listed in a YAML manifest into the HF cache, verified and locked."""
    cancel, secrets = ctx.obj or (CancelToken(), Secrets())  # main() passes the run's
    ctx.obj = Context(verbose, quiet, as_json, cancel, secrets)


def _edit() -> ModuleType:
    """`prefetch.manifest_edit`, loaded only by the commands that use it: its ruamel.yaml import costs
    ~0.1 s, which every `sync` would pay (a warm no-op takes ~0.3 s)."""
    from prefetch import manifest_edit

    return manifest_edit


def _stdout_columns() -> int | None:
    """The width to fit plan lines into when stdout is a terminal (None: a pipe, print whole lines)."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


@command(
    "prefetch sync                     # models.yaml -> cache + models.lock",
    "prefetch sync manifests/quickstart.yaml --json",
    "prefetch sync --locked            # CI: exit 6 if models.lock is stale",
    "prefetch sync --frozen --offline  # air gap: the lock as it is",
)
@manifest_arg
@lock_opt
@hub_options
@transfer_options
@lock_mode_options
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
        c.say(
            f"synced {summary['entries']} entries ({summary['files']} files; fetched {summary['fetched_files']} "
            f"files, {human_bytes(summary['fetched_bytes'])}) into {summary['cache_dir']}; "
            f"lockfile {summary['lockfile']}"
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
    name="lock",
)
@manifest_arg
@lock_opt
@hub_options
@upgrade_options
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


@command(
    "prefetch init                     # writes models.yaml",
    "prefetch init serving.yaml",
)
@click.argument("manifest", type=click.Path(path_type=Path), default="models.yaml", required=False)
@pass_ctx
def init(c: Context, manifest: Path) -> None:
    """Write a commented starter manifest (never overwrites a file)."""
    _edit().init_manifest(manifest)
    if c.as_json:
        c.emit({"manifest": str(manifest)})
    c.say(f"wrote {manifest}; add repos with `prefetch add ORG/NAME`, then run `prefetch sync {manifest}`")


@command(
    "prefetch add sentence-transformers/all-MiniLM-L6-v2",
    "prefetch add org/model@v1.0 --include '*.safetensors' --include '*.json'",
    "prefetch add org/data --type dataset --token-env ORG_TOKEN",
    "prefetch add org/private-model --no-check # offline: no lock update",
)
@repo_arg
@manifest_opt
@type_opt
@pattern_options
@click.option("--gated", is_flag=True, help="The repo is gated (fail early when no token is available).")
@click.option("--token-env", help="Name of the environment variable holding this entry's token.")
@click.option("--no-check", is_flag=True, help="Do not contact the Hub: no validation, no lock update.")
@lock_opt
@hub_options
@pass_ctx
def add(
    c: Context,
    repo: str,
    manifest: Path,
    repo_type: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    gated: bool,
    token_env: str | None,
    no_check: bool,
    **kw: Any,
) -> None:
    """Add an entry to the manifest (comments and layout kept), check it against the Hub, update the lock."""
    request = _edit().EntryRequest.parse(
        repo, repo_type, include=include or None, exclude=exclude, gated=gated or None, token_env=token_env
    )
    result = _edit().add_entry(
        manifest, request, settings=None if no_check else settings_from(kw), cancel=c.cancel
    )
    c.show(result)


@command(
    "prefetch remove org/model",
    "prefetch remove org/model@v1.0 -m serving.yaml",
    "prefetch remove org/data --type dataset",
)
@repo_arg
@manifest_opt
@type_opt
@lock_opt
@pass_ctx
def remove(c: Context, repo: str, manifest: Path, repo_type: str, lock_path: Path | None) -> None:
    """Remove an entry from the manifest (comments and layout kept) and from the lockfile, offline."""
    request = _edit().EntryRequest.parse(repo, repo_type)
    result = _edit().remove_entry(manifest, request, lock_path=lock_path)
    c.show(result)


@command(
    "prefetch status                   # one row per entry",
    "prefetch status models.yaml --json",
    "prefetch status || prefetch sync  # CI gate: exit 6 stale, 7 not cached",
)
@manifest_arg
@lock_opt
@cache_opt
@pass_ctx
def status(c: Context, manifest: Path, lock_path: Path | None, cache_dir: Path | None) -> None:
    """Offline: per entry, the requested revision, the locked commit, and what the cache holds."""
    report = status_mod.status(manifest, lock_path=lock_path, cache_dir=cache_dir)
    c.show(report)
    if not report.ok:
        raise report.error()


@command(
    "prefetch path org/model           # its snapshot folder",
    "prefetch path org/data@main --type dataset --lock models.lock",
    "prefetch path org/data --type dataset --json",
)
@repo_arg
@type_opt
@click.option(
    "--lock",
    "lock_path",
    type=click.Path(path_type=Path),
    default="models.lock",
    show_default=True,
    help="The lockfile that names the entry.",
)
@cache_opt
@pass_ctx
def path(c: Context, repo: str, repo_type: str, lock_path: Path, cache_dir: Path | None) -> None:
    """Offline: print the snapshot folder of a locked entry, for tools that take a folder."""
    request = _edit().EntryRequest.parse(repo, repo_type)
    folder = status_mod.snapshot_path(
        lock_path, request.repo, request.type, request.revision, cache_dir=cache_dir
    )
    if c.as_json:
        c.emit({"repo": request.repo, "type": request.type, "path": str(folder)})
    else:
        click.echo(str(folder))


@command(
    "prefetch verify                   # models.lock against the cache",
    "prefetch verify models.lock --fast # sizes only",
    "prefetch verify --cache-dir /models/hub --json",
)
@lock_arg
@cache_opt
@click.option("--fast", is_flag=True, help="Check sizes only, not hashes.")
@click.option(
    "--jobs", "-j", type=click.IntRange(1, 256), help="Files hashed in parallel (default: CPU count)."
)
@click.option(
    "--repair",
    is_flag=True,
    help="Fetch again from the Hub what is missing or corrupt (needs the network and the manifest), then verify.",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="With --repair: the manifest whose settings fetch (default: LOCKFILE with .yaml).",
)
@pass_ctx
def verify(
    c: Context,
    lockfile: Path,
    cache_dir: Path | None,
    fast: bool,
    jobs: int | None,
    repair: bool,
    manifest: Path | None,
) -> None:
    """Check, offline, that every locked file is in the cache intact (exit 7 if not)."""
    if repair:
        progress = c.progress()
        try:
            from prefetch import repair as repair_mod

            report = repair_mod.repair(
                lockfile, manifest_path=manifest, cache_dir=cache_dir, progress=progress, cancel=c.cancel
            )
        finally:
            progress.close()
    else:
        report = verify_mod.verify(lockfile, cache_dir=cache_dir, fast=fast, jobs=jobs)
    c.show(report)


@command(
    "prefetch env                      # export HF_HUB_CACHE=... lines",
    'eval "$(prefetch env models.lock)" && python serve.py',
)
@lock_arg
@cache_opt
def env(lockfile: Path, cache_dir: Path | None) -> None:
    """Print the `export` lines a runtime container needs (HF_HUB_CACHE, HF_HUB_OFFLINE=1)."""
    for line in runtime_env.env_exports(lockfile, cache_dir=cache_dir):
        click.echo(line)


@command(
    "prefetch sbom > sbom.json",
    "prefetch sbom models.lock -o sbom.json",
)
@lock_arg
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here instead of stdout.")
def sbom(lockfile: Path, output: Path | None) -> None:
    """A CycloneDX JSON SBOM of the locked repos and files."""
    text = json.dumps(sbom_mod.sbom(lockfile), indent=2, sort_keys=True) + "\n"
    if output:
        atomic_write(output, text.encode())
    else:
        click.echo(text, nl=False)


@command(
    "prefetch prune --lock models.lock --dry-run",
    "prefetch prune --lock serving.lock --lock batch.lock",
)
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


@command(
    "prefetch bundle models.lock -o models.tar",
    "prefetch bundle -o models.tar --cache-dir /models/hub",
)
@lock_arg
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Tar file to write.")
@cache_opt
@pass_ctx
def bundle(c: Context, lockfile: Path, output: Path, cache_dir: Path | None) -> None:
    """Pack exactly the locked subset of the cache into a tar, for an air gap."""
    report = bundle_mod.bundle(lockfile, output, cache_dir=cache_dir)
    c.show(report)


@command(
    "prefetch unbundle models.tar --lock-out models.lock",
    "prefetch unbundle models.tar --cache-dir /models/hub --json",
)
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
    secrets = Secrets()  # the values its outputs must never show
    signal.signal(signal.SIGTERM, functools.partial(_on_signal, cancel))
    signal.signal(signal.SIGINT, functools.partial(_on_signal, cancel))
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="prefetch", standalone_mode=False, obj=(cancel, secrets))
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
            rows = getattr(e, "rows", None)  # an access check failure carries its rows
            if rows is not None:
                event["entries"] = rows
            click.echo(secrets.redact(json.dumps(event)))
        click.echo(shown(f"prefetch: error: {message}", secrets), err=True)
        raise SystemExit(int(code)) from None
