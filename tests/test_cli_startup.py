"""The CLI loads only what the command it runs needs: `prefetch --version` and `prefetch env` (run in an
application container's start-up) never load the network stack; the group lists every command without
importing them, and imports a command's module only when that command runs.

Each check runs the real `python -m prefetch` in a fresh interpreter, under a small wrapper that records
every module of the network stack imported, and which prefetch module imported it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from prefetch.cli import COMMAND_MODULES, cli
from tests.conftest import PrefetchRunner
from tests.offline_helpers import make_model
from tests.test_interop import sync

# What only a command that talks to a server needs.
NETWORK_STACK = (
    "prefetch.net",
    "prefetch.download",
    "http.client",
    "ssl",
    "huggingface_hub.file_download",
    "httpx",
    "httpx2",
)
# Runs `prefetch ARGS...` as `python -m prefetch` would, with a finder that notes, for each module of the
# network stack the first time it is imported, the innermost prefetch module on the stack (its importer),
# then writes {module: importer} as JSON to REPORT.
WRAPPER = """
import json, runpy, sys, traceback
report_path, watched, args = sys.argv[1], tuple(json.loads(sys.argv[2])), sys.argv[3:]
inside = tuple(f"{m}." for m in watched)
imported = {}

def is_watched(name):
    return name in watched or name.startswith(inside)

def importer():
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\\\", "/")
        if "/prefetch/" in path and "/site-packages/" not in path:
            module = path[path.rindex("/prefetch/") + 1 : -len(".py")].replace("/", ".")
            return module.removesuffix(".__init__")
    return None

class Watcher:
    def find_spec(self, name, path=None, target=None):
        if is_watched(name) and name not in imported:
            imported[name] = importer()
        return None

sys.meta_path.insert(0, Watcher())
sys.argv = ["prefetch", *args]
try:
    runpy.run_module("prefetch", run_name="__main__", alter_sys=True)
finally:
    with open(report_path, "w") as report:
        json.dump({m: imported.get(m) for m in sys.modules if is_watched(m)}, report)
"""


def network_imports(prefetch: PrefetchRunner, *args: str) -> dict[str, str | None]:
    """`prefetch ARGS` in a fresh interpreter: every network-stack module it loaded, with its importer."""
    report = prefetch.tmp / "imports.json"
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(report), json.dumps(NETWORK_STACK), *args],
        cwd=prefetch.tmp,
        env=prefetch.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    loaded: dict[str, str | None] = json.loads(report.read_text())
    return loaded


def in_network_stack(module: str | None) -> bool:
    return module in NETWORK_STACK or (module or "").startswith(tuple(f"{m}." for m in NETWORK_STACK))


def synced_lock(prefetch: PrefetchRunner, hub: object) -> Path:
    make_model(hub)
    return sync(prefetch, [{"repo": "org/model"}])


def test_version_loads_no_network_stack(prefetch: PrefetchRunner) -> None:
    assert network_imports(prefetch, "--version") == {}


def test_env_loads_no_network_stack(prefetch: PrefetchRunner, hub: object) -> None:
    """`prefetch env` (an entrypoint's first line) loads nothing that talks to a server: not the CLI's
    network commands, not the engine (`progress` reports to it through a protocol), not huggingface_hub's
    HTTP client (a plain repo id needs no `validate_repo_id`: `hfhub.repo_id_problem`)."""
    assert network_imports(prefetch, "env", str(synced_lock(prefetch, hub))) == {}


def test_the_watcher_sees_a_command_that_loads_the_network_stack(prefetch: PrefetchRunner) -> None:
    """The control: `sync --help` loads `prefetch.sync`'s module, and with it the HTTP layer."""
    loaded = network_imports(prefetch, "sync", "--help")
    assert {"http.client", "ssl", "prefetch.net.session"} <= set(loaded), loaded
    assert any(not in_network_stack(who) for who in loaded.values()), loaded


def test_every_command_is_registered_under_its_module() -> None:
    """The group's table names each command's module; every command those modules define is in it."""
    ctx = click.Context(cli)
    listed = cli.list_commands(ctx)
    assert listed == sorted(name for names in COMMAND_MODULES.values() for name in names)
    for module_name, names in COMMAND_MODULES.items():
        module = sys.modules[cli.get_command(ctx, names[0]).callback.__module__]  # type: ignore[union-attr]
        assert module.__name__ == module_name
        defined = {v.name for v in vars(module).values() if isinstance(v, click.Command)}
        assert defined == set(names), f"{module_name} defines {defined}, the group names {names}"
    assert cli.get_command(ctx, "no-such-command") is None


def test_help_lists_every_command_with_its_one_line_help(prefetch: PrefetchRunner) -> None:
    result = prefetch("--help")
    assert result.code == 0, result
    commands = result.stdout.split("Commands:\n", 1)[1].splitlines()
    ctx = click.Context(cli)
    assert [line.split()[0] for line in commands] == cli.list_commands(ctx)
    for line in commands:
        name, short_help = line.split(maxsplit=1)
        command = cli.get_command(ctx, name)
        assert command is not None and command.help is not None
        assert " ".join(command.help.split()).startswith(short_help.removesuffix("...")), line
