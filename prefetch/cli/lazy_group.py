"""A click group that imports a command's module only when that command runs.

click's "lazy loading subcommands" pattern: the group knows each command's name and the module that
defines it (as an attribute of the same name), lists them all without importing anything, and imports a
module when `get_command` is asked for one of its commands. So `prefetch env` loads the offline commands'
module and not `prefetch sync`'s library (the network stack); `prefetch --help` imports every module,
for the commands' one-line help.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import click


class LazyGroup(click.Group):
    """A `click.Group` whose commands are named in `command_modules` (module -> its command names)."""

    def __init__(self, *args: Any, command_modules: Mapping[str, Sequence[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_modules = {name: module for module, names in command_modules.items() for name in names}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.command_modules)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.command_modules.get(cmd_name)
        if module is None:
            return None  # click reports "No such command"
        command = getattr(importlib.import_module(module), cmd_name)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            raise TypeError(f"{module}.{cmd_name} is not the click command {cmd_name!r}")
        return command
