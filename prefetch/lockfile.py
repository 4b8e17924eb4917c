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
from prefetch.hfhub import REPO_TYPES, repo_id_problem
from prefetch.paths import revision_problem, unsafe_path_reason

if TYPE_CHECKING:
    from prefetch.manifest import Entry, Manifest

LOCK_VERSION = 1

_TOP_KEYS = ("version", "tool_version", "manifest_digest", "cache_dir", "endpoint", "entries")
_ENTRY_KEYS = ("repo", "type", "revision", "commit", "include", "exclude", "entry_digest", "files")
_FILE_KEYS = ("path", "size", "sha256", "git_sha1")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)  # slots: a lock may hold 100k of them
class LockedFile:
    path: str  # repo-relative, '/'-separated
    size: int
    sha256: str | None = None  # set for LFS files
    git_sha1: str | None = None  # set for regular files (git blob sha1; see `hashing.GitOidHash`)
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
    """Deterministic YAML: the same Lock always gives the same bytes, so lockfiles diff cleanly in git.

    Files lists are written line by line where every value is one `_ITEM` reads (PyYAML's emitter
    costs ~70 us and ~2 KB per file); the text is the same as PyYAML's (tests/test_lockfile.py).
    """
    return "".join(_lock_chunks(lock))


def _lock_chunks(lock: Lock) -> list[str]:
    """`dump_lock`'s text in pieces (each entry's files list one piece), so that `write_lock` never holds
    a 100k-file lock as a whole string (and its encoded copy) beside the pieces."""
    blocks = [_files_text(e.files) for e in lock.entries]
    body = _yaml_body(lock, fast=[b is not None for b in blocks])
    placeholder = f"\n{_EMPTY_FILES}"
    empty = [b for e, b in zip(lock.entries, blocks, strict=True) if b is not None or not e.files]
    parts = body.split(placeholder)
    tool = " ".join(lock.tool_version.split())  # a comment must stay on one line
    chunks = [f"# prefetch lockfile: generated by prefetch {tool}; do not edit by hand.\n"]
    if len(parts) != len(empty) + 1:  # a string of the lock made a line like it: PyYAML writes it all
        return [*chunks, _yaml_body(lock, fast=[False] * len(blocks))]
    chunks.append(parts[0])
    for b, rest in zip(empty, parts[1:], strict=True):
        chunks += ["\n", b or _EMPTY_FILES, rest]
    return chunks


_EMPTY_FILES = "  files: []\n"


def _files_text(files: tuple[LockedFile, ...]) -> str | None:
    """An entry's files list as PyYAML writes it, or None when a value needs PyYAML to tell how."""
    if not files:
        return None
    lines = ["  files:\n"]
    for f in sorted(files, key=lambda f: f.path):
        path = f.path
        if not _PATH.fullmatch(path) or path.startswith("..."):  # `...`: PyYAML quotes a document marker
            return None
        if not _plain_str(path):
            path = f"'{path}'"
        key, digest = ("sha256", f.sha256) if f.sha256 is not None else ("git_sha1", f.git_sha1)
        digest_text = _hex_text(digest or "")
        if digest_text is None:
            return None
        lines.append(f"  - path: {path}\n    size: {f.size}\n    {key}: {digest_text}\n")
    return "".join(lines)


def _hex_text(value: str) -> str | None:
    """A lowercase hex digest as PyYAML writes it: quoted when YAML would read a number; else None."""
    if _PLAIN_HEX.fullmatch(value):
        return value
    return f"'{value}'" if _HEX.fullmatch(value) else None


def _yaml_body(lock: Lock, fast: list[bool]) -> str:
    """The lock as PyYAML writes it; the files of entries marked `fast` as `[]`, filled in by the caller."""
    data: dict[str, object] = {
        "version": lock.version,
        "tool_version": lock.tool_version,
        "manifest_digest": lock.manifest_digest,
    }
    if lock.cache_dir is not None:
        data["cache_dir"] = lock.cache_dir
    if lock.endpoint is not None:
        data["endpoint"] = lock.endpoint
    data["entries"] = [_entry_data(e, with_files=not f) for e, f in zip(lock.entries, fast, strict=True)]
    return yaml.dump(
        data,
        Dumper=_LockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,  # never fold long scalars: folding would make the text depend on lengths
        line_break="\n",
    )


def _entry_data(entry: LockedEntry, with_files: bool = True) -> dict[str, object]:
    files: list[dict[str, object]] = []
    for f in sorted(entry.files, key=lambda f: f.path) if with_files else ():
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
        atomic_write(target, (chunk.encode("utf-8") for chunk in _lock_chunks(lock)))
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
    """Validate lockfile text; `path` names the file in messages.

    Files lists in the layout `dump_lock` writes are read line by line (`_fast_files`): composing
    YAML nodes costs ~50 us per file even with libyaml, seconds for a 100k-file repo. Anything else,
    and every invalid lockfile, goes through the YAML reader, whose messages carry line:col.
    """
    fast = _split_files_blocks(text)
    if fast is not None:
        skeleton, blocks = fast
        try:
            lock = _LockReader(path, blocks).parse(skeleton)
        except LockfileError:
            lock = None  # the YAML reader below says where, in the lockfile's own lines
        if lock is not None and not blocks:  # every fast-read block was used where it stood
            return lock
    return _LockReader(path).parse(text)


_FILES_KEY = re.compile(r"^  files:\n", re.MULTILINE)  # an entry's files list, as `dump_lock` writes it
# One file item as `dump_lock` writes it, each value plain or single-quoted: a plain path of these
# characters, or a plain hex with a letter in it, is a string by YAML's rules (`_plain_str` checks
# the paths that could be something else); anything else is left to the YAML reader.
_PLAIN_PATH = r"[A-Za-z0-9_.][A-Za-z0-9_./+=@~-]*"
_PATH = re.compile(_PLAIN_PATH)
# Hex with a letter in it is a string for YAML, unless it reads as a binary int (0b0101...).
_PLAIN_HEX_RULE = r"(?=[0-9]*[a-f])(?!0b[01]*(?![0-9a-f]))[0-9a-f]"
_PLAIN_HEX = re.compile(_PLAIN_HEX_RULE + "+")
_HEX = re.compile("[0-9a-f]+")
_ITEM = re.compile(
    rf"  - path: (?:({_PLAIN_PATH})|'([A-Za-z0-9_./+=@~ :-]*)')\n"
    r"    size: (0|[1-9][0-9]*)\n"
    rf"    (?:sha256: (?:({_PLAIN_HEX_RULE}{{64}})|'([0-9a-f]{{64}})')"
    rf"|git_sha1: (?:({_PLAIN_HEX_RULE}{{40}})|'([0-9a-f]{{40}})'))\n"
)
_ITEM_CONTINUES = ("  - ", "    ")  # what a line of a files list starts with
_RESOLVER = yaml.resolver.Resolver()


def _split_files_blocks(text: str) -> tuple[str, dict[int, tuple[LockedFile, ...]]] | None:
    """(the text with each entry's files list replaced by `[]`, line of each `[]` -> its files),
    or None when a files list is not in `dump_lock`'s layout or is invalid."""
    skeleton: list[str] = []
    blocks: dict[int, tuple[LockedFile, ...]] = {}
    line, done = 0, 0
    for key in _FILES_KEY.finditer(text):
        if key.start() < done:
            return None
        files: dict[str, LockedFile] = {}
        pos = key.end()
        while item := _ITEM.match(text, pos):
            path = item[1] if item[1] is not None else item[2]
            if path in files or unsafe_path_reason(path) or (item[1] is not None and not _plain_str(path)):
                return None
            size = int(item[3])
            if item[4] is not None or item[5] is not None:
                files[path] = LockedFile(path=path, size=size, sha256=item[4] or item[5])
            else:
                files[path] = LockedFile(path=path, size=size, git_sha1=item[6] or item[7])
            pos = item.end()
        if not files or text.startswith(_ITEM_CONTINUES, pos):
            return None
        before = text[done : key.start()]
        line += before.count("\n")
        skeleton += [before, "  files: []\n"]
        blocks[line] = tuple(files[p] for p in sorted(files))
        line += 1
        done = pos
    if not blocks:
        return None
    skeleton.append(text[done:])
    return "".join(skeleton), blocks


def _plain_str(scalar: str) -> bool:
    """Whether YAML reads this plain scalar (of `_ITEM`'s path characters) as a string."""
    if "/" in scalar or scalar[0] not in _RESOLVER.yaml_implicit_resolvers:
        return True  # no implicit type (bool, int, float, null, timestamp, merge) has a '/' or starts so
    return bool(_RESOLVER.resolve(ScalarNode, scalar, (True, False)) == "tag:yaml.org,2002:str")


class _LockReader:
    """Walks the composed YAML nodes so that errors carry line:col and a key path."""

    def __init__(self, path: str, fast_files: dict[int, tuple[LockedFile, ...]] | None = None) -> None:
        self.path = path
        self.constructor = SafeConstructor()
        # Files lists `_split_files_blocks` read, by the line of the `[]` that stands for each:
        # taken (and removed) by the entry whose `files` is there.
        self.fast_files = fast_files if fast_files is not None else {}

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
        if repo_type not in REPO_TYPES:
            self.fail(items["type"], f"{key_path}.type", f"expected one of {', '.join(REPO_TYPES)}")
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
        fast = self.fast_files.pop(files_node.start_mark.line, None) if not files_node.value else None
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
            files=fast if fast is not None else tuple(files[p] for p in sorted(files)),
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
