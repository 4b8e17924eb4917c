"""Entries added to or removed from a manifest's text line by line, every other byte kept.

Why not ruamel.yaml's dump of the edited tree: its round trip keeps comments, key order and (with
`preserve_quotes`) quoting, but not all of a hand-written layout: spaces inside a flow list
(`[ "*.json" ]`), after a colon (`revision:  v1`), a flow list wrapped over lines. `prefetch add` and
`remove` promise to keep the layout, so the entry's own lines are inserted or deleted, and nothing
else is written again. Where the repos list is not a block sequence (`repos: [{repo: a}]`), the
caller falls back to the dump.

The tree (ruamel's, loaded from the same text) gives where each entry starts (`lc`); its extent runs
to its last line indented past its dash, comments and blank lines after it not included (they belong
to what follows, or to the list's end).
"""

from __future__ import annotations

from ruamel.yaml.comments import CommentedSeq


def block_items(repos: CommentedSeq, lines: list[str]) -> list[tuple[int, int, str]] | None:
    """(first line, last line, prefix up to the entry's first key: `  - `) of each entry of a block
    sequence whose entries begin on lines of their own; None for any other layout."""
    if repos.fa.flow_style() or not len(repos):
        return None
    items = []
    for i in range(len(repos)):
        line, col = repos.lc.item(i)
        prefix = lines[line][:col] if line < len(lines) else ""
        if prefix.strip() != "-":
            return None  # an entry that is not `- key: ...` on a line of its own
        dash = prefix.index("-")
        last = line
        for n in range(line + 1, len(lines)):
            text = lines[n]
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if len(text) - len(text.lstrip(" ")) <= dash:
                break
            last = n
        items.append((line, last, prefix))
    return items


def appended(text: str, repos: CommentedSeq, entry_lines: list[str]) -> str | None:
    """`text` with an entry (`entry_lines`: its `key: value` lines, unindented) appended to the repos
    list after its last entry, written with that entry's indentation (and after a blank line where
    the entries are separated by one); None: not a block list."""
    lines = text.splitlines(keepends=True)
    items = block_items(repos, [line.rstrip("\r\n") for line in lines])
    if items is None:
        return None
    first, last, prefix = items[-1]
    indent = " " * len(prefix)
    newline = "\r\n" if lines[last].endswith("\r\n") else "\n"
    added = [prefix + entry_lines[0], *(indent + line for line in entry_lines[1:])]
    if first > 0 and not lines[first - 1].strip() and len(items) > 1:
        added.insert(0, "")  # entries separated by a blank line: so is this one
    if not lines[last].endswith(("\n", "\r")):
        lines[last] += newline
    return "".join([*lines[: last + 1], *(line + newline for line in added), *lines[last + 1 :]])


def removed(text: str, repos: CommentedSeq, index: int) -> str | None:
    """`text` without the entry `index` of the repos list: its lines, and where entries are separated by
    blank lines, one of those around it; None: not a block list."""
    lines = text.splitlines(keepends=True)
    items = block_items(repos, [line.rstrip("\r\n") for line in lines])
    if items is None:
        return None
    first, last, _ = items[index]
    end = last + 1
    if first > 0 and not lines[first - 1].strip():  # entries separated by blank lines: one goes with it
        if end < len(lines) and not lines[end].strip():
            end += 1
        elif index == len(items) - 1:
            first -= 1
    return "".join([*lines[:first], *lines[end:]])
