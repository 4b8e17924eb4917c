"""The lockfile (`models.lock`): pure data, no network. Deterministic YAML, written atomically.

A lockfile is input too (`--frozen`, `verify`), and its paths and revisions become file names in the
cache, so loading it validates every field strictly: a hostile lockfile must not reach outside the cache.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from prefetch import __version__
from prefetch.errors import LockfileError, LockOutdatedError
from prefetch.files import atomic_write, is_disk_full
from prefetch.paths import repo_id_problem, revision_problem, unsafe_path_reason

if TYPE_CHECKING:
    from prefetch.manifest import Entry, Manifest

LOCK_VERSION = 1

_REPO_TYPES = ("model", "dataset", "space")  # same as prefetch.manifest.REPO_TYPES; kept local on purpose
_TOP_KEYS = ("version", "tool_version", "manifest_digest", "cache_dir", "endpoint", "entries")
_ENTRY_KEYS = ("repo", "type", "revision", "commit", "include", "exclude", "entry_digest", "files")
_FILE_KEYS = ("path", "size", "sha256", "git_sha1")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class LockedFile:
    path: str  # repo-relative, '/'-separated
    size: int
    sha256: str | None = None  # set for LFS files
    git_sha1: str | None = None  # set for regular files (git blob sha1; see `cache.GitOidHash`)
    # Neither: the endpoint published no hash and no sync has downloaded the file yet (`prefetch lock`
    # alone); the first sync hashes the bytes and records their sha256.

    @property
    def etag(self) -> str:
        """Name of the blob in the HF cache: sha256 for LFS files, git blob sha1 otherwise ("": no hash yet)."""
        return self.sha256 or self.git_sha1 or ""

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class LockedEntry:
    repo: str
    type: str
    revision: str  # as requested in the manifest
    commit: str  # resolved 40-hex commit
    include: tuple[str, ...] | None
    exclude: tuple[str, ...]
    entry_digest: str  # Entry.digest() of the manifest line it came from
    files: tuple[LockedFile, ...]  # sorted by path

    @property
    def key(self) -> str:
        return f"{self.type}:{self.repo}@{self.revision}"


@dataclass(frozen=True)
class Lock:
    manifest_digest: str
    tool_version: str
    entries: tuple[LockedEntry, ...]  # in manifest order
    version: int = LOCK_VERSION
    cache_dir: str | None = None  # only when the manifest names one
    endpoint: str | None = None  # the Hub-compatible endpoint it was resolved against (None: older locks)

    def entry(self, key: str) -> LockedEntry | None:
        """The locked entry with this `LockedEntry.key` (`type:repo@revision`), if any."""
        return next((e for e in self.entries if e.key == key), None)


def require_hashes(lock: Lock, what: str) -> None:
    """Refuse a lock with files that have no hash yet (`prefetch lock` against an endpoint that published
    none): `what` (a flag, a command) must not trust such files. Exit 6: the lock is incomplete."""
    unhashed = [f"{e.repo}:{f.path}" for e in lock.entries for f in e.files if not f.etag]
    if unhashed:
        raise LockOutdatedError(
            f"{what}: the lockfile records no hash for {len(unhashed)} file(s) (the endpoint it was locked "
            f"against published none): {', '.join(unhashed[:5])}; run `prefetch sync` without --frozen once, "
            "to hash them on first use and record their sha256"
        )


def default_lock_path(manifest_path: Path) -> Path:
    """`models.yaml` -> `models.lock`, beside it."""
    return manifest_path.with_suffix(".lock")


# --------------------------------------------------------------------------------------------------------
# Writing


# libyaml when available: a lock of thousands of files loads and dumps several times faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _LockDumper(_SafeDumper):  # type: ignore[misc,valid-type]
    """SafeDumper whose strings always load back unchanged."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML may emit NEL/LS/PS inside a single-quoted scalar, where reading folds them: escape them instead.
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LockDumper.add_representer(str, _represent_str)


def dump_lock(lock: Lock) -> str:
    """Deterministic YAML: the same Lock always gives the same bytes, so lockfiles diff cleanly in git."""
    data: dict[str, object] = {
        "version": lock.version,
        "tool_version": lock.tool_version,
        "manifest_digest": lock.manifest_digest,
    }
    if lock.cache_dir is not None:
        data["cache_dir"] = lock.cache_dir
    if lock.endpoint is not None:
        data["endpoint"] = lock.endpoint
    data["entries"] = [_entry_data(e) for e in lock.entries]
    body = yaml.dump(
        data,
        Dumper=_LockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,  # never fold long scalars: folding would make the text depend on lengths
        line_break="\n",
    )
    tool = " ".join(lock.tool_version.split())  # a comment must stay on one line
    return f"# prefetch lockfile: generated by prefetch {tool}; do not edit by hand.\n{body}"


def _entry_data(entry: LockedEntry) -> dict[str, object]:
    files: list[dict[str, object]] = []
    for f in sorted(entry.files, key=lambda f: f.path):
        item: dict[str, object] = {"path": f.path, "size": f.size}
        if f.sha256 is not None:
            item["sha256"] = f.sha256
        elif f.git_sha1 is not None:
            item["git_sha1"] = f.git_sha1
        files.append(item)
    return {
        "repo": entry.repo,
        "type": entry.type,
        "revision": entry.revision,
        "commit": entry.commit,
        "include": list(entry.include) if entry.include is not None else None,
        "exclude": list(entry.exclude),
        "entry_digest": entry.entry_digest,
        "files": files,
    }


def write_lock(lock: Lock, path: str | Path) -> None:
    """Atomic replace, so a crash or a full disk never leaves a half-written lockfile behind."""
    target = Path(path)
    try:
        atomic_write(target, dump_lock(lock).encode("utf-8"))
    except OSError as exc:
        if is_disk_full(exc):
            raise  # keeps its errno: the disk-full exit code
        raise LockfileError(f"{target}: cannot write the lockfile: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------------------
# Reading


def load_lock(path: str | Path) -> Lock:
    """Read and validate a lockfile; every problem is a `LockfileError` naming the file (and line:col)."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise LockfileError(f"{name}: no lockfile here (create it by locking the manifest)") from None
    except OSError as exc:
        raise LockfileError(f"{name}: cannot read the lockfile: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LockfileError(f"{name}: the lockfile is not UTF-8 text") from None
    return parse_lock(text, name)


def parse_lock(text: str, path: str) -> Lock:
    """Validate lockfile text; `path` names the file in messages."""
    return _LockReader(path).parse(text)


class _LockReader:
    """Walks the composed YAML nodes so that errors carry line:col and a key path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.constructor = SafeConstructor()

    def fail(self, node: Node | None, key_path: str, message: str) -> NoReturn:
        where = self.path
        if node is not None:
            where += f":{node.start_mark.line + 1}:{node.start_mark.column + 1}"
        raise LockfileError(f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}")

    def parse(self, text: str) -> Lock:
        try:
            root = yaml.compose(text, Loader=_SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{self.path}:{mark.line + 1}:{mark.column + 1}" if mark else self.path
            raise LockfileError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise LockfileError(f"{self.path}: invalid YAML: {exc}") from None
        if root is None:
            self.fail(None, "", "the lockfile is empty")
        top = self.mapping(root, "", _TOP_KEYS, required=("version",), check_unknown=False)
        version_node = top["version"]
        version = self.integer(version_node, "version")
        if version != LOCK_VERSION:
            newer = " (written by a newer prefetch: upgrade, or re-lock)" if version > LOCK_VERSION else ""
            reads = f"prefetch {__version__} reads version {LOCK_VERSION}"
            message = f"unsupported lockfile version {version}: {reads}{newer}"
            self.fail(version_node, "version", message)
        top = self.mapping(
            root, "", _TOP_KEYS, required=("version", "tool_version", "manifest_digest", "entries")
        )
        cache_dir = None
        if "cache_dir" in top and not self.is_null(top["cache_dir"]):
            cache_dir = self.string(top["cache_dir"], "cache_dir")
        endpoint = None
        if "endpoint" in top and not self.is_null(top["endpoint"]):
            endpoint = self.string(top["endpoint"], "endpoint")
        entries_node = top["entries"]
        if not isinstance(entries_node, SequenceNode):
            self.fail(entries_node, "entries", "expected a list of entries")
        entries: list[LockedEntry] = []
        seen: dict[str, int] = {}
        for i, node in enumerate(entries_node.value):
            entry = self.entry(node, f"entries[{i}]")
            if entry.key in seen:
                self.fail(
                    node, f"entries[{i}]", f"duplicate entry {entry.key} (also entries[{seen[entry.key]}])"
                )
            seen[entry.key] = i
            entries.append(entry)
        return Lock(
            manifest_digest=self.matching(
                top["manifest_digest"], "manifest_digest", _DIGEST, "sha256:<64 hex>"
            ),
            tool_version=self.string(top["tool_version"], "tool_version"),
            entries=tuple(entries),
            version=version,
            cache_dir=cache_dir,
            endpoint=endpoint,
        )

    def entry(self, node: Node, key_path: str) -> LockedEntry:
        items = self.mapping(node, key_path, _ENTRY_KEYS, required=_ENTRY_KEYS)
        repo = self.string(items["repo"], f"{key_path}.repo")
        problem = repo_id_problem(repo)
        if problem:
            self.fail(items["repo"], f"{key_path}.repo", f"invalid repo id: {problem}")
        repo_type = self.string(items["type"], f"{key_path}.type")
        if repo_type not in _REPO_TYPES:
            self.fail(items["type"], f"{key_path}.type", f"expected one of {', '.join(_REPO_TYPES)}")
        revision = self.string(items["revision"], f"{key_path}.revision")
        problem = revision_problem(revision)
        if problem:
            self.fail(items["revision"], f"{key_path}.revision", problem)
        include = None
        if not self.is_null(items["include"]):
            include = self.strings(items["include"], f"{key_path}.include")
        files_node = items["files"]
        if not isinstance(files_node, SequenceNode):
            self.fail(files_node, f"{key_path}.files", "expected a list of files")
        files: dict[str, LockedFile] = {}
        for i, child in enumerate(files_node.value):
            locked, path_node = self.file(child, f"{key_path}.files[{i}]")
            if locked.path in files:
                self.fail(path_node, f"{key_path}.files[{i}].path", f"duplicate file path {locked.path!r}")
            files[locked.path] = locked
        return LockedEntry(
            repo=repo,
            type=repo_type,
            revision=revision,
            commit=self.matching(items["commit"], f"{key_path}.commit", _SHA1, "a 40-hex commit"),
            include=include,
            exclude=self.strings(items["exclude"], f"{key_path}.exclude"),
            entry_digest=self.matching(
                items["entry_digest"], f"{key_path}.entry_digest", _DIGEST, "sha256:<64 hex>"
            ),
            files=tuple(files[p] for p in sorted(files)),
        )

    def file(self, node: Node, key_path: str) -> tuple[LockedFile, Node]:
        """One file, and the node of its path (for the caller's duplicate check)."""
        items = self.mapping(node, key_path, _FILE_KEYS, required=("path", "size"))
        path = self.string(items["path"], f"{key_path}.path")
        problem = unsafe_path_reason(path)
        if problem:
            self.fail(items["path"], f"{key_path}.path", f"unsafe file path {path!r}: {problem}")
        size = self.integer(items["size"], f"{key_path}.size")
        if "sha256" in items and "git_sha1" in items:
            self.fail(
                node, key_path, "expected one of sha256 (LFS files) or git_sha1 (other files), not both"
            )
        sha256 = git_sha1 = None
        if "sha256" in items:
            sha256 = self.matching(items["sha256"], f"{key_path}.sha256", _SHA256, "64 lowercase hex digits")
        elif "git_sha1" in items:
            git_sha1 = self.matching(
                items["git_sha1"], f"{key_path}.git_sha1", _SHA1, "40 lowercase hex digits"
            )
        return LockedFile(path=path, size=size, sha256=sha256, git_sha1=git_sha1), items["path"]

    # ---- generic readers

    def mapping(
        self,
        node: Node,
        key_path: str,
        allowed: tuple[str, ...],
        required: tuple[str, ...],
        check_unknown: bool = True,
    ) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            self.fail(node, key_path, "expected a mapping")
        items: dict[str, Node] = {}
        for key_node, value in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                self.fail(key_node, key_path, "expected a plain string key")
            key = key_node.value
            sub_path = f"{key_path}.{key}" if key_path else key
            if check_unknown and key not in allowed:
                self.fail(key_node, sub_path, f"unknown key {key!r} (allowed: {', '.join(allowed)})")
            if key in items:
                self.fail(key_node, sub_path, f"duplicate key {key!r}")
            items[key] = value
        for key in required:
            if key not in items:
                self.fail(node, key_path, f"missing required key {key!r}")
        return items

    @staticmethod
    def is_null(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"

    def string(self, node: Node, key_path: str) -> str:
        if not (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str"):
            self.fail(node, key_path, "expected a string")
        return node.value

    def matching(self, node: Node, key_path: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.string(node, key_path)
        if not pattern.fullmatch(value):
            self.fail(node, key_path, f"expected {what}, got {value!r}")
        return value

    def integer(self, node: Node, key_path: str) -> int:
        value: object = None
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            try:
                value = self.constructor.construct_object(node)
            except ConstructorError:
                value = None
        if not isinstance(value, int) or value < 0:
            self.fail(node, key_path, "expected an integer >= 0")
        return value

    def strings(self, node: Node, key_path: str) -> tuple[str, ...]:
        if not isinstance(node, SequenceNode):
            self.fail(node, key_path, "expected a list of strings")
        return tuple(self.string(child, f"{key_path}[{i}]") for i, child in enumerate(node.value))


# --------------------------------------------------------------------------------------------------------
# Comparing


def diff_lock(lock: Lock, manifest: Manifest) -> list[str]:
    """What makes the lock stale for this manifest, one human line each; empty when it matches."""
    lines: list[str] = []
    wanted = {e.key for e in manifest.entries}
    for entry in manifest.entries:
        locked = lock.entry(entry.key)
        if locked is None:
            lines.append(f"added: {entry.label} is in the manifest but not in the lockfile")
        elif locked.entry_digest != entry.digest():
            lines.append(f"changed: {entry.label}: {_changed_fields(locked, entry)}")
    for locked in lock.entries:
        if locked.key not in wanted:
            lines.append(f"removed: {locked.key} is in the lockfile but no longer in the manifest")
    if lines:
        return lines
    if [e.key for e in lock.entries] != [e.key for e in manifest.entries]:
        return ["reordered: the manifest lists its entries in another order than the lockfile"]
    if lock.manifest_digest != manifest.digest():
        return ["changed: the lockfile's manifest_digest does not match the manifest"]
    return []


def _changed_fields(locked: LockedEntry, entry: Entry) -> str:
    changes = []
    if locked.include != entry.include:
        changes.append(f"include {_patterns(locked.include)} -> {_patterns(entry.include)}")
    if locked.exclude != entry.exclude:
        changes.append(f"exclude {_patterns(locked.exclude)} -> {_patterns(entry.exclude)}")
    return "; ".join(changes) or "entry_digest differs (the lockfile was written for another definition)"


def _patterns(patterns: tuple[str, ...] | None) -> str:
    return "(every file)" if patterns is None else json.dumps(list(patterns), ensure_ascii=False)
