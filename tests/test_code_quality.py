"""The house rules a reviewer would otherwise check by hand: ruff (lint and format) and mypy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],  # files and settings from pyproject.toml
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{' '.join(command)}:\n{proc.stdout}\n{proc.stderr}"


MAX_MODULE_LINES = 720  # "no module over ~700 lines": past this, a module holds more than one stage


def test_no_module_is_too_long_to_read_in_one_sitting() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "prefetch").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules by what they do: {long}"


def test_exception_classes_live_in_the_errors_module() -> None:
    elsewhere = [
        f"{path.relative_to(ROOT)}:{node.name}"
        for path in (ROOT / "prefetch").rglob("*.py")
        if path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id == "Cancelled")
            for b in node.bases
        )
    ]
    assert not elsewhere, elsewhere
