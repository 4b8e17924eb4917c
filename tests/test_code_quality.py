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


MAX_CLASS_LINES = 300  # a class past this holds more than one job: split it by what it does


def test_no_class_is_too_long_to_read_in_one_sitting() -> None:
    long = {
        f"{path.relative_to(ROOT)}:{node.name}": n
        for path in (ROOT / "prefetch").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and (n := (node.end_lineno or 0) - node.lineno + 1) > MAX_CLASS_LINES
    }
    assert not long, f"split these classes by what they do: {long}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every prefetch module `path` imports anywhere: at the top, under TYPE_CHECKING, or in a function."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def test_no_import_cycles_not_even_type_only_or_function_local() -> None:
    """Data flows one way: a cycle, even one broken at run time by a function-local or TYPE_CHECKING
    import, is two modules that each need the other, i.e. one job split in two places."""
    paths = {module_name(p): p for p in (ROOT / "prefetch").rglob("*.py")}
    graph = {name: imports_of(path, set(paths)) for name, path in paths.items()}
    cycles = []
    for start in graph:  # a path back to `start` (depth-first; the graph is small)
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*trail, dep]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])


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
