"""The `prefetch` command: a click group of thin commands over `prefetch.sync`, `prefetch.manifest_edit`,
`prefetch.offline` and `prefetch.oci`, and `main()`, the one place errors become exit codes (via
`errors.exit_code_for`).

Every command is one library call. The commands live in one module per command group, and the group
imports a command's module only when that command runs (`LazyGroup`), so a command loads only the
library it calls: `prefetch env` and `prefetch --version` never load the network stack.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import traceback
from typing import Any

import click

from prefetch import __version__, settings
from prefetch.auth import Secrets
from prefetch.cancel import CancelToken
from prefetch.cli.command import output_options
from prefetch.cli.lazy_group import LazyGroup
from prefetch.errors import ExitCode, PrefetchError, exit_code_for, filesystem_error

log = logging.getLogger("prefetch")

COMMAND_MODULES = {
    "prefetch.cli.hub_commands": ("sync", "plan", "check", "lock"),
    "prefetch.cli.edit_commands": ("init", "add", "remove"),
    "prefetch.cli.cache_commands": ("status", "path", "verify", "env", "sbom", "prune", "bundle", "unbundle"),
    "prefetch.cli.oci_commands": ("push",),
}


@click.group(
    cls=LazyGroup, command_modules=COMMAND_MODULES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, "--version", "-V", prog_name="prefetch")
@output_options()
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, as_json: bool) -> None:
    """Prefetch Hugging Face Hub repos listed in a YAML manifest into the HF cache, verified and locked."""
    from prefetch.cli.context import Context  # the display (prefetch.progress): `--version` never loads it

    cancel, secrets = ctx.obj or (CancelToken(), Secrets())  # main() passes the run's
    ctx.obj = Context(verbose, quiet, as_json, cancel, secrets)


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
        if as_json:  # stdout is the JSON events, stderr stays quiet: the error is an event too
            click.echo(secrets.redact(json.dumps(_error_event(ExitCode.USAGE, e.format_message()))))
        else:
            e.show()
        raise SystemExit(ExitCode.USAGE) from None
    except SystemExit:
        raise
    except BaseException as e:  # the one place errors become exit codes
        from prefetch.progress import shown  # what the error path alone needs of the display

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
        if as_json:  # stdout is the JSON events, stderr stays quiet: the error is the last event
            event = _error_event(code, message)
            rows = getattr(e, "rows", None)  # an access check failure carries its rows
            if rows is not None:
                event["entries"] = rows
            click.echo(secrets.redact(json.dumps(event)))
        else:
            click.echo(shown(f"prefetch: error: {message}", secrets), err=True)
        raise SystemExit(int(code)) from None


def _error_event(code: int, message: str) -> dict[str, Any]:
    return {"event": "error", "exit_code": int(code), "message": message}
