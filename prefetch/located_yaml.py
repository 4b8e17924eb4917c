"""Located YAML: a document composed into nodes, each value read with its file:line:col at hand.

The manifest and the lockfile are both read this way (`manifest.py`, `lockfile.py`, each through its own
fields); what they share is here: composing (libyaml when present, nesting bounded), mapping keys
(duplicates refused, merge keys `<<` where the document allows them, unknown keys named with the closest
allowed one), typed values, null, and errors at file:line:col with a key path such as `repos[2].revision`.

Nodes rather than `yaml.safe_load`'s plain values: an error can say where, and duplicate keys, which
`safe_load` silently collapses, can be refused.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import NamedTuple, NoReturn, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import CollectionEndEvent, CollectionStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# Deeper than any manifest or lockfile (they nest 5 levels), shallow enough that PyYAML's recursive
# composer and constructor stay far from Python's recursion limit. libyaml's composer recurses in C and
# crashes the process on a document nested some 50,000 deep: the bound is checked before it runs.
MAX_DEPTH = 100

# libyaml composes a 30,000-file lockfile ~4 times faster than PyYAML's Python loader.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_REREAD_LIMIT = 256 * 1024  # characters: PyYAML composes that much in 0.3-0.5 s

TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, MERGE = (TAG + t for t in ("str", "int", "float", "bool", "null", "merge"))
_DESCRIPTIONS = {
    STR: "a string",
    INT: "a number",
    FLOAT: "a number",
    BOOL: "true/false",
    NULL: "nothing (null)",
    TAG + "timestamp": "a date",
    TAG + "binary": "binary data",
}

# Makes the exception a document's reader raises: (line, column, key path, message), 1-based.
LocatedError = Callable[[int, int, str, str], Exception]

T = TypeVar("T")


class Item(NamedTuple):  # a tuple: a 100k-file lockfile read as YAML makes 300k of them
    """One key of a mapping after merge keys are applied, with both nodes kept for their marks."""

    key_node: Node
    value: Node


def join(key_path: str, key: str) -> str:
    """`retry` + `attempts` -> `retry.attempts`; at the top, the key alone."""
    return f"{key_path}.{key}" if key_path else key


def line_of(node: Node) -> int:
    """The node's 1-based line, as messages say it."""
    return int(node.start_mark.line) + 1


class YamlReader:
    """Reads one document's nodes; every check raises `error(line, column, key_path, message)` in one
    call. Subclasses (the manifest's parser, the lockfile's reader) add what is their own."""

    def __init__(self, path: str, error: LocatedError, *, merge_keys: bool) -> None:
        self.path = path  # names the document in messages
        self.error = error
        self.merge_keys = merge_keys  # `<<` merges a mapping in; without, it is a key like any other
        self.constructor = SafeConstructor()
        self._flattened: dict[int, dict[str, Item]] = {}  # by id(node): each mapping is read once

    # ---- errors

    def fail(self, node: Node, key_path: str, message: str) -> NoReturn:
        mark = node.start_mark
        raise self.error(mark.line + 1, mark.column + 1, key_path, message) from None

    # ---- composing

    def compose(self, text: str) -> Node | None:
        """The document's root node (None: an empty document); a YAML error is raised at its position.

        libyaml's messages say less than PyYAML's (not which character cannot start a token, nor which
        alias is undefined) and it counts a bad character's position in bytes, so PyYAML reads a text
        libyaml refused once more for its own error: the whole text when it is small (every manifest),
        else only its characters (PyYAML composes ~2 s per 10,000 files of a lockfile).
        """
        try:
            return self._compose(text, _FAST_LOADER)
        except (yaml.YAMLError, UnicodeEncodeError) as exc:  # UnicodeEncodeError: libyaml, on a surrogate
            problem: Exception = exc
        if _FAST_LOADER is not yaml.SafeLoader:
            try:
                if len(text) <= _REREAD_LIMIT:
                    self._compose(text, yaml.SafeLoader)
                else:
                    yaml.SafeLoader(text)  # its reader checks every character on creation
            except yaml.YAMLError as exc:
                problem = exc
        self._fail_yaml(text, problem)

    def _compose(self, text: str, loader: type) -> Node | None:
        """Nesting is counted on the parser's events (which recurse nowhere) before composing."""
        depth = 0
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                    message = f"lists and mappings nested more than {MAX_DEPTH} levels deep"
                    raise self.error(line, column, "", message)
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
        return yaml.compose(text, Loader=loader)  # type: ignore[no-any-return]

    def _fail_yaml(self, text: str, exc: Exception) -> NoReturn:
        line, column, message = 1, 1, str(exc)
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            if mark:
                line, column = mark.line + 1, mark.column + 1
            message = exc.problem or exc.context or "syntax error"
            if exc.context and exc.problem:
                at = exc.context_mark
                where = f" at line {at.line + 1}, column {at.column + 1}" if at else ""
                message = f"{exc.context}{where}: {exc.problem}"
        elif isinstance(exc, yaml.reader.ReaderError):
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            char = exc.character if isinstance(exc.character, int) else ord(exc.character)
            message = f"character U+{char:04X} is not allowed in YAML text"
        raise self.error(line, column, "", f"invalid YAML: {message}") from None

    # ---- mappings

    def keys(self, node: Node, key_path: str) -> dict[str, Item]:
        """A mapping's keys, merge keys applied (explicit keys win, earlier merged mappings win, as in
        YAML), duplicates refused; which keys are allowed is `mapping`'s question."""
        if not isinstance(node, MappingNode):
            self.fail(node, key_path, f"expected a mapping, got {self.describe(node, key_path, echo=False)}")
        return self._flatten(node, key_path, frozenset())

    def _flatten(self, node: MappingNode, key_path: str, merging: frozenset[int]) -> dict[str, Item]:
        known = self._flattened.get(id(node))
        if known is not None:  # aliases may merge one mapping many times: read once, not 2**n times
            return known
        if id(node) in merging:
            self.fail(node, key_path, "merge key '<<' refers to a mapping that contains it")
        if len(merging) >= MAX_DEPTH:  # a chain of aliases nests without nesting in the text
            self.fail(node, key_path, f"merge keys '<<' chained more than {MAX_DEPTH} levels deep")
        merging = merging | {id(node)}
        explicit: dict[str, Item] = {}
        merged: dict[str, Item] = {}
        for key_node, value in node.value:
            if self.merge_keys and key_node.tag == MERGE:
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for source in sources:
                    if not isinstance(source, MappingNode):
                        self.fail(source, key_path, "a merge key '<<' takes a mapping or a list of mappings")
                    for key, item in self._flatten(source, key_path, merging).items():
                        merged.setdefault(key, item)
                continue
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, key_path, "expected a plain key, not a list or mapping")
            key = key_node.value
            if key in explicit:
                first = line_of(explicit[key].key_node)
                message = f"duplicate key '{key}' (first at line {first}; YAML would keep only the last one)"
                self.fail(key_node, join(key_path, key), message)
            explicit[key] = Item(key_node, value)
        result = self._flattened[id(node)] = {**merged, **explicit}
        return result

    def mapping(
        self, node: Node, key_path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Item]:
        """`keys`, where an unknown key is an error naming the closest allowed one, and `required` keys
        must be there."""
        items = self.keys(node, key_path)
        for key, item in items.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "allowed keys: " + ", ".join(allowed)
                self.fail(item.key_node, join(key_path, key), f"unknown key '{key}' ({hint})")
        for key in required:
            self.require(items, node, key_path, key)
        return items

    def require(self, items: dict[str, Item], node: Node, key_path: str, key: str, why: str = "") -> Node:
        """The value of a key that must be there; its absence is reported at the mapping."""
        item = items.get(key)
        if item is None:
            self.fail(node, key_path, f"missing required key '{key}'" + (f" ({why})" if why else ""))
        return item.value

    def optional(
        self, items: dict[str, Item], key: str, key_path: str, read: Callable[[Node, str], T]
    ) -> T | None:
        """Read `key` if present and not null."""
        item = items.get(key)
        if item is None or self.is_null(item.value):
            return None
        return read(item.value, join(key_path, key))

    @staticmethod
    def is_null(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == NULL

    # ---- values

    def scalar(self, node: Node, key_path: str) -> object:
        """The Python value of a scalar node, as `safe_load` would build it; custom tags are errors, and so
        is a value its explicit tag cannot hold (`!!int abc`, `!!bool maybe`)."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            tag = node.tag.replace(TAG, "!!", 1)
            self.fail(node, key_path, f"unsupported YAML tag '{tag}' ({exc.problem})")
        except (ValueError, KeyError, AttributeError):  # what SafeConstructor's scalar builders raise
            tag = node.tag.replace(TAG, "!!", 1)
            self.fail(node, key_path, f"invalid '{tag}' value")

    def describe(self, node: Node, key_path: str, *, echo: bool = True) -> str:
        """How messages name what was found instead of the expected type, with a hint to quote it when a
        string would do (`echo=False`: no hint, and the value stays out of the message)."""
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        self.scalar(node, key_path)  # rejects custom tags
        found = _DESCRIPTIONS.get(node.tag, "another type")
        if node.tag in (NULL, STR) or not node.value or not echo:
            return found
        return f"{found}; quote it to make it a string: '{node.value}'"

    def found(self, node: Node, key_path: str) -> str:
        """What a numeric or boolean check found: the literal for scalars, the kind otherwise."""
        if isinstance(node, ScalarNode) and node.tag != NULL and node.value:
            self.scalar(node, key_path)
            return repr(node.value) if node.tag == STR else str(node.value)
        return self.describe(node, key_path)

    def string(self, node: Node, key_path: str, *, echo: bool = True) -> str:
        """A string value; `echo=False` keeps the value out of the message (it may be a secret)."""
        if isinstance(node, ScalarNode) and node.tag == STR:
            return str(node.value)
        found = self.describe(node, key_path, echo=echo)
        self.fail(node, key_path, f"expected a string, got {found}")

    def integer(self, node: Node, key_path: str, minimum: int) -> int:
        value = self.scalar(node, key_path) if isinstance(node, ScalarNode) else None
        if node.tag != INT or not isinstance(value, int) or value < minimum:
            self.fail(node, key_path, f"expected an integer >= {minimum}, got {self.found(node, key_path)}")
        return value

    def positive_number(self, node: Node, key_path: str, unit: str) -> float:
        value = self.scalar(node, key_path) if isinstance(node, ScalarNode) else None
        if (
            node.tag not in (INT, FLOAT)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            self.fail(node, key_path, f"expected a number > 0 ({unit}), got {self.found(node, key_path)}")
        return float(value)

    def boolean(self, node: Node, key_path: str) -> bool:
        if not (isinstance(node, ScalarNode) and node.tag == BOOL):
            self.fail(node, key_path, f"expected true or false, got {self.found(node, key_path)}")
        return bool(self.scalar(node, key_path))

    def elements(
        self, node: Node, key_path: str, expected: str, *, or_one_string: bool = False
    ) -> list[tuple[Node, str]]:
        """A list's items, each with its key path (`include[1]`); `or_one_string`: a string alone stands
        for a list of one. Anything else is an error saying `expected` and what was found."""
        if isinstance(node, SequenceNode):
            return [(child, f"{key_path}[{i}]") for i, child in enumerate(node.value)]
        if or_one_string and isinstance(node, ScalarNode) and node.tag == STR:
            return [(node, key_path)]
        found = self.describe(node, key_path, echo=or_one_string)
        self.fail(node, key_path, f"expected {expected}, got {found}")

    def strings(self, node: Node, key_path: str) -> tuple[str, ...]:
        """A list of strings."""
        return tuple(
            self.string(child, path) for child, path in self.elements(node, key_path, "a list of strings")
        )
