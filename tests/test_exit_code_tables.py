"""Every exit-code table in README.md and docs/*.md is held to the one mapping, `errors.EXIT_CODE_MEANINGS`.

Two kinds of table are found by their header:
- a table of the codes (first column `code`): every code of the mapping, in order, each with a `meaning`
  column that is the mapping's words; further columns add context (what to do in a build, which failure
  of the page gives the code);
- a table that cites codes per command (a column `exit codes`): each code it cites is one of the mapping.
Any other table whose header mentions exit codes is an error here, so that no table escapes the check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prefetch.errors import EXIT_CODE_MEANINGS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


@dataclass(frozen=True)
class Table:
    path: str
    line: int
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        index = self.header.index(name)
        return [row[index] if index < len(row) else "" for row in self.rows]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip()[1:-1].split("|")]


def markdown_tables(path: Path) -> list[Table]:
    """The pipe tables of a Markdown file: a header row, a separator row, then rows, outside code blocks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tables, fenced, i = [], False, 0
    while i < len(lines):
        if lines[i].startswith("```"):
            fenced = not fenced
        elif not fenced and lines[i].startswith("|") and i + 1 < len(lines) and SEPARATOR.match(lines[i + 1]):
            start, i = i, i + 2
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            header = [cell.lower() for cell in cells(lines[start])]
            tables.append(Table(str(path.relative_to(ROOT)), start + 1, header, rows))
            continue
        i += 1
    return tables


def exit_code_tables() -> tuple[list[Table], list[Table]]:
    """(tables of the codes, tables citing codes per command) in README.md and docs/*.md."""
    of_codes, citing = [], []
    for table in (t for path in DOCS for t in markdown_tables(path)):
        if table.header[0] == "code":
            of_codes.append(table)
        elif "exit codes" in table.header:
            citing.append(table)
        else:
            assert not any("exit" in cell or cell == "code" for cell in table.header), (
                f"{table.path}:{table.line}: a table about exit codes this test does not recognise: "
                f"{table.header} (make `code` its first column, or name its column `exit codes`)"
            )
    return of_codes, citing


def test_every_table_of_exit_codes_is_the_mapping() -> None:
    of_codes, _ = exit_code_tables()
    assert {t.path for t in of_codes} >= {"README.md", "docs/docker.md", "docs/resilience.md"}
    expected = {int(code): meaning for code, meaning in EXIT_CODE_MEANINGS.items()}
    for table in of_codes:
        where = f"{table.path}:{table.line}"
        codes = [int(code) for code in table.column("code")]
        assert codes == sorted(expected), f"{where}: codes {codes}, the mapping has {sorted(expected)}"
        assert "meaning" in table.header, f"{where}: no `meaning` column"
        for code, meaning in zip(codes, table.column("meaning"), strict=True):
            assert meaning == expected[code], f"{where}: code {code}: the mapping says {expected[code]!r}"


def test_every_code_a_command_table_cites_is_in_the_mapping() -> None:
    _, citing = exit_code_tables()
    assert {t.path for t in citing} >= {"docs/offline.md"}
    for table in citing:
        cited = {int(n) for cell in table.column("exit codes") for n in re.findall(r"\b\d+\b", cell)}
        assert cited, f"{table.path}:{table.line}: cites no exit code"
        unknown = cited - {int(code) for code in EXIT_CODE_MEANINGS}
        assert not unknown, f"{table.path}:{table.line}: exit codes {sorted(unknown)} are not prefetch's"
