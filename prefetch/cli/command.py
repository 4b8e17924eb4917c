"""How a `prefetch` subcommand is declared: `@command(examples...)`.

It gives the command the output options `--json`, `-q`, `-v` (which the group takes too, so they are
accepted before or after the command name) and ends its help with the examples. This module needs only
click: the group imports it for its own output options without loading any display or library code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from prefetch.cli.context import Context

F = Callable[..., Any]
OUTPUT_OPTIONS = ("as_json", "quiet", "verbose")


def option_group(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Several options as one decorator, in the order given (help lists them in that order)."""

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


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


def _merge_output_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value and param.name:
        invocation: Context = ctx.obj  # made by the group's callback, which runs before any command's
        invocation.merge(param.name, value)


def command(*examples: str) -> Callable[[F], click.Command]:
    """A `prefetch` subcommand: it takes the output options too, and its help ends with `examples`."""
    epilog = "\b\nExamples:\n" + "\n".join(f"  {example}" for example in examples)
    merged_output_options = output_options(expose_value=False, callback=_merge_output_option)

    def decorate(f: F) -> click.Command:
        cmd = click.command(epilog=epilog)(merged_output_options(f))
        # The output options are listed last in the help, after the command's own.
        cmd.params = [p for p in cmd.params if p.name not in OUTPUT_OPTIONS] + [
            p for p in cmd.params if p.name in OUTPUT_OPTIONS
        ]
        return cmd

    return decorate
