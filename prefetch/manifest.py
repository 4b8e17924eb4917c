"""The manifest (`models.yaml`): pure data, no network. Parsing and validation with file:line:col errors.

The YAML is read as located nodes (`located_yaml`, shared with the lockfile): this module holds only
the manifest's own fields, defaults and rules.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from prefetch.errors import BadProxyUrl, ManifestError, UsageError
from prefetch.hfhub import REPO_TYPES, repo_id_problem
from prefetch.located_yaml import STR, Item, YamlReader, join, line_of
from prefetch.oci.reference import LayoutRef, Reference, parse_reference
from prefetch.paths import revision_problem
from prefetch.settings import RetrySettings
from prefetch.urls import endpoint_problem, parse_proxy_url

MANIFEST_VERSION = 1

TOP_KEYS = ("version", "cache_dir", "endpoint", "source", "proxies", "retry", "defaults", "repos")
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
    source: Reference | None = None  # an OCI artifact a sync takes the locked files from, instead of the Hub
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
# Implementation: walk the composed node tree (`located_yaml`), building values and checking them with
# their marks at hand.

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Parser(YamlReader):
    """The manifest's fields, defaults and rules, on the shared located-YAML reader."""

    def __init__(self, path: str) -> None:
        super().__init__(path, partial(ManifestError, path), merge_keys=True)

    # ---- the manifest's values

    def patterns(self, node: Node, key_path: str) -> tuple[str, ...]:
        """`include`/`exclude`: one glob or a list of globs, matched against repo-relative paths."""
        result = []
        for child, child_path in self.elements(
            node, key_path, "a list of strings (or one string)", or_one_string=True
        ):
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
        problem = endpoint_problem(value)
        if problem:
            self.fail(node, key_path, problem)
        parts = urlsplit(value)
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

    def source(self, node: Node, key_path: str) -> Reference:
        """`oci://REGISTRY/REPO[:TAG|@DIGEST]` or `oci:DIR[:TAG]`, whose relative DIR is relative to the
        manifest's folder (as `cache_dir`)."""
        value = self.string(node, key_path)
        try:
            reference = parse_reference(value)
        except UsageError as e:
            self.fail(node, key_path, str(e))
        if isinstance(reference, LayoutRef):
            folder = Path(os.path.expanduser(reference.path))
            if not folder.is_absolute():
                folder = Path(self.path).parent / folder
            reference = LayoutRef(folder.absolute(), reference.tag)
        return reference

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
                root,
                "",
                f"the manifest must be a mapping (version:, repos:…), got {self.describe(root, '', echo=False)}",
            )
        items = self.keys(root, "")
        if "repos" not in items and any(key in items for key in LOCKFILE_KEYS):
            manifest = Path(self.path).with_suffix(".yaml").name
            message = (
                "this is a lockfile (written by `prefetch lock` or `sync`), not a manifest: pass the manifest "
                f"it was generated from (e.g. {manifest}, beside it)"
            )
            self.fail(root, "", message)
        version_node = self.require(items, root, "", "version", "add 'version: 1'")
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
        source = self.optional(items, "source", "", self.source)
        proxies = self.optional(items, "proxies", "", self.proxies) or ()
        retry = self.optional(items, "retry", "", self.retry) or RetrySettings()
        defaults = self.optional(items, "defaults", "", lambda n, p: self.mapping(n, p, DEFAULT_KEYS)) or {}
        repos = self.require(items, root, "", "repos", "the list of repos to prefetch")
        entries = self.entries(repos, defaults)
        return Manifest(
            path=Path(self.path),
            entries=entries,
            version=version,
            cache_dir=cache_dir,
            cache_dir_text=cache_dir_text,
            endpoint=endpoint.rstrip("/") if endpoint else None,
            source=source,
            proxies=proxies,
            retry=retry,
        )

    def proxies(self, node: Node, key_path: str) -> tuple[str, ...]:
        expected = "a list of strings (http:// proxy URLs)"
        return tuple(
            self.proxy_url(child, path)
            for child, path in self.elements(node, key_path, expected, or_one_string=True)
        )

    def seconds(self, node: Node, key_path: str) -> float:
        return self.positive_number(node, key_path, "seconds")

    def retry(self, node: Node, key_path: str) -> RetrySettings:
        items = self.mapping(node, key_path, RETRY_KEYS)
        base = RetrySettings()
        attempts = self.optional(items, "attempts", key_path, lambda n, p: self.integer(n, p, 1))
        max_wait = self.optional(items, "max_wait", key_path, self.seconds)
        max_time = self.optional(items, "max_time", key_path, self.seconds)
        return RetrySettings(
            attempts=base.attempts if attempts is None else attempts,
            max_wait=base.max_wait if max_wait is None else max_wait,
            max_time=base.max_time if max_time is None else max_time,
        )

    def entries(self, node: Node, defaults: dict[str, Item]) -> tuple[Entry, ...]:
        if self.is_null(node) or (isinstance(node, SequenceNode) and not node.value):
            self.fail(node, "repos", "'repos' needs at least one entry (- repo: namespace/name)")
        if not isinstance(node, SequenceNode):
            self.fail(
                node,
                "repos",
                f"expected a list of entries (- repo: …), got {self.describe(node, 'repos', echo=False)}",
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

    def fields(self, items: dict[str, Item], key_path: str) -> dict[str, object]:
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
                result[key] = read(item.value, join(key_path, key))
        return result

    def entry(self, node: Node, index: int, defaults: dict[str, object]) -> Entry:
        key_path = f"repos[{index}]"
        if isinstance(node, ScalarNode) and node.tag == STR:
            self.fail(node, key_path, f"expected a mapping: write '- repo: {node.value}'")
        items = self.mapping(node, key_path, ENTRY_KEYS)
        repo = self.repo_id(self.require(items, node, key_path, "repo"), join(key_path, "repo"))
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
            line=line_of(node),
            column=node.start_mark.column + 1,
            manifest_path=self.path,
        )
