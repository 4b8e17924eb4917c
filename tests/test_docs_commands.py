"""Every `sh` block of README.md and docs/*.md runs, as written, so the docs cannot drift (issue 16).

Each block runs with `bash -e` in a fresh folder holding a copy of `manifests/`, against the test Hub
(HF_ENDPOINT; the demo repos and the repos the docs name, see tests/hubemu/demo.py), with `prefetch` and
`python` on PATH. `pip install ...` is satisfied by the test environment (a stub on PATH says so).
Machine paths the docs use for illustration (`/data/hf/hub`, `/tmp/demo-cache`) and the demo Hub's port
are mapped into the test's folder / a free port.

An HTML comment on the line before a block's fence configures it:
- `<!-- docs-test: skip REASON -->`: not run here (docker, sudo...); the skip and its reason are listed
  in the test report (`-ra`);
- `<!-- docs-test: synced -->`: the folder starts with `models.yaml` (manifests/quickstart.yaml) already
  synced, so `models.lock` and the cache exist (and `../other-service/models.lock`, a second lockfile).
Lines starting with `$ ` make a block a transcript: only those lines run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, PrefetchRunner
from tests.gitignore_check import files_under, not_ignored
from tests.hubemu.demo import populate_demo
from tests.hubemu.hub import HubEmulator

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- docs-test: (skip|synced)\s*(.*?)\s*-->")
FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    text: str
    mode: str  # "run" | "skip" | "synced"
    reason: str

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def script(self) -> str:
        lines = self.text.splitlines()
        if any(line.startswith("$ ") for line in lines):
            return "\n".join(line[2:] for line in lines if line.startswith("$ "))
        return self.text


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            previous = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.fullmatch(previous.strip())
            mode, reason = (marker.group(1), marker.group(2)) if marker else ("run", "")
            found.append(Block(doc, line, match.group(1), mode, reason))
    return found


BLOCKS = blocks()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool_folder(tmp: Path) -> Path:
    """`prefetch`, `python` (this interpreter) and a `pip` that installs nothing, first on PATH."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    scripts = {
        "prefetch": f'#!/bin/sh\nexec "{sys.executable}" -m prefetch "$@"\n',
        "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
        "pip": '#!/bin/sh\necho "pip $*: satisfied by the test environment"\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_the_docs_have_blocks_and_every_skip_says_why() -> None:
    assert len(BLOCKS) >= 10
    assert all(b.reason for b in BLOCKS if b.mode == "skip"), [b.name for b in BLOCKS if not b.reason]
    for doc in DOCS:  # a marker that is not right before a fence would silently do nothing
        text = doc.read_text()
        for match in MARKER.finditer(text):
            after = text[match.end() :].lstrip(" ")
            assert after.startswith("\n```sh\n"), (
                f"{doc.name}: {match.group(0)} is not right before a sh block"
            )


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_doc_block_runs(block: Block, prefetch: PrefetchRunner, hub: HubEmulator, tmp_path: Path) -> None:
    if block.mode == "skip":
        pytest.skip(f"{block.name}: {block.reason}")
    populate_demo(hub)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "manifests", work / "manifests")
    env = {**prefetch.env, "PATH": f"{tool_folder(tmp_path)}{os.pathsep}{os.environ['PATH']}"}
    if block.mode == "synced":
        shutil.copy(ROOT / "manifests" / "quickstart.yaml", work / "models.yaml")
        subprocess.run(
            [sys.executable, "-m", "prefetch", "sync", "models.yaml", "-q"], cwd=work, env=env, check=True
        )
        (tmp_path / "other-service").mkdir()
        shutil.copy(work / "models.lock", tmp_path / "other-service" / "models.lock")
    script = block.script()
    for illustrative, real in (
        ("/data/hf/hub", str(tmp_path / "airgap-cache")),
        ("/tmp/demo-cache", str(tmp_path / "demo-cache")),
        ("8765", str(free_port())),
    ):
        script = script.replace(illustrative, real)
    before = files_under(work)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{block.name} failed ({result.returncode}):\n{script}\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr}"
    )
    # `work` stands for the checkout's root: what the block wrote there, git must ignore
    left = not_ignored(files_under(work) - before, tmp_path / "git-status")
    assert not left, f"{block.name} leaves files .gitignore does not cover: {left}"
