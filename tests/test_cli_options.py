"""Issue 16: options a person already knows. `--json`, `-q`, `-v` after the command as well as before; each
command's help lists only its own options and ends with examples; `plan` lists files on stdout; progress
events under `--json` while bytes move. Everything through the real CLI against the test Hub."""

from __future__ import annotations

import itertools
import json
import re
import time

import pytest

from tests.conftest import PrefetchRunner
from tests.hubemu.hub import Fault, HubEmulator

COMMANDS = (
    *("sync", "plan", "check", "lock", "init", "add", "remove", "status", "path"),
    *("verify", "env", "sbom", "prune", "bundle", "unbundle"),
)
DOWNLOAD_ONLY = ("--segment-size", "--segment-threshold", "--jobs")


def make_model(hub: HubEmulator, repo: str = "org/model", big: int = 4096) -> str:
    return hub.create_repo(repo).commit(
        {"config.json": b'{"a": 1}', "tokenizer.json": b"{}", "model.safetensors": b"w" * big}
    )


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.soak
@pytest.mark.parametrize("position", ["before", "after"])
def test_output_options_work_before_and_after_the_command(
    prefetch: PrefetchRunner, hub: HubEmulator, position: str
) -> None:
    make_model(hub)
    prefetch.manifest([{"repo": "org/model"}])

    def run(command: str, *options: str) -> object:
        args = (
            (*options, command, "models.yaml") if position == "before" else (command, "models.yaml", *options)
        )
        return prefetch(*args)

    checked = run("check", "--json")
    assert checked.code == 0, checked
    assert json.loads(checked.stdout)["entries"][0]["repo"] == "org/model"

    quiet = run("sync", "-q")
    assert quiet.code == 0, quiet
    assert quiet.stdout == "" and quiet.stderr == ""

    verbose = run("sync", "-v")
    assert verbose.code == 0, verbose
    assert "synced 1 entry" in verbose.stdout

    events = json_lines(run("sync", "--json").stdout)
    assert [e["event"] for e in events][-1] == "summary"


def test_quiet_after_the_command_still_reports_errors(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    prefetch.manifest([{"repo": "org/absent"}])
    result = prefetch("sync", "models.yaml", "-q")
    assert result.code == 3, result
    assert result.stdout == "" and "org/absent" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_each_help_ends_with_examples_and_lists_only_its_options(
    prefetch: PrefetchRunner, command: str
) -> None:
    result = prefetch(command, "--help")
    assert result.code == 0, result
    text = result.stdout
    for option in ("--json", "--quiet", "--verbose"):
        assert option in text, f"{command} --help lacks {option}"
    examples = text.rstrip().split("Examples:\n", 1)
    assert len(examples) == 2, f"{command} --help has no examples"
    lines = examples[1].splitlines()
    assert 2 <= len(lines) <= 4, lines
    assert all(
        "prefetch " + command in line or f"prefetch {command}" in line.replace("$(", "") for line in lines
    )
    if command in ("check", "plan", "lock", "status", "init", "remove", "path"):
        for option in DOWNLOAD_ONLY:
            assert option not in text, f"{command} --help lists the download-only {option}"
    if command == "sync":
        assert all(option in text for option in DOWNLOAD_ONLY)


def test_plan_prints_every_file_with_size_and_cache_state(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_model(hub, big=3 * 1024 * 1024)
    prefetch.manifest([{"repo": "org/model", "include": ["*.json"]}])
    assert prefetch("sync", "models.yaml", "-q").code == 0
    prefetch.manifest([{"repo": "org/model"}])
    for args in (("plan", "models.yaml"), ("sync", "models.yaml", "--dry-run")):
        result = prefetch(*args)
        assert result.code == 0, result
        lines = result.stdout.splitlines()
        assert re.search(r"3 files .*2 cached, 1 to fetch \(3\.0 MiB\)", lines[0]), lines
        assert re.fullmatch(r"\s+cached\s+8 B\s+config\.json", lines[1]), lines
        assert re.fullmatch(r"\s+fetch\s+3\.0 MiB\s+model\.safetensors", lines[2]), lines
        assert re.fullmatch(r"\s+cached\s+2 B\s+tokenizer\.json", lines[3]), lines
    plan = json_lines(prefetch("plan", "models.yaml", "--json").stdout)
    (entry,) = next(e for e in plan if e["event"] == "plan")["entries"]  # type: ignore[misc]
    assert entry["file_list"] == [
        {"path": "config.json", "size": 8, "cached": True},
        {"path": "model.safetensors", "size": 3 * 1024 * 1024, "cached": False},
        {"path": "tokenizer.json", "size": 2, "cached": True},
    ]
    assert hub.count(kind="file") == 2  # only the first sync's two json files were ever downloaded


@pytest.mark.soak
def test_json_emits_a_progress_event_every_second_while_bytes_move(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """A 3 MiB file at 600 KiB/s takes ~5 s: without `progress` events a tool would see nothing for 5 s."""
    make_model(hub, big=3 * 1024 * 1024)
    hub.inject(Fault("slow", times=None, origin="cdn", bytes_per_sec=600 * 1024))
    prefetch.manifest([{"repo": "org/model"}])
    proc = prefetch.popen("sync", "models.yaml", "--json", "--jobs", "1")
    arrivals: list[tuple[float, dict[str, object]]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        arrivals.append((time.monotonic(), json.loads(line)))
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    kinds = [event["event"] for _, event in arrivals]
    assert kinds.count("progress") >= 3, kinds
    moving = [t for t, event in arrivals if event["event"] in ("plan", "progress", "file")]
    gaps = [b - a for a, b in itertools.pairwise(moving)]
    assert max(gaps) < 1.8, gaps  # 1 s interval, plus scheduling slack on a loaded machine
    progress = [event for _, event in arrivals if event["event"] == "progress"]
    done = [p["done_bytes"] for p in progress]
    assert done == sorted(done) and done[-1] > 0
    assert progress[0]["total_bytes"] == 3 * 1024 * 1024 + 10


@pytest.mark.soak
def test_bar_and_lines_say_mib_for_binary_units(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_model(hub, big=2 * 1024 * 1024)
    hub.inject(Fault("slow", times=None, origin="cdn", bytes_per_sec=1024 * 1024))
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("sync", "models.yaml", env={"PREFETCH_PROGRESS_INTERVAL": "0.3"})
    assert result.code == 0, result
    assert re.search(r"\d MiB/s|\d KiB/s", result.stderr), result.stderr
    assert not re.search(r"\dMB/s|\d MB/s", result.stderr)
