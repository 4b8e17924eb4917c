"""The README stays true: CI runs its test command verbatim, and its exit-code table is the code's."""

from __future__ import annotations

import re
from pathlib import Path

from prefetch.errors import EXIT_CODE_MEANINGS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def shell_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    test_command = shell_blocks(README)[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_install_command_runs_the_main_job():
    assert shell_blocks(README)[0] == "pip install . && prefetch sync manifests/quickstart.yaml"


def test_exit_code_table_matches_the_code():
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", README, flags=re.M))
    assert {int(code): text for code, text in rows.items()} == {
        int(c): m for c, m in EXIT_CODE_MEANINGS.items()
    }
