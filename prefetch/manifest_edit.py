"""Editing a manifest from the command line (`prefetch init`, `add`, `remove`), as `uv init/add/remove` do.

An entry is added or removed as lines of the file's text (`manifest_text`), so every other byte is kept:
comments, order, quoting, spacing. ruamel.yaml's round-trip tree (quotes preserved) says where entries
are, and its dump is the fallback where the list is not a block list; reading and validating stay with
`manifest.py`. Every edit is validated as a whole manifest before it is written, atomically, so a
failed edit changes nothing.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from prefetch import manifest_text
from prefetch.cancel import CancelToken
from prefetch.errors import ManifestError, PrefetchError, UsageError
from prefetch.files import atomic_write
from prefetch.hfhub import REPO_TYPES, repo_id_problem
from prefetch.lockfile import default_lock_path, load_lock, write_lock
from prefetch.manifest import Manifest, parse_manifest
from prefetch.paths import revision_problem

if TYPE_CHECKING:
    from prefetch.run import Settings

__all__ = ["REPO_TYPES", "EntryRequest", "add_entry", "init_manifest", "remove_entry"]

QUICKSTART_COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"  # sentence-transformers/all-MiniLM-L6-v2

STARTER = f"""\
# prefetch manifest: the Hugging Face Hub repos this project needs.
#
#   prefetch sync            downloads them into the Hugging Face cache and writes models.lock
#   prefetch add ORG/NAME    adds an entry (comments and layout of this file are kept)
#   prefetch status          shows what is locked, cached, partial or missing
#
# Every key is described in prefetch's README ("The manifest").
version: 1

# cache_dir: /models/hub          # default: HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub
# endpoint: https://huggingface.co

# defaults:                       # applied to every entry; an entry's own include/exclude replace them
#   include: ["*.json", "*.safetensors", "tokenizer*"]

repos:
  # A small public model, pinned to a commit (a branch or tag works too: `revision: main`).
  # Replace it with your own, or keep it to try prefetch.
  - repo: sentence-transformers/all-MiniLM-L6-v2
    revision: {QUICKSTART_COMMIT}
    include: ["*.json", "model.safetensors", "vocab.txt"]
"""


@dataclass(frozen=True)
class EntryRequest:
    """An entry as the command line names it: `REPO[@REVISION]`, a type, and the optional keys to write."""

    repo: str
    type: str = "model"
    revision: str | None = None  # None: not said (add: the manifest's default; remove/path: any)
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    gated: bool | None = None
    token_env: str | None = None

    @classmethod
    def parse(cls, spec: str, repo_type: str = "model", **keys: Any) -> EntryRequest:
        repo, _, revision = spec.partition("@")
        problem = repo_id_problem(repo) or (
            None if "/" in repo else f"{repo!r} needs the 'namespace/name' form"
        )
        if problem:
            raise UsageError(f"invalid repo id {spec!r}: {problem}")
        if "@" in spec:
            problem = revision_problem(revision)
            if problem:
                raise UsageError(f"invalid revision in {spec!r}: {problem}")
        return cls(repo, repo_type, revision or None, **keys)

    @property
    def label(self) -> str:
        kind = "" if self.type == "model" else f"{self.type}:"
        return f"{kind}{self.repo}" + (f"@{self.revision}" if self.revision else "")

    def yaml_entry(self, double_quoted: bool = False) -> CommentedMap:
        """The entry as it is written: only the keys that were given, lists in flow style (their patterns
        in double quotes if `double_quoted`: as the file writes its own)."""
        entry = CommentedMap(repo=self.repo)
        if self.type != "model":
            entry["type"] = self.type
        if self.revision:
            entry["revision"] = self.revision
        for key, patterns in (("include", self.include), ("exclude", self.exclude)):
            if patterns:
                quoted = tuple(DoubleQuotedScalarString(p) for p in patterns) if double_quoted else patterns
                entry[key] = flow_list(quoted)
        if self.gated is not None:
            entry["gated"] = self.gated
        if self.token_env:
            entry["token_env"] = self.token_env
        return entry


@dataclass
class EditResult:
    """What an edit changed: the manifest, and the lockfile's changes (None: the lock was not touched)."""

    action: str  # "added" | "removed"
    manifest: Path
    entry: str
    lock_path: Path | None = None
    lock_changes: list[str] | None = None
    note: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)  # the access check's, about the entry

    def render(self) -> str:
        lines = [f"{self.action} {self.entry} in {self.manifest}"]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.lock_path is not None:
            lines += [*(self.lock_changes or []), f"updated {self.lock_path}"]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "manifest": str(self.manifest),
            "entry": self.entry,
            "lockfile": str(self.lock_path) if self.lock_path else None,
            "lock_changes": self.lock_changes,
            "warnings": self.warnings,
        }


def flow_list(items: tuple[str, ...] | tuple[DoubleQuotedScalarString, ...]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def init_manifest(path: str | Path) -> Path:
    """Write the starter manifest at `path`; an existing file is never overwritten."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{path} already exists: `prefetch add ORG/NAME -m {path}` adds entries to it")
    parse_manifest(STARTER, str(path))  # the starter must always be valid
    atomic_write(path, STARTER.encode())
    return path


class RoundTrip:
    """A manifest loaded for editing: the ruamel tree, and the indentation it was written with."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.original = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise UsageError(
                f"{path}: no such manifest file: create one with `prefetch init {path}`"
            ) from None
        self.manifest = parse_manifest(self.original, str(path))  # edit only valid manifests
        loader = YAML()
        loader.preserve_quotes = True  # (else `"v1.0"` is dumped as `v1.0`, `["*.json"]` as `['*.json']`)
        self.data, indent, sequence_offset = load_yaml_guess_indent(self.original, yaml=loader)
        self.yaml = self._layout(indent or 2, sequence_offset or 0)

    def _layout(self, indent: int, sequence_offset: int) -> YAML:
        """The indentation that dumps the unedited file back byte for byte (ruamel's guess covers only
        files whose mappings and sequences share one indent); else the guess."""
        guessed = _round_trip_yaml(indent, indent, sequence_offset)
        candidates = [
            _round_trip_yaml(mapping, offset + step, offset)
            for mapping in (2, 4, 3)
            for offset in (0, 2, 4)
            for step in (2, 4)
        ]
        return next((y for y in [guessed, *candidates] if _dump(y, self.data) == self.original), guessed)

    @property
    def repos(self) -> CommentedSeq:
        return self.data["repos"]

    def dump(self) -> str:
        return _dump(self.yaml, self.data)

    def append(self, request: EntryRequest) -> str:
        """The text with `request`'s entry after the last one: the file's own lines kept byte for byte
        (`manifest_text.appended`), or where its list is not a block list, ruamel's dump."""
        entry = request.yaml_entry(double_quoted='["' in self.original or '[ "' in self.original)
        spliced = manifest_text.appended(self.original, self.repos, _dump(self.yaml, entry).splitlines())
        self.repos.append(entry)
        return self._checked(spliced)

    def remove(self, index: int) -> str:
        """The text without the entry `index`, every other line kept (`manifest_text.removed`)."""
        spliced = manifest_text.removed(self.original, self.repos, index)
        del self.repos[index]
        return self._checked(spliced)

    def _checked(self, spliced: str | None) -> str:
        """The spliced text if it means what the edited tree means (else, or without one, the tree's dump)."""
        dumped = self.dump()
        if spliced is not None:
            try:
                if (
                    parse_manifest(spliced, str(self.path)).digest()
                    == parse_manifest(dumped, str(self.path)).digest()
                ):
                    return spliced
            except PrefetchError:
                pass
        return dumped

    def write(self, text: str) -> Manifest:
        """Validate the edited text as a whole manifest, then replace the file atomically."""
        manifest = parse_manifest(text, str(self.path))
        atomic_write(self.path, text.encode())
        return manifest

    def restore(self) -> None:
        atomic_write(self.path, self.original.encode())


def _round_trip_yaml(mapping: int, sequence: int, offset: int) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _dump(yaml: YAML, data: Any) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def add_entry(
    path: str | Path,
    request: EntryRequest,
    *,
    settings: Settings | None = None,
    cancel: CancelToken | None = None,
) -> EditResult:
    """Append an entry, then (unless `settings` is None, i.e. `--no-check`) resolve it against the Hub,
    check access to it, and update the lockfile; if any of that fails the manifest is restored."""
    from prefetch import sync as sync_mod  # the network side, only when asked for

    doc = RoundTrip(Path(path))
    if any(_matches(e.repo, e.type, e.revision, request) for e in doc.manifest.entries):
        raise UsageError(f"{doc.path} already lists {request.label}: edit that entry instead")
    manifest = doc.write(doc.append(request))
    added = manifest.entries[-1]
    result = EditResult(
        "added", doc.path, added.key.split(":", 1)[1] if request.type == "model" else added.key
    )
    if settings is None:
        result.note = f"not checked against the Hub (--no-check): run `prefetch lock {doc.path}` to lock it"
        return result
    try:
        report = sync_mod.check(doc.path, settings=settings, cancel=cancel, keys={added.key})
        if not report.ok:
            raise report.error()
        locked = sync_mod.lock(doc.path, settings=settings, required={added.key}, cancel=cancel)
    except ManifestError as e:
        doc.restore()
        raise _in_the_added_entry(e, f"repos[{added.index}]", request, doc.path) or e from None
    except BaseException:
        doc.restore()
        raise
    result.lock_path, result.lock_changes = locked.lock_path, locked.changes
    if locked.report is not None:  # other entries this endpoint cannot serve: left out of the lock, said
        left = "; ".join(f"{r.entry.label}: {r.problem}" for r in locked.report.results if not r.ok)
        result.note = f"not locked (`prefetch check` says why and what to do): {left}"
    result.warnings = [w for row in report.results for w in row.warnings]
    return result


def _in_the_added_entry(
    error: ManifestError, key: str, request: EntryRequest, path: Path
) -> UsageError | None:
    """A problem found in the entry `add` wrote at `key` (`repos[3]`), said of the command, not of a line:
    the manifest was restored, and has no such line."""
    if error.key_path != key and not error.key_path.startswith((f"{key}.", f"{key}[")):
        return None  # about another entry, whose lines are as they were
    within = error.key_path[len(key) :].lstrip(".")
    return UsageError(
        f"prefetch add {request.label}: {f'{within}: ' if within else ''}{error.message}; "
        f"{path} was left as it was"
    )


def remove_entry(path: str | Path, request: EntryRequest, *, lock_path: Path | None = None) -> EditResult:
    """Remove the entry `request` names from the manifest and, offline, from its lockfile."""
    doc = RoundTrip(Path(path))
    matches = [e for e in doc.manifest.entries if _matches(e.repo, e.type, e.revision, request)]
    if not matches:
        listed = ", ".join(e.key for e in doc.manifest.entries)
        raise UsageError(f"{doc.path} does not list {request.label} (it lists: {listed})")
    if len(matches) > 1:
        revisions = ", ".join(f"{request.repo}@{e.revision}" for e in matches)
        raise UsageError(f"{doc.path} lists {request.repo} more than once: name one ({revisions})")
    if len(doc.manifest.entries) == 1:
        raise UsageError(f"{matches[0].key} is the only entry of {doc.path}: a manifest needs at least one")
    removed = matches[0]
    manifest = doc.write(doc.remove(removed.index))
    result = EditResult("removed", doc.path, removed.key)
    lock_file = lock_path or default_lock_path(doc.path)
    if lock_file.exists():
        lock = load_lock(lock_file)
        kept = tuple(e for e in lock.entries if e.key != removed.key)
        write_lock(dataclasses.replace(lock, entries=kept, manifest_digest=manifest.digest()), lock_file)
        result.lock_path = lock_file
        result.lock_changes = [f"- {removed.key}"] if len(kept) != len(lock.entries) else []
    return result


def _matches(repo: str, repo_type: str, revision: str, request: EntryRequest) -> bool:
    return (
        repo == request.repo
        and repo_type == request.type
        and (request.revision is None or revision == request.revision)
    )
