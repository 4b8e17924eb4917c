"""The manifest (`models.yaml`): pure data, no network. Parsing and validation with file:line:col errors.

Parsing goes through `yaml.compose` (nodes with marks) instead of `yaml.safe_load` (plain values) so that
every error can point at the exact line and column, and so that duplicate keys, which `safe_load`
silently collapses, can be reported.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from prefetch.errors import BadProxyUrl, ManifestError
from prefetch.hfhub import REPO_TYPES, repo_id_problem
from prefetch.paths import revision_problem
from prefetch.proxy_url import parse_proxy_url
from prefetch.settings import RetrySettings

MANIFEST_VERSION = 1

TOP_KEYS = ("version", "cache_dir", "endpoint", "proxies", "retry", "defaults", "repos")
RETRY_KEYS = ("attempts", "max_wait", "max_time")
DEFAULT_KEYS = ("revision", "include", "exclude", "gated", "token_env", "allow_empty")
ENTRY_KEYS = ("repo", "type", "revision", "include", "exclude", "gated", "token_env", "allow_empty")
LOCKFILE_KEYS = ("tool_version", "manifest_digest", "entries")  # a lockfile's, never a manifest's


@dataclass(frozen=True)
class Entry:
    """One repo to prefetch, with defaults already applied."""

    repo: str
    type: str = "model"
    revision: str = "main"
    include: tuple[str, ...] | None = None  # None: every file
    exclude: tuple[str, ...] = ()
    gated: bool | None = None  # the manifest's expectation; None when not said
    token_env: str | None = None  # name of an env var holding this entry's token
    allow_empty: bool = False  # selecting no file is intended (else an error: usually a pattern typo)
    # The patterns written on the entry itself (not from `defaults:`), each of which must match a file.
    own_include: tuple[str, ...] = field(default=(), compare=False)
    own_exclude: tuple[str, ...] = field(default=(), compare=False)
    index: int = 0  # position in `repos:`
    line: int = 0  # 1-based position of the entry in the manifest, for messages
    column: int = 0
    manifest_path: str = field(default="", compare=False)  # for messages

    def error(self, key: str, message: str) -> ManifestError:
        """A problem with this entry found after parsing (e.g. against the repo's files), located at it."""
        key_path = f"repos[{self.index}]" + (f".{key}" if key else "")
        return ManifestError(self.manifest_path, self.line, self.column, key_path, message)

    @property
    def key(self) -> str:
        """Identity of an entry: duplicates (same repo, type, revision) are rejected."""
        return f"{self.type}:{self.repo}@{self.revision}"

    @property
    def label(self) -> str:
        """How messages name the entry: `repos[2] (acme/x@main)`."""
        kind = "" if self.type == "model" else f"{self.type}:"
        return f"repos[{self.index}] ({kind}{self.repo}@{self.revision})"

    def digest(self) -> str:
        """Digest of what decides the locked content; a lock entry is reused while this is unchanged."""
        return _digest(
            {
                "repo": self.repo,
                "type": self.type,
                "revision": self.revision,
                "include": list(self.include) if self.include is not None else None,
                "exclude": list(self.exclude),
            }
        )


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[Entry, ...]
    version: int = 1
    cache_dir: Path | None = None  # absolute (a relative one is resolved against the manifest's folder)
    cache_dir_text: str | None = None  # as written, for the lockfile (an absolute path is machine-specific)
    endpoint: str | None = None
    proxies: tuple[str, ...] = ()
    retry: RetrySettings = field(default_factory=RetrySettings)

    def digest(self) -> str:
        """Digest of the manifest's meaning (entries in order), not its bytes: comments do not count."""
        return _digest([e.digest() for e in self.entries])


def _digest(obj: object) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file; every problem is a `ManifestError` located at file:line:col."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        message = (
            f"no such manifest file: create one with `prefetch init {name}`, or start from a manifest in "
            "prefetch's manifests/ folder (e.g. manifests/quickstart.yaml)"
        )
        raise ManifestError(name, 1, 1, "", message) from None
    except OSError as exc:
        raise ManifestError(name, 1, 1, "", f"cannot read the manifest: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(name, line, column, "", "the manifest is not UTF-8 text") from None
    return parse_manifest(text, name)


def parse_manifest(text: str, path: str) -> Manifest:
    """Validate manifest text; `path` names the file in messages and anchors a relative `cache_dir`."""
    return _Parser(path).parse(text)


# --------------------------------------------------------------------------------------------------------
# Implementation: walk the composed node tree, building values and checking them with their marks at hand.

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MERGE = _TAG + "merge"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DESCRIPTIONS = {
    _STR: "a string",
    _INT: "a number",
    _FLOAT: "a number",
    _BOOL: "true/false",
    _NULL: "nothing (null)",
    _TAG + "timestamp": "a date",
    _TAG + "binary": "binary data",
}

T = TypeVar("T")


@dataclass(frozen=True)
class _Item:
    """One key of a mapping after merge keys are applied, with both nodes kept for their marks."""

    key_node: Node
    value: Node


def _join(key_path: str, key: str) -> str:
    return f"{key_path}.{key}" if key_path else key


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Parser:
    """Holds the manifest's name so that every check can raise a located error in one call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.constructor = SafeConstructor()

    # ---- errors and generic node readers

    def fail(self, node: Node, key_path: str, message: str) -> NoReturn:
        mark = node.start_mark
        raise ManifestError(self.path, mark.line + 1, mark.column + 1, key_path, message)

    def scalar(self, node: Node, key_path: str) -> object:
        """The Python value of a scalar node, as `safe_load` would build it; custom tags are errors."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            tag = node.tag.replace(_TAG, "!!", 1)
            self.fail(node, key_path, f"unsupported YAML tag '{tag}' ({exc.problem})")

    def describe(self, node: Node, key_path: str, *, echo: bool = True) -> str:
        """How messages name what was found instead of the expected type, with a quoting hint."""
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        self.scalar(node, key_path)  # rejects custom tags
        found = _DESCRIPTIONS.get(node.tag, "another type")
        if node.tag in (_NULL, _STR) or not node.value or not echo:
            return found
        return f"{found}; quote it to make it a string: '{node.value}'"

    def string(self, node: Node, key_path: str, *, echo: bool = True) -> str:
        """A string value; `echo=False` keeps the value out of the message (it may be a secret)."""
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return node.value
        found = self.describe(node, key_path, echo=echo)
        self.fail(node, key_path, f"expected a string, got {found}")

    def mapping(self, node: Node, key_path: str, allowed: tuple[str, ...]) -> dict[str, _Item]:
        """A mapping's keys (merge keys applied, duplicates and unknown keys rejected)."""
        if not isinstance(node, MappingNode):
            self.fail(node, key_path, f"expected a mapping, got {self.describe(node, key_path)}")
        items = self.flatten(node, key_path, frozenset())
        for key, item in items.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "allowed keys: " + ", ".join(allowed)
                self.fail(item.key_node, _join(key_path, key), f"unknown key '{key}' ({hint})")
        return items

    def flatten(self, node: MappingNode, key_path: str, active: frozenset[int]) -> dict[str, _Item]:
        """Apply `<<` merge keys like YAML does (explicit keys win, earlier merged mappings win)."""
        if id(node) in active:
            self.fail(node, key_path, "merge key '<<' refers to a mapping that contains it")
        active = active | {id(node)}
        explicit: dict[str, _Item] = {}
        merged: dict[str, _Item] = {}
        for key_node, value in node.value:
            if key_node.tag == _MERGE:
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for source in sources:
                    if not isinstance(source, MappingNode):
                        self.fail(source, key_path, "a merge key '<<' takes a mapping or a list of mappings")
                    for key, item in self.flatten(source, key_path, active).items():
                        merged.setdefault(key, item)
                continue
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, key_path, "expected a plain key, not a list or mapping")
            key = key_node.value
            if key in explicit:
                first = _line(explicit[key].key_node)
                message = f"duplicate key '{key}' (first at line {first}; YAML would keep only the last one)"
                self.fail(key_node, _join(key_path, key), message)
            explicit[key] = _Item(key_node, value)
        return {**merged, **explicit}

    def optional(
        self, items: dict[str, _Item], key: str, key_path: str, read: Callable[[Node, str], T]
    ) -> T | None:
        """Read `key` if present and not null."""
        item = items.get(key)
        if item is None or self.is_null(item.value):
            return None
        return read(item.value, _join(key_path, key))

    @staticmethod
    def is_null(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == _NULL

    # ---- typed readers

    def integer(self, node: Node, key_path: str, minimum: int) -> int:
        value = self.scalar(node, key_path) if isinstance(node, ScalarNode) else None
        if node.tag != _INT or not isinstance(value, int) or value < minimum:
            self.fail(node, key_path, f"expected an integer >= {minimum}, got {self.found(node, key_path)}")
        return value

    def positive_number(self, node: Node, key_path: str) -> float:
        value = self.scalar(node, key_path) if isinstance(node, ScalarNode) else None
        if node.tag not in (_INT, _FLOAT) or not isinstance(value, int | float):
            self.fail(node, key_path, f"expected a number > 0 (seconds), got {self.found(node, key_path)}")
        if not math.isfinite(value) or value <= 0:
            self.fail(node, key_path, f"expected a number > 0 (seconds), got {self.found(node, key_path)}")
        return float(value)

    def found(self, node: Node, key_path: str) -> str:
        """What a numeric check found: the literal for scalars, the kind otherwise."""
        if isinstance(node, ScalarNode) and node.tag != _NULL and node.value:
            self.scalar(node, key_path)
            return repr(node.value) if node.tag == _STR else node.value
        return self.describe(node, key_path)

    def boolean(self, node: Node, key_path: str) -> bool:
        if not (isinstance(node, ScalarNode) and node.tag == _BOOL):
            self.fail(node, key_path, f"expected true or false, got {self.found(node, key_path)}")
        return bool(self.scalar(node, key_path))

    def patterns(self, node: Node, key_path: str) -> tuple[str, ...]:
        """`include`/`exclude`: one glob or a list of globs, matched against repo-relative paths."""
        if isinstance(node, SequenceNode):
            items = [(child, f"{key_path}[{i}]") for i, child in enumerate(node.value)]
        elif isinstance(node, ScalarNode) and node.tag == _STR:
            items = [(node, key_path)]
        else:
            found = self.describe(node, key_path)
            self.fail(node, key_path, f"expected a list of strings (or one string), got {found}")
        result = []
        for child, child_path in items:
            pattern = self.string(child, child_path)
            if not pattern.strip():
                self.fail(child, child_path, "expected a non-empty glob pattern")
            if pattern.startswith("/"):
                message = "patterns match repo-relative paths and never start with '/': drop the leading '/'"
                self.fail(child, child_path, message)
            result.append(pattern)
        return tuple(result)

    def include(self, node: Node, key_path: str) -> tuple[str, ...]:
        result = self.patterns(node, key_path)
        if not result:
            self.fail(
                node, key_path, "an empty include list matches no file: omit it (or null) for every file"
            )
        return result

    def revision(self, node: Node, key_path: str) -> str:
        """A branch, tag or commit: also used as a file name under `refs/` in the cache, hence strict."""
        value = self.string(node, key_path)
        problem = revision_problem(value)
        if problem:
            self.fail(node, key_path, problem)
        return value

    def token_env(self, node: Node, key_path: str) -> str:
        """The NAME of an env var; the value is never echoed in case a token was pasted here by mistake."""
        value = self.string(node, key_path, echo=False)
        if value.startswith("hf_") and len(value) >= 30 and any(c.islower() for c in value[3:]):
            message = "this looks like an access token, not an environment variable name: remove it from "
            self.fail(node, key_path, message + "the manifest (and revoke it), and name the variable instead")
        if not _ENV_NAME.fullmatch(value):
            message = "expected an environment variable name (letters, digits and '_', e.g. ORG_B_TOKEN)"
            self.fail(node, key_path, message)
        return value

    def repo_id(self, node: Node, key_path: str) -> str:
        value = self.string(node, key_path)
        problem = repo_id_problem(value)
        if problem:
            self.fail(node, key_path, f"invalid repo id: {problem}")
        if "/" not in value:
            message = (
                f"repo id {value!r} needs the 'namespace/name' form "
                "(old un-namespaced ids moved, e.g. 'gpt2' is now 'openai-community/gpt2')"
            )
            self.fail(node, key_path, message)
        return value

    def repo_type(self, node: Node, key_path: str) -> str:
        value = self.string(node, key_path)
        if value not in REPO_TYPES:
            close = difflib.get_close_matches(value, REPO_TYPES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self.fail(
                node, key_path, f"unknown repo type {value!r}: expected one of {', '.join(REPO_TYPES)}{hint}"
            )
        return value

    def url(self, node: Node, key_path: str) -> str:
        """The endpoint: an http(s) URL without credentials (never echoed: it might carry some)."""
        value = self.string(node, key_path, echo=False)
        message = "expected an http(s) URL such as https://huggingface.co"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            self.fail(node, key_path, message)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
            or any(c.isspace() for c in value)
        ):
            self.fail(node, key_path, message)
        if parts.username or parts.password:
            self.fail(node, key_path, "the endpoint must not carry credentials: use token_env or HF_TOKEN")
        return value

    def proxy_url(self, node: Node, key_path: str) -> str:
        """A proxy URL, through the one proxy parser (`proxy_url`); never echoed: it may carry a password."""
        value = self.string(node, key_path, echo=False)
        try:
            return parse_proxy_url(value)
        except BadProxyUrl as e:
            self.fail(node, key_path, str(e))

    def cache_dir(self, node: Node, key_path: str) -> Path:
        """`~` expands; a relative path is relative to the manifest's folder, not the working directory."""
        value = self.string(node, key_path)
        if not value.strip():
            self.fail(node, key_path, "expected a folder path, got ''")
        expanded = Path(os.path.expanduser(value))
        if value.startswith("~") and str(expanded).startswith("~"):
            self.fail(node, key_path, f"cannot expand {value.split('/')[0]!r}: no such user")
        if not expanded.is_absolute():
            expanded = Path(self.path).parent / expanded
        return expanded.absolute()

    # ---- the manifest's structure

    def parse(self, text: str) -> Manifest:
        root = self.compose(text)
        if root is None:
            raise ManifestError(
                self.path, 1, 1, "", "the manifest is empty (it needs 'version: 1' and 'repos:')"
            )
        if not isinstance(root, MappingNode):
            self.fail(
                root, "", f"the manifest must be a mapping (version:, repos:…), got {self.describe(root, '')}"
            )
        items = self.flatten(root, "", frozenset())
        if "repos" not in items and any(key in items for key in LOCKFILE_KEYS):
            manifest = Path(self.path).with_suffix(".yaml").name
            message = (
                "this is a lockfile (written by `prefetch lock` or `sync`), not a manifest: pass the manifest "
                f"it was generated from (e.g. {manifest}, beside it)"
            )
            self.fail(root, "", message)
        if "version" not in items:
            self.fail(root, "", "missing required key 'version' (add 'version: 1')")
        version_node = items["version"].value
        version = self.integer(version_node, "version", 1)
        if version != MANIFEST_VERSION:
            message = (
                f"unsupported manifest version {version} (this prefetch reads version {MANIFEST_VERSION})"
            )
            self.fail(version_node, "version", message)
        items = self.mapping(root, "", TOP_KEYS)

        cache_dir = self.optional(items, "cache_dir", "", self.cache_dir)
        cache_dir_text = self.optional(items, "cache_dir", "", self.string)
        endpoint = self.optional(items, "endpoint", "", self.url)
        proxies = self.optional(items, "proxies", "", self.proxies) or ()
        retry = self.optional(items, "retry", "", self.retry) or RetrySettings()
        defaults = self.optional(items, "defaults", "", lambda n, p: self.mapping(n, p, DEFAULT_KEYS)) or {}
        if "repos" not in items:
            self.fail(root, "", "missing required key 'repos' (the list of repos to prefetch)")
        entries = self.entries(items["repos"].value, defaults)
        return Manifest(
            path=Path(self.path),
            entries=entries,
            version=version,
            cache_dir=cache_dir,
            cache_dir_text=cache_dir_text,
            endpoint=endpoint.rstrip("/") if endpoint else None,
            proxies=proxies,
            retry=retry,
        )

    def compose(self, text: str) -> Node | None:
        """YAML syntax errors become ManifestErrors at the position the YAML parser reports."""
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            message = exc.problem or exc.context or "syntax error"
            if exc.context and exc.problem:
                at = exc.context_mark
                where = f" at line {at.line + 1}, column {at.column + 1}" if at else ""
                message = f"{exc.context}{where}: {exc.problem}"
            raise ManifestError(self.path, line, column, "", f"invalid YAML: {message}") from None
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            char = exc.character if isinstance(exc.character, int) else ord(exc.character)
            message = f"invalid YAML: character U+{char:04X} is not allowed in YAML text"
            raise ManifestError(self.path, line, column, "", message) from None
        except yaml.YAMLError as exc:
            raise ManifestError(self.path, 1, 1, "", f"invalid YAML: {exc}") from None

    def proxies(self, node: Node, key_path: str) -> tuple[str, ...]:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return (self.proxy_url(node, key_path),)
        if not isinstance(node, SequenceNode):
            found = self.describe(node, key_path)
            self.fail(node, key_path, f"expected a list of strings (http:// proxy URLs), got {found}")
        return tuple(self.proxy_url(child, f"{key_path}[{i}]") for i, child in enumerate(node.value))

    def retry(self, node: Node, key_path: str) -> RetrySettings:
        items = self.mapping(node, key_path, RETRY_KEYS)
        base = RetrySettings()
        attempts = self.optional(items, "attempts", key_path, lambda n, p: self.integer(n, p, 1))
        max_wait = self.optional(items, "max_wait", key_path, self.positive_number)
        max_time = self.optional(items, "max_time", key_path, self.positive_number)
        return RetrySettings(
            attempts=base.attempts if attempts is None else attempts,
            max_wait=base.max_wait if max_wait is None else max_wait,
            max_time=base.max_time if max_time is None else max_time,
        )

    def entries(self, node: Node, defaults: dict[str, _Item]) -> tuple[Entry, ...]:
        if self.is_null(node) or (isinstance(node, SequenceNode) and not node.value):
            self.fail(node, "repos", "'repos' needs at least one entry (- repo: namespace/name)")
        if not isinstance(node, SequenceNode):
            self.fail(
                node, "repos", f"expected a list of entries (- repo: …), got {self.describe(node, 'repos')}"
            )
        base = self.fields(defaults, "defaults")
        seen: dict[str, Entry] = {}
        result = []
        for index, child in enumerate(node.value):
            entry = self.entry(child, index, base)
            first = seen.get(entry.key)
            if first is not None:
                message = (
                    f"duplicate entry {entry.key}: already listed as repos[{first.index}] "
                    f"(line {first.line}); entries must differ in repo, type or revision"
                )
                self.fail(child, f"repos[{index}]", message)
            seen[entry.key] = entry
            result.append(entry)
        return tuple(result)

    def fields(self, items: dict[str, _Item], key_path: str) -> dict[str, object]:
        """The per-entry settings present in a mapping (defaults or entry); explicit null counts as set."""
        readers: dict[str, Callable[[Node, str], object]] = {
            "revision": self.revision,
            "include": self.include,
            "exclude": self.patterns,
            "gated": self.boolean,
            "token_env": self.token_env,
            "allow_empty": self.boolean,
        }
        result: dict[str, object] = {}
        for key, read in readers.items():
            item = items.get(key)
            if item is None:
                continue
            if self.is_null(item.value) and key != "revision":
                result[key] = () if key == "exclude" else None
            else:
                result[key] = read(item.value, _join(key_path, key))
        return result

    def entry(self, node: Node, index: int, defaults: dict[str, object]) -> Entry:
        key_path = f"repos[{index}]"
        if isinstance(node, ScalarNode) and node.tag == _STR:
            self.fail(node, key_path, f"expected a mapping: write '- repo: {node.value}'")
        items = self.mapping(node, key_path, ENTRY_KEYS)
        if "repo" not in items:
            self.fail(node, key_path, "missing required key 'repo'")
        repo = self.repo_id(items["repo"].value, _join(key_path, "repo"))
        repo_type = self.optional(items, "type", key_path, self.repo_type) or "model"
        own = self.fields(items, key_path)
        settings = {**defaults, **own}
        return Entry(
            repo=repo,
            type=repo_type,
            revision=settings.get("revision", "main"),  # type: ignore[arg-type]
            include=settings.get("include"),  # type: ignore[arg-type]
            exclude=settings.get("exclude", ()),  # type: ignore[arg-type]
            gated=settings.get("gated"),  # type: ignore[arg-type]
            token_env=settings.get("token_env"),  # type: ignore[arg-type]
            allow_empty=bool(settings.get("allow_empty")),
            own_include=own.get("include") or (),  # type: ignore[arg-type]
            own_exclude=own.get("exclude") or (),  # type: ignore[arg-type]
            index=index,
            line=_line(node),
            column=node.start_mark.column + 1,
            manifest_path=self.path,
        )
