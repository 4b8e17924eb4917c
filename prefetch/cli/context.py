"""One invocation's output: the mode the output options chose, and the run's cancel token and secrets.

The group's callback makes it; every command reaches it with `@pass_ctx` and prints only through it, so
every line it prints is redacted with the run's `Secrets`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from prefetch.auth import Secrets
from prefetch.cancel import CancelToken
from prefetch.progress import Progress, make_progress, setup_logging, shown, terminal_lines


class Context:
    """What one command prints through, in the mode its output options chose."""

    def __init__(
        self, verbose: int, quiet: bool, as_json: bool, cancel: CancelToken, secrets: Secrets
    ) -> None:
        self.verbose, self.quiet, self.as_json = verbose, quiet, as_json
        self.cancel = cancel  # the command's run: Ctrl-C / SIGTERM cancel it
        self.secrets = secrets  # the run's: every output of the command is redacted with them
        setup_logging(self.verbosity, secrets, as_json=as_json)

    @property
    def verbosity(self) -> int:
        return -1 if self.quiet else self.verbose

    def merge(self, name: str, value: Any) -> None:
        """An output option given after the command name adds to the one given before it."""
        if name == "verbose":
            self.verbose += value
        else:
            setattr(self, name, getattr(self, name) or value)
        setup_logging(self.verbosity, self.secrets, as_json=self.as_json)

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
