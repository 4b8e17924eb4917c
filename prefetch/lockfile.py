"""The lockfile (`models.lock`): pure data, no network. Deterministic YAML, written atomically.

A lockfile is input too (`--frozen`, `verify`), and its paths and revisions become file names in the
cache, so loading it validates every field strictly: a hostile lockfile must not reach outside the cache.
The YAML is read as located nodes (`located_yaml`, shared with the manifest); this module holds only the
lockfile's own entries and files.

Files lists, the bulk of a big lock, are written and read line by line in the layout PyYAML gives them
(`_files_text`, `_split_files_blocks`): YAML nodes cost too much per file. Measured on the shared 2-core
test machine, best of 5, one entry of 30,000 files (3.5 MB of lock; 100,000 files: 11.6 MB):

  line by line:  load 0.10 s (100k: 0.44 s)   dump 0.05 s (100k: 0.17 s)
  YAML nodes:    load 1.1-2.0 s (libyaml composing alone)   dump 1.05 s and 70 MB (libyaml's emitter)

So nodes alone would load 30k files 4-7 times over the 0.3 s budget, and PyYAML's writer takes 20 times
as long and, at 100k files, 255 MB at its peak: past the 120 MB a 100k-file sync may use in all. A layout
that needs no such writer (one JSON line per file, say) would change the bytes of every committed
lockfile, and old locks would still need this reader to load in time. Hence the layout stays, both
directions stay line by line, on one grammar (`_ITEM`, `_plain_str`, derived from PyYAML's resolver):
a value is written plain only where it reads back as that string; anything else (other characters,
no hash yet) goes, per entry, through PyYAML and the YAML reader, whose texts the tests hold it to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml
from yaml.nodes import Node, SequenceNode

from prefetch import __version__
from prefetch.errors import LockfileError, LockOutdatedError
from prefetch.files import atomic_write, is_disk_full
from prefetch.hfhub import REPO_TYPES, repo_id_problem
from prefetch.located_yaml import STR, YamlReader
from prefetch.manifest import TOP_KEYS as MANIFEST_KEYS
from prefetch.manifest import Entry, Manifest
from prefetch.paths import revision_problem, unsafe_path_reason

LOCK_VERSION = 1

_TOP_KEYS = ("version", "tool_version", "manifest_digest", "cache_dir", "endpoint", "entries")
_ENTRY_KEYS = ("repo", "type", "revision", "commit", "include", "exclude", "entry_digest", "files")
_FILE_KEYS = ("path", "size", "sha256", "git_sha1", "xet_hash")
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
    xet_hash: str | None = None  # an LFS file stored in Xet: how it is fetched (`prefetch.xet`), never
    # what it is checked against (its sha256 is); written only where the Hub gave one.

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

# libyaml's emitter when available: the parts PyYAML writes (all but the files lists) go faster.
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _LockDumper(_SafeDumper):  # type: ignore[misc,valid-type]
    """SafeDumper whose strings always load back unchanged."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML may emit NEL/LS/PS inside a single-quoted scalar, where reading folds them: escape them instead.
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar(STR, value, style=style)


_LockDumper.add_representer(str, _represent_str)


def dump_lock(lock: Lock) -> str:
    """Deterministic YAML: the same Lock always gives the same bytes, so lockfiles diff cleanly in git.
    The text is PyYAML's for the whole lock, files lists included (tests/test_lockfile.py)."""
    return "".join(_lock_chunks(lock))


def _lock_chunks(lock: Lock) -> Iterator[str]:
    """`dump_lock`'s text in pieces, so that `write_lock` never holds a 100k-file lock as a whole string
    (and its encoded copy) beside the pieces. PyYAML writes the top keys and each entry (files last, as
    `[]`); a files list in `_ITEM`'s layout is written line by line in place of that `[]`."""
    tool = " ".join(lock.tool_version.split())  # a comment must stay on one line
    yield f"# prefetch lockfile: generated by prefetch {tool}; do not edit by hand.\n"
    yield _yaml_text(_top_data(lock))
    if not lock.entries:
        yield _yaml_text({"entries": []})
        return
    yield "entries:\n"  # a block list under a top key is not indented: its items are written as at the top
    for entry in lock.entries:
        files = _files_text(entry.files)
        if files is None:
            yield _yaml_text([_entry_data(entry)])
        else:
            yield _yaml_text([_entry_data(entry, with_files=False)]).removesuffix(_EMPTY_FILES)
            yield files


_EMPTY_FILES = "  files: []\n"  # how PyYAML ends an entry with no files


def _yaml_text(data: object) -> str:
    return yaml.dump(
        data,
        Dumper=_LockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,  # never fold long scalars: folding would make the text depend on lengths
        line_break="\n",
    )


def _top_data(lock: Lock) -> dict[str, object]:
    """The lock's keys before `entries`, in the order they are written."""
    data: dict[str, object] = {
        "version": lock.version,
        "tool_version": lock.tool_version,
        "manifest_digest": lock.manifest_digest,
    }
    if lock.cache_dir is not None:
        data["cache_dir"] = lock.cache_dir
    if lock.endpoint is not None:
        data["endpoint"] = lock.endpoint
    return data


def _entry_data(entry: LockedEntry, with_files: bool = True) -> dict[str, object]:
    files: list[dict[str, object]] = []
    for f in sorted(entry.files, key=_by_path) if with_files else ():
        item: dict[str, object] = {"path": f.path, "size": f.size}
        if f.sha256 is not None:
            item["sha256"] = f.sha256
        elif f.git_sha1 is not None:
            item["git_sha1"] = f.git_sha1
        if f.xet_hash is not None:
            item["xet_hash"] = f.xet_hash
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


def _by_path(file: LockedFile) -> str:
    return file.path


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
# Files lists line by line: one grammar for writing and reading

# A value written plain: of these characters, and a string by YAML's rules (`_plain_str`). Single-quoted,
# a value of the second set reads back as itself. Anything else is PyYAML's to write and the YAML
# reader's to read.
_PLAIN = r"[A-Za-z0-9_.][A-Za-z0-9_./+=@~-]*"
_PLAIN_VALUE = re.compile(_PLAIN)
_QUOTED = r"'([A-Za-z0-9_./+=@~ :-]*)'"
_ITEM = re.compile(
    rf"  - path: (?:({_PLAIN})|{_QUOTED})\n"
    r"    size: (0|[1-9][0-9]{0,18})\n"  # 19 digits at most: a longer one is the YAML reader's to refuse
    r"    (?:sha256: (?:([0-9a-f]{64})|'([0-9a-f]{64})')|git_sha1: (?:([0-9a-f]{40})|'([0-9a-f]{40})'))\n"
    r"(?:    xet_hash: (?:([0-9a-f]{64})|'([0-9a-f]{64})')\n)?"  # (only after a sha256: else the YAML reader's)
)
_ITEM_CONTINUES = ("  - ", "    ")  # what a line of a files list starts with
_FILES_KEY = re.compile(r"^  files:\n", re.MULTILINE)  # an entry's files list, as `_files_text` writes it
# YAML's implicit types (bool, int, float, null, timestamp, merge...) as PyYAML's resolver has them:
# the characters they start with, and their patterns as one regex (each with its own flags). A plain
# scalar none of them matches is a string.
_IMPLICIT_FIRST = frozenset(yaml.resolver.Resolver.yaml_implicit_resolvers)
_IMPLICIT = re.compile(
    "|".join(
        dict.fromkeys(
            f"(?{'x' if regexp.flags & re.VERBOSE else ''}:{regexp.pattern})"
            for resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.values()
            for _, regexp in resolvers
        )
    )
)


def _plain_str(scalar: str) -> bool:
    """Whether YAML reads this plain scalar (of `_PLAIN`'s characters) as a string."""
    return "/" in scalar or scalar[0] not in _IMPLICIT_FIRST or not _IMPLICIT.match(scalar)  # none has a '/'


def _value_text(value: str) -> str | None:
    """A value of `_PLAIN`'s characters as PyYAML writes it: plain if YAML reads it back as a string,
    else single-quoted; None for any other value. (`...` begins a document end marker: PyYAML quotes it.)"""
    if not _PLAIN_VALUE.fullmatch(value) or value.startswith("..."):
        return None
    return value if _plain_str(value) else f"'{value}'"


def _files_text(files: tuple[LockedFile, ...]) -> str | None:
    """An entry's files list as PyYAML writes it, or None when a value needs PyYAML to tell how."""
    if not files:
        return None
    lines = ["  files:\n"]
    for f in sorted(files, key=_by_path):
        key, digest = ("sha256", f.sha256) if f.sha256 is not None else ("git_sha1", f.git_sha1 or "")
        path_text, digest_text = _value_text(f.path), _value_text(digest)
        xet_text = "" if f.xet_hash is None else _value_text(f.xet_hash)
        if path_text is None or digest_text is None or xet_text is None:
            return None
        xet_line = f"    xet_hash: {xet_text}\n" if xet_text else ""
        lines.append(f"  - path: {path_text}\n    size: {f.size}\n    {key}: {digest_text}\n{xet_line}")
    return "".join(lines)


def _split_files_blocks(text: str) -> tuple[str, dict[int, tuple[LockedFile, ...]]] | None:
    """(the text with each entry's files list replaced by `[]`, line of each `[]` -> its files),
    or None when a files list is not in `_ITEM`'s layout or is invalid."""
    skeleton: list[str] = []
    blocks: dict[int, tuple[LockedFile, ...]] = {}
    line, done = 0, 0
    for key in _FILES_KEY.finditer(text):
        if key.start() < done:
            return None
        files: dict[str, LockedFile] = {}
        pos = key.end()
        while item := _ITEM.match(text, pos):
            (
                path_plain,
                path_quoted,
                size,
                sha256,
                sha256_quoted,
                git_sha1,
                git_sha1_quoted,
                xet,
                xet_quoted,
            ) = item.groups()
            path = path_quoted if path_plain is None else path_plain
            digest_plain = sha256 or git_sha1
            if (
                path in files
                or unsafe_path_reason(path)
                or (path_plain is not None and not _plain_str(path_plain))
                or (digest_plain is not None and not _plain_str(digest_plain))
                or (xet is not None and not _plain_str(xet))
                or ((xet or xet_quoted) and not (sha256 or sha256_quoted))
            ):
                return None
            if sha256 or sha256_quoted:
                files[path] = LockedFile(
                    path, int(size), sha256=sha256 or sha256_quoted, xet_hash=xet or xet_quoted
                )
            else:
                files[path] = LockedFile(path, int(size), git_sha1=git_sha1 or git_sha1_quoted)
            pos = item.end()
        if not files or text.startswith(_ITEM_CONTINUES, pos):
            return None
        before = text[done : key.start()]
        line += before.count("\n")
        skeleton += [before, _EMPTY_FILES]
        blocks[line] = tuple(files[p] for p in sorted(files))
        line += 1
        done = pos
    if not blocks:
        return None
    skeleton.append(text[done:])
    return "".join(skeleton), blocks


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

    Files lists in `_ITEM`'s layout are read line by line (`_split_files_blocks`), the rest as YAML
    nodes. Anything else, and every invalid lockfile, goes through the YAML reader alone, whose
    messages carry the lockfile's own line:col.
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


def _located(path: str, line: int, column: int, key_path: str, message: str) -> LockfileError:
    where = f"{path}:{line}:{column}"
    return LockfileError(f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}")


class _LockReader(YamlReader):
    """The lockfile's entries and files, on the shared located-YAML reader (no merge keys: a lockfile is
    written by prefetch, never with `<<`)."""

    def __init__(self, path: str, fast_files: dict[int, tuple[LockedFile, ...]] | None = None) -> None:
        super().__init__(path, partial(_located, path), merge_keys=False)
        # Files lists `_split_files_blocks` read, by the line of the `[]` that stands for each:
        # taken (and removed) by the entry whose `files` is there.
        self.fast_files = fast_files if fast_files is not None else {}

    def parse(self, text: str) -> Lock:
        root = self.compose(text)
        if root is None:
            raise LockfileError(f"{self.path}: the lockfile is empty")
        top = self.keys(root, "")
        if "entries" not in top and any(key in top for key in MANIFEST_KEYS if key not in _TOP_KEYS):
            lock_name = default_lock_path(Path(self.path)).name
            message = (
                "this is a manifest, not a lockfile: pass the lockfile written from it (e.g. "
                f"{lock_name}, beside it; `prefetch lock` writes it)"
            )
            self.fail(root, "", message)
        version_node = self.require(top, root, "", "version")
        version = self.integer(version_node, "version", 0)
        if version != LOCK_VERSION:
            newer = " (written by a newer prefetch: upgrade, or re-lock)" if version > LOCK_VERSION else ""
            reads = f"prefetch {__version__} reads version {LOCK_VERSION}"
            message = f"unsupported lockfile version {version}: {reads}{newer}"
            self.fail(version_node, "version", message)
        top = self.mapping(
            root, "", _TOP_KEYS, required=("version", "tool_version", "manifest_digest", "entries")
        )
        entries_node = top["entries"].value
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
                top["manifest_digest"].value, "manifest_digest", _DIGEST, "sha256:<64 hex>"
            ),
            tool_version=self.string(top["tool_version"].value, "tool_version"),
            entries=tuple(entries),
            version=version,
            cache_dir=self.optional(top, "cache_dir", "", self.string),
            endpoint=self.optional(top, "endpoint", "", self.string),
        )

    def entry(self, node: Node, key_path: str) -> LockedEntry:
        items = self.values(node, key_path, _ENTRY_KEYS, required=_ENTRY_KEYS)
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
        items = self.values(node, key_path, _FILE_KEYS, required=("path", "size"))
        path = self.string(items["path"], f"{key_path}.path")
        problem = unsafe_path_reason(path)
        if problem:
            self.fail(items["path"], f"{key_path}.path", f"unsafe file path {path!r}: {problem}")
        size = self.integer(items["size"], f"{key_path}.size", 0)
        if "sha256" in items and "git_sha1" in items:
            self.fail(
                node, key_path, "expected one of sha256 (LFS files) or git_sha1 (other files), not both"
            )
        sha256 = git_sha1 = xet_hash = None
        if "sha256" in items:
            sha256 = self.matching(items["sha256"], f"{key_path}.sha256", _SHA256, "64 lowercase hex digits")
        elif "git_sha1" in items:
            git_sha1 = self.matching(
                items["git_sha1"], f"{key_path}.git_sha1", _SHA1, "40 lowercase hex digits"
            )
        if "xet_hash" in items:
            if sha256 is None:
                self.fail(items["xet_hash"], f"{key_path}.xet_hash", "only an LFS file (with sha256) has one")
            xet_hash = self.matching(
                items["xet_hash"], f"{key_path}.xet_hash", _SHA256, "64 lowercase hex digits"
            )
        locked = LockedFile(path=path, size=size, sha256=sha256, git_sha1=git_sha1, xet_hash=xet_hash)
        return locked, items["path"]

    def values(
        self, node: Node, key_path: str, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> dict[str, Node]:
        """`mapping`'s keys and their values (a lockfile's keys are all plain: no merge to trace back)."""
        return {key: item.value for key, item in self.mapping(node, key_path, allowed, required).items()}

    def matching(self, node: Node, key_path: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.string(node, key_path)
        if not pattern.fullmatch(value):
            self.fail(node, key_path, f"expected {what}, got {value!r}")
        return value


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
