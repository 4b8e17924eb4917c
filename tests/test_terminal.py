"""A terminal session recorded with tmux (issue 16): the bar and the plan on 80- and 60-column terminals.

tmux runs the real CLI in a real pseudo-terminal of a fixed size; `capture-pane -J` joins wrapped lines
back together, so a line longer than the terminal (which would wrap into garbage) shows up as one long
line. The bar must redraw in place: while bytes move, the screen holds one bar line, not a stack of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefetch.progress import human_bytes
from tests.conftest import PrefetchRunner
from tests.hubemu.hub import Fault, HubEmulator

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"
)
MiB = 1024 * 1024
LONG_PATH = "weights/a-rather-long-folder-name-for-a-checkpoint/model-00001-of-00002.safetensors"


class Tmux:
    """One tmux server of its own (a private socket), one window of a fixed size."""

    def __init__(self, width: int, height: int = 30) -> None:
        self.socket = f"prefetch-test-{uuid.uuid4().hex[:12]}"
        self.width, self.height = width, height

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True, check=True
        ).stdout

    def start(self, script: Path) -> None:
        """A shell in a window of the given size; once tmux has sized it (it may do so after the shell
        started), type the command that runs `script`."""
        self.tmux(
            "new-session", "-d", "-x", str(self.width), "-y", str(self.height), "bash --norc --noprofile"
        )
        self.tmux("set-option", "-g", "window-size", "manual")
        self.tmux("resize-window", "-t", "0", "-x", str(self.width), "-y", str(self.height))
        deadline = time.monotonic() + 10
        while self.tmux("display-message", "-p", "-t", "0", "#{pane_width}").strip() != str(self.width):
            assert time.monotonic() < deadline, "tmux never gave the window its size"
            time.sleep(0.05)
        self.tmux("send-keys", "-t", "0", f"clear; bash --norc {shlex.quote(str(script))}", "Enter")

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-J", "-t", "0").rstrip("\n").splitlines()

    def wait_for(self, text: str, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.screen()
            if any(text in line for line in lines):
                return lines
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared on the terminal:\n" + "\n".join(self.screen()))

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminals() -> Iterator[list[Tmux]]:
    made: list[Tmux] = []
    yield made
    for terminal in made:
        terminal.kill()


def session_script(prefetch: PrefetchRunner, width: int, *commands: str) -> Path:
    """A script that sets the test environment (tmux starts a clean one) and runs `commands`."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in prefetch.env.items() if k.isidentifier())
    exports += "export TERM=xterm-256color\nunset HF_HUB_DISABLE_PROGRESS_BARS COLUMNS LINES\n"
    body = "".join(f"{command}\n" for command in commands)
    path = prefetch.tmp / f"session-{width}.sh"
    path.write_text(f"cd {shlex.quote(str(prefetch.tmp))}\n{exports}{body}echo SESSION-DONE\n")
    return path


@pytest.mark.soak
@pytest.mark.parametrize("width", [80, 60])
def test_bar_and_plan_fit_the_terminal(
    prefetch: PrefetchRunner, hub: HubEmulator, terminals: list[Tmux], width: int
) -> None:
    repo = hub.create_repo("some-organisation/a-model-with-a-long-name")
    repo.commit({"config.json": b"{}", LONG_PATH: os.urandom(3 * MiB), "tokenizer.json": b"{}"})
    hub.inject(Fault("slow", times=None, origin="cdn", bytes_per_sec=MiB))
    prefetch.manifest([{"repo": "some-organisation/a-model-with-a-long-name"}])
    prefetch_cmd = f"{shlex.quote(prefetch.command()[0])} -m prefetch"
    script = session_script(
        prefetch, width, f"{prefetch_cmd} plan", f"{prefetch_cmd} sync --jobs 1", f"{prefetch_cmd} plan"
    )
    terminal = Tmux(width)
    terminals.append(terminal)
    terminal.start(script)

    during = terminal.wait_for("iB/s")  # the bar, while bytes move (KiB/s or MiB/s)
    bars = [line for line in during if "%|" in line]
    assert len(bars) == 1, "\n".join(during)  # redrawn in place, not stacked
    final = terminal.wait_for("SESSION-DONE")
    record = "\n".join(final)
    # Lines are fitted (plan) or wrapped at spaces (messages); only a single word longer than the terminal
    # (the cache's path in the summary) is left for the terminal to wrap: nothing redraws over it.
    too_long = [line for line in final if len(line) > width and " " in line.strip()[width:]]
    assert not too_long, f"lines wider than {width} columns:\n{record}"
    assert sum("%|" in line for line in final) == 1, record  # the finished bar, once
    assert any("100%|" in line for line in final), record
    fetch_lines = [line for line in final if line.lstrip().startswith("fetch ")]
    cached_lines = [line for line in final if line.lstrip().startswith("cached ")]
    assert len(fetch_lines) == 3 and len(cached_lines) == 3, record  # the plan before and after
    long_file = next(line for line in fetch_lines if "3.0 MiB" in line)
    assert long_file.endswith("model-00001-of-00002.safetensors") or "…" in long_file, record
    assert any("synced 1 entry" in line for line in final), record
    assert "\x1b" not in record and "\r" not in record
    assert not re.search(r"\d ?[kKMG]B/s", record), record  # tqdm's own units said MB/s for MiB/s


BAR = re.compile(r"(\d+)%\|.*\| [\d.]+ \w?i?B/[\d.]+ \w?i?B")
SPEED = re.compile(r"([\d.]+) (B|KiB|MiB|GiB)/s")
FILES = re.compile(r"files (\d+)/(\d+)")


@pytest.mark.soak
@pytest.mark.parametrize("width", [80, 60])
def test_a_resumed_sync_says_what_is_on_disk_and_its_bar_keeps_the_estimate(
    prefetch: PrefetchRunner, hub: HubEmulator, terminals: list[Tmux], width: int
) -> None:
    """A sync cut off halfway, then run again on a terminal: the plan says how much is already on disk;
    the bar's rate counts only what is fetched (a resumed file's bytes used to make it jump to hundreds
    of MiB/s) and keeps its estimate at 60 columns; the small files are fetched alongside the big one,
    not after it (`files 0/31` until the end)."""
    repo = hub.create_repo("org/model")
    files = {f"configs/{i:02d}.json": b'{"i": %d}' % i for i in range(30)}
    repo.commit({**files, "model.safetensors": os.urandom(6 * MiB)})
    prefetch.manifest([{"repo": "org/model"}])
    hub.inject(Fault("slow", times=None, origin="cdn", bytes_per_sec=MiB))
    blobs = prefetch.cache_dir / "models--org--model" / "blobs"
    first = prefetch.popen("sync", "models.yaml")
    on_disk = 0
    deadline = time.monotonic() + 30
    while on_disk < 3 * MiB and time.monotonic() < deadline:  # Ctrl-C once 3 MiB are on disk
        time.sleep(0.1)
        with contextlib.suppress(OSError, ValueError, StopIteration):
            state = json.loads(next(blobs.glob("*.prefetch-partial.json")).read_text())
            on_disk = sum(b - a for a, b in state["done"])
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=30) == 130
    state = json.loads(next(blobs.glob("*.prefetch-partial.json")).read_text())
    on_disk = sum(b - a for a, b in state["done"])
    assert on_disk >= 3 * MiB
    for blob in blobs.iterdir():
        if ".prefetch-partial" not in blob.name:
            blob.unlink()  # the small files are fetched again, beside the big one
    prefetch_cmd = f"{shlex.quote(prefetch.command()[0])} -m prefetch"
    terminal = Tmux(width)
    terminals.append(terminal)
    terminal.start(session_script(prefetch, width, f"{prefetch_cmd} sync"))

    screens: list[list[str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        screen = terminal.screen()
        screens.append(screen)
        if any("SESSION-DONE" in line for line in screen):
            break
        time.sleep(0.1)
    record = "\n".join(screens[-1])
    plan = " ".join(record.split())  # (the line is wrapped at spaces)
    assert f"to fetch (6.0 MiB, {human_bytes(on_disk)} of it already on disk)" in plan, record
    during = []  # (percent, files done, speed in MiB/s, the bar's line) while bytes move
    for screen in screens:
        text = "\n".join(screen)
        bar = next((line for line in screen if BAR.search(line)), None)
        files_done = FILES.search(text)
        speed = SPEED.search(bar or "")
        if bar is None or files_done is None or speed is None or "100%|" in bar:
            continue
        value = float(speed.group(1)) / {"B": MiB, "KiB": 1024, "MiB": 1, "GiB": 1 / 1024}[speed.group(2)]
        during.append((int(BAR.search(bar).group(1)), int(files_done.group(1)), value, bar))  # type: ignore[union-attr]
    assert during, record
    estimates = [re.search(r"(?:ETA |<)(\d+m?\d*s|\?)", bar) for *_, bar in during]
    assert all(estimates), during  # the estimate, at any width
    assert any(e.group(1) != "?" for e in estimates if e), during
    assert max(speed for _, _, speed, _ in during) < 8, during  # ~1 MiB/s: not the resumed 3 MiB at once
    assert any(percent < 90 and done >= 30 for percent, done, _, _ in during), during
    assert any("synced 1 entry " in line for line in screens[-1]), record
