"""The offline lockfile commands: verify, env, sbom, prune, bundle, unbundle. None of them uses the network.

Each one reads a lockfile and works on the cache only through `prefetch.cache` (the owner of the layout).
The cache folder is, in order: the `cache_dir` argument, the lockfile's `cache_dir`, then
`resolve_cache_dir(None)` (HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).

A bundle is a plain tar that holds exactly the locked part of the cache, in this order:

    prefetch.lock                                      the lockfile, byte for byte
    {repo_folder}/blobs/{etag}                         every locked blob, once
    {repo_folder}/snapshots/{commit}/{path}            relative symlinks, as huggingface_hub writes them
    {repo_folder}/refs/{revision}                      the commit, no newline

Member order is sorted, mtime/uid/gid/owner names are zeroed, so the same cache always gives the same bytes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import json
import os
import secrets
import shlex
import shutil
import stat
import tarfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast
from urllib.parse import quote

from prefetch import __version__
from prefetch.cache import (
    READ_BLOCK,
    RepoCache,
    blob_hasher,
    hash_file,
    is_regular_blob,
    resolve_cache_dir,
    safe_relpath,
)
from prefetch.errors import DiskSpaceError, IntegrityError, PrefetchError, UsageError, VerifyError
from prefetch.files import atomic_write, fsync_dir
from prefetch.lockfile import Lock, LockedEntry, LockedFile, load_lock, parse_lock
from prefetch.paths import unsafe_path_reason
from prefetch.progress import human_bytes
from prefetch.sync import DISK_MARGIN

BUNDLE_LOCK_NAME = "prefetch.lock"
CYCLONEDX_SPEC = "1.6"
HUB_URL = "https://huggingface.co"  # the purl `huggingface` type's default repository
# A fixed namespace for the SBOM serial number: uuid5(namespace, digest of the BOM) is reproducible.
_SBOM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:prefetch:cyclonedx-sbom")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_MAX_LOCK_BYTES = 64 * 1024 * 1024  # a bundled lockfile larger than this is not one of ours


# ------------------------------------------------------------------------------------------------ common
def _cache_root(lock: Lock, lock_path: Path, explicit: str | Path | None) -> Path:
    """`--cache-dir` > the lock's `cache_dir` (relative: to the lock's folder) > HF_HUB_CACHE etc."""
    if explicit:
        return resolve_cache_dir(explicit)
    if lock.cache_dir:
        path = Path(lock.cache_dir).expanduser()
        return path if path.is_absolute() else Path(lock_path).parent / path
    return resolve_cache_dir(None)


def _label(entry: LockedEntry) -> str:
    """How messages name an entry: `org/name@main`, `dataset:org/name@main`."""
    kind = "" if entry.type == "model" else f"{entry.type}:"
    return f"{kind}{entry.repo}@{entry.revision}"


@dataclass
class _Blob:
    """One distinct blob of one repo folder, and the locked files that use it (for messages)."""

    cache: RepoCache
    etag: str
    size: int
    lfs: bool
    users: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.cache.blob_path(self.etag)

    @property
    def member(self) -> str:
        return f"{self.cache.folder.name}/blobs/{self.etag}"

    def who(self) -> str:
        more = f" (+{len(self.users) - 2} more)" if len(self.users) > 2 else ""
        return ", ".join(self.users[:2]) + more


def _blobs(lock: Lock, root: Path) -> dict[tuple[str, str], _Blob]:
    """Every distinct (repo folder, etag) the lock needs, in a stable order."""
    blobs: dict[tuple[str, str], _Blob] = {}
    for entry in lock.entries:
        cache = RepoCache(root, entry.repo, entry.type)
        for f in entry.files:
            key = (cache.folder.name, f.etag)
            blob = blobs.setdefault(key, _Blob(cache, f.etag, f.size, f.is_lfs))
            blob.users.append(f"{_label(entry)}: {f.path}")
    return dict(sorted(blobs.items()))


def _bullets(problems: list[str], limit: int = 200) -> str:
    """One problem a line; a cache missing everything must not print a million lines (JSON has them all)."""
    shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
    return "".join(f"\n  - {p}" for p in shown)


def _verify_error(what: str, root: Path, problems: list[str]) -> VerifyError:
    return VerifyError(
        f"{what}: {len(problems)} problem(s) in the cache {root}:{_bullets(problems)}", problems
    )


# ------------------------------------------------------------------------------------------------ verify
@dataclass
class VerifyReport:
    lock_path: Path
    cache_dir: Path
    entries: int
    files: int
    blobs: int
    bytes: int
    fast: bool
    seconds: float

    def render(self) -> str:
        how = "sizes checked (--fast)" if self.fast else "hashed"
        return (
            f"ok: {self.files} files of {self.entries} entries verified in {self.cache_dir} "
            f"({self.blobs} blobs, {human_bytes(self.bytes)} {how}, {self.seconds:.1f}s)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "lockfile": str(self.lock_path),
            "cache_dir": str(self.cache_dir),
            "entries": self.entries,
            "files": self.files,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "fast": self.fast,
            "problems": [],
        }


def verify(
    lock_path: str | Path, *, cache_dir: str | Path | None = None, fast: bool = False, jobs: int | None = None
) -> VerifyReport:
    """Prove, without the network, that the cache holds every locked file intact; VerifyError lists all problems.

    Checks blobs (present, regular file, size, and unless `fast` the hash), snapshot links (relative, to the
    right blob) and refs (the commit, no trailing newline: huggingface_hub reads the file verbatim).
    """
    started = time.monotonic()
    lock_path = Path(lock_path)
    lock = load_lock(lock_path)
    root = _cache_root(lock, lock_path, cache_dir)
    problems: list[str] = []
    for entry in lock.entries:
        problems += _check_links(RepoCache(root, entry.repo, entry.type), entry)
    blobs = _blobs(lock, root)
    to_hash: dict[tuple[int, int, bool], list[_Blob]] = {}  # hard-linked copies are hashed once
    for blob in blobs.values():
        try:
            st = blob.path.lstat()
        except FileNotFoundError:
            problems.append(f"missing blob {blob.etag} ({blob.size} bytes) for {blob.who()}")
            continue
        except OSError as exc:
            problems.append(f"cannot read blob {blob.etag} for {blob.who()}: {exc.strerror or exc}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"blob {blob.etag} for {blob.who()} is not a regular file: {blob.path}")
        elif st.st_size != blob.size:
            problems.append(
                f"blob {blob.etag} for {blob.who()} has {st.st_size} bytes, the lock says {blob.size}: {blob.path}"
            )
        elif not fast:
            to_hash.setdefault((st.st_dev, st.st_ino, blob.lfs), []).append(blob)
    problems += _hash_all(to_hash, jobs)
    if problems:
        raise _verify_error(f"verify {lock_path}", root, problems)
    return VerifyReport(
        lock_path=lock_path,
        cache_dir=root,
        entries=len(lock.entries),
        files=sum(len(e.files) for e in lock.entries),
        blobs=len(blobs),
        bytes=sum(b.size for b in blobs.values()),
        fast=fast,
        seconds=time.monotonic() - started,
    )


def _check_links(cache: RepoCache, entry: LockedEntry) -> list[str]:
    """Snapshot links and the ref of one entry."""
    problems = []
    label = _label(entry)
    for f in entry.files:
        link = cache.snapshot_path(entry.commit, f.path)
        expected = cache.link_target(entry.commit, f.path, f.etag)
        try:
            target = os.readlink(link)
        except (FileNotFoundError, NotADirectoryError):
            problems.append(f"{label}: {f.path}: missing snapshot link {link}")
            continue
        except OSError:
            problems.append(f"{label}: {f.path}: {link} is not a symlink (expected -> {expected})")
            continue
        if target != expected:
            problems.append(
                f"{label}: {f.path}: snapshot link {link} points at {target!r}, expected {expected!r}"
            )
    if entry.revision != entry.commit:
        try:
            ref = cache.read_ref(entry.revision)
        except (OSError, UnicodeDecodeError) as exc:
            return [*problems, f"{label}: cannot read refs/{entry.revision}: {exc}"]
        where = cache.folder / "refs" / entry.revision
        if ref is None:
            problems.append(f"{label}: missing ref {where} (should contain {entry.commit})")
        elif ref.rstrip("\r\n") == entry.commit and ref != entry.commit:
            problems.append(
                f"{label}: ref {where} ends with a newline: huggingface_hub would look for a snapshot "
                f"named {ref!r}; it must contain exactly {entry.commit}"
            )
        elif ref != entry.commit:
            problems.append(f"{label}: ref {where} points at {ref.strip()!r}, the lock says {entry.commit}")
    return problems


def _digests(blobs: list[_Blob], jobs: int | None = None) -> list[tuple[int, str] | OSError]:
    """(bytes read, digest) or the read error of each blob, hashed in parallel, largest first."""
    results: list[tuple[int, str] | OSError] = [OSError("not hashed")] * len(blobs)
    if not blobs:
        return results
    order = sorted(range(len(blobs)), key=lambda i: -blobs[i].size)

    def one(i: int) -> tuple[int, str] | OSError:
        try:
            return hash_file(blobs[i].path, blobs[i].lfs, blobs[i].size)
        except OSError as exc:
            return exc

    workers = max(1, min(jobs or os.cpu_count() or 1, len(blobs)))
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch-hash") as pool:
        for i, result in zip(order, pool.map(one, order), strict=True):
            results[i] = result
    return results


def _hash_all(groups: dict[tuple[int, int, bool], list[_Blob]], jobs: int | None) -> list[str]:
    """Hash each distinct file once (hard-linked copies share a result) and describe every mismatch."""
    copies = list(groups.values())
    problems = []
    for group, result in zip(copies, _digests([g[0] for g in copies], jobs), strict=True):
        for blob in group:
            if isinstance(result, OSError):
                problems.append(f"cannot read blob {blob.etag} for {blob.who()}: {result.strerror or result}")
            elif result[0] != blob.size:
                problems.append(f"blob {blob.etag} for {blob.who()} changed size while being read")
            elif result[1] != blob.etag:
                problems.append(
                    f"corrupt blob {blob.etag} for {blob.who()}: {_alg(blob)} is {result[1]}: {blob.path}"
                )
    return problems


def _alg(blob: _Blob) -> str:
    return "its sha256" if blob.lfs else "its git blob sha1"


# ------------------------------------------------------------------------------------------------ env
def env_exports(lock_path: str | Path, *, cache_dir: str | Path | None = None) -> list[str]:
    """The shell lines that point huggingface_hub (transformers, vLLM...) at the verified cache, offline."""
    lock_path = Path(lock_path)
    root = _cache_root(load_lock(lock_path), lock_path, cache_dir)
    return [
        f"export HF_HUB_CACHE={shlex.quote(os.path.abspath(root))}",
        "export HF_HUB_OFFLINE=1",
        "export HF_HUB_DISABLE_TELEMETRY=1",
    ]


# ------------------------------------------------------------------------------------------------ sbom
def sbom(lock_path: str | Path) -> dict[str, Any]:
    """A CycloneDX 1.6 SBOM of the lock: a pure function of the lockfile (no timestamp, derived serial).

    Models get the purl `pkg:huggingface/{namespace}/{name}@{commit}` (the purl spec's `huggingface` type
    covers models only, so datasets and spaces carry no purl: their identity is group/name/version and a
    `vcs` reference). LFS files list their SHA-256; other files are identified by their git blob id, which
    is not the SHA-1 of the content, so it goes in `swhid` / `omniborId`, the 1.6 fields made for it.
    """
    lock = load_lock(lock_path)
    body: dict[str, Any] = {
        "$schema": f"http://cyclonedx.org/schema/bom-{CYCLONEDX_SPEC}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC,
        "version": 1,
        "metadata": {
            "tools": {
                "components": [
                    {
                        "type": "application",
                        "name": "prefetch",
                        "version": __version__,
                        "description": "Hugging Face Hub prefetcher (lockfile to SBOM)",
                    }
                ]
            },
            "properties": [
                {"name": "prefetch:lockfile:version", "value": str(lock.version)},
                {"name": "prefetch:lockfile:manifest_digest", "value": lock.manifest_digest},
                {"name": "prefetch:lockfile:tool_version", "value": lock.tool_version},
            ],
        },
        "components": [_sbom_component(e) for e in lock.entries],
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    serial = uuid.uuid5(_SBOM_NAMESPACE, hashlib.sha256(canonical).hexdigest())
    return {**body, "serialNumber": f"urn:uuid:{serial}"}


def _sbom_component(entry: LockedEntry) -> dict[str, Any]:
    namespace, _, name = entry.repo.rpartition("/")
    ref = f"{entry.type}:{entry.repo}@{quote(entry.revision, safe='/')}"
    component: dict[str, Any] = {
        "type": {"model": "machine-learning-model", "dataset": "data", "space": "application"}[entry.type],
        "bom-ref": ref,
        "name": name,
        "version": entry.commit,
        "description": f"Hugging Face {entry.type} {entry.repo} at revision {entry.revision}",
    }
    if namespace:
        component["group"] = namespace
    if entry.type == "model":
        path = "/".join(quote(part, safe="") for part in entry.repo.split("/"))
        component["purl"] = f"pkg:huggingface/{path}@{entry.commit.lower()}"
    if entry.type == "dataset":
        component["data"] = [{"type": "dataset", "name": entry.repo}]
    component["externalReferences"] = [
        {"type": "vcs", "url": f"{HUB_URL}/{_URL_PREFIX[entry.type]}{entry.repo}"}
    ]
    properties = [
        {"name": "prefetch:repo_type", "value": entry.type},
        {"name": "prefetch:revision", "value": entry.revision},
        {"name": "prefetch:commit", "value": entry.commit},
        {"name": "prefetch:exclude", "value": json.dumps(list(entry.exclude))},
    ]
    if entry.include is not None:
        properties.append({"name": "prefetch:include", "value": json.dumps(list(entry.include))})
    component["properties"] = properties
    component["components"] = [_sbom_file(ref, f) for f in entry.files]
    return component


def _sbom_file(parent_ref: str, f: LockedFile) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "file",
        "bom-ref": f"{parent_ref}#{quote(f.path, safe='/')}",
        "name": f.path,
    }
    if f.sha256:
        item["hashes"] = [{"alg": "SHA-256", "content": f.sha256}]
    else:
        item["swhid"] = [f"swh:1:cnt:{f.git_sha1}"]
        item["omniborId"] = [f"gitoid:blob:sha1:{f.git_sha1}"]
    item["properties"] = [
        {"name": "prefetch:size", "value": str(f.size)},
        {"name": "prefetch:lfs", "value": "true" if f.is_lfs else "false"},
    ]
    return item


# ------------------------------------------------------------------------------------------------ prune
@dataclass
class PruneReport:
    cache_dir: Path
    dry_run: bool
    repos: list[str]  # repo folders some lock names: the only ones pruned
    untouched: list[str]  # other repo folders in the cache, left alone
    snapshots: list[str] = field(default_factory=list)  # "{folder}@{commit}"
    links: int = 0  # stray links removed inside kept snapshots
    refs: list[str] = field(default_factory=list)
    blobs: int = 0
    partials: int = 0
    freed_bytes: int = 0
    busy: list[str] = field(default_factory=list)  # blobs written while prune ran: left in place

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [
            f"{verb} {len(self.snapshots)} snapshot(s), {self.links} stray link(s), {len(self.refs)} ref(s), "
            f"{self.blobs} blob(s) and {self.partials} partial download(s) from {self.cache_dir}: "
            f"{'would free' if self.dry_run else 'freed'} {human_bytes(self.freed_bytes)}",
        ]
        lines += [f"  snapshot {s}" for s in self.snapshots]
        lines += [f"  ref {r}" for r in self.refs]
        if self.busy:
            lines.append(f"  left {len(self.busy)} blob(s) written while prune ran: {', '.join(self.busy)}")
        lines.append(f"pruned only within the {len(self.repos)} repo(s) the lockfiles name")
        if self.untouched:
            lines.append(f"left alone (no lockfile names them): {', '.join(self.untouched)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.cache_dir),
            "dry_run": self.dry_run,
            "repos": self.repos,
            "untouched": self.untouched,
            "removed_snapshots": self.snapshots,
            "removed_links": self.links,
            "removed_refs": self.refs,
            "removed_blobs": self.blobs,
            "removed_partials": self.partials,
            "freed_bytes": self.freed_bytes,
            "busy": self.busy,
        }


@dataclass
class _Keep:
    """What the lockfiles need in one repo folder."""

    cache: RepoCache
    commits: set[str] = field(default_factory=set)
    links: set[tuple[str, str]] = field(default_factory=set)  # (commit, path)
    blobs: set[str] = field(default_factory=set)


def prune(
    lock_paths: list[Path], *, cache_dir: str | Path | None = None, dry_run: bool = False
) -> PruneReport:
    """Remove what no given lockfile needs, only inside the repo folders those lockfiles name.

    In those folders: snapshots of other commits, links inside kept snapshots that no lock lists (their
    blobs go too, so no link dangles: scan_cache_dir would flag the repo), refs to removed commits, and
    blobs no locked file uses (with their partial files). Other repos are never touched. Each blob is
    deleted under its per-blob lock, and a blob written after prune started is left alone (a concurrent
    sync may be about to link it).
    """
    if not lock_paths:
        raise UsageError("prune needs at least one --lock")
    locks = [(Path(p), load_lock(p)) for p in lock_paths]
    roots = {_cache_root(lock, path, cache_dir) for path, lock in locks}
    if len(roots) > 1:
        listed = ", ".join(sorted(str(r) for r in roots))
        raise UsageError(f"the lockfiles name different caches ({listed}): choose one with --cache-dir")
    root = roots.pop()
    started = time.time()
    keep: dict[str, _Keep] = {}
    for _, lock in locks:
        for entry in lock.entries:
            cache = RepoCache(root, entry.repo, entry.type)
            k = keep.setdefault(cache.folder.name, _Keep(cache))
            k.commits.add(entry.commit)
            for f in entry.files:
                k.links.add((entry.commit, f.path))
                k.blobs.add(f.etag)
    try:
        present = sorted(p.name for p in root.iterdir() if "--" in p.name and p.is_dir())
    except FileNotFoundError:
        present = []
    report = PruneReport(root, dry_run, sorted(keep), [name for name in present if name not in keep])
    removed_inodes: dict[tuple[int, int], tuple[int, int, int]] = {}  # inode -> (size, nlink, removed)
    for name in sorted(keep):
        if name in present:
            _prune_repo(keep[name], report, started, removed_inodes)
    report.freed_bytes += sum(size for size, nlink, n in removed_inodes.values() if n >= nlink)
    return report


def _prune_repo(
    k: _Keep, report: PruneReport, started: float, removed_inodes: dict[tuple[int, int], tuple[int, int, int]]
) -> None:
    """Refs first, then snapshots, then blobs: the reverse of the order in which sync makes them visible."""
    folder = k.cache.folder
    dry = report.dry_run
    refs_dir = folder / "refs"
    if refs_dir.is_dir():
        for ref in sorted(p for p in refs_dir.rglob("*") if p.is_file() or p.is_symlink()):
            try:
                commit = ref.read_text(errors="replace").strip()
            except OSError:
                continue
            if commit not in k.commits:
                report.refs.append(
                    f"{folder.name}/refs/{ref.relative_to(refs_dir).as_posix()} ({commit[:12]})"
                )
                if not dry:
                    ref.unlink()
        if not dry:
            _remove_empty_dirs(refs_dir, keep_top=True)
    snapshots = folder / "snapshots"
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir()):
            if snap.name not in k.commits:
                report.snapshots.append(f"{folder.name}@{snap.name}")
                if not dry:
                    if snap.is_dir() and not snap.is_symlink():
                        shutil.rmtree(snap)
                    else:
                        snap.unlink()
                    with contextlib.suppress(FileNotFoundError):
                        (folder / "trees" / f"{snap.name}.json").unlink()
                continue
            for link in sorted(p for p in snap.rglob("*") if p.is_symlink() or p.is_file()):
                path = link.relative_to(snap).as_posix()
                if (snap.name, path) not in k.links:
                    report.links += 1
                    if not dry:
                        link.unlink()
            if not dry:
                _remove_empty_dirs(snap, keep_top=True)
    if not k.cache.blobs.is_dir():
        return
    for blob in sorted(k.cache.blobs.iterdir()):
        etag = blob.name.split(".", 1)[0]
        if etag in k.blobs or not _is_hex(etag) or not blob.is_file() or blob.is_symlink():
            continue  # needed (partials too: they resume), or not ours to judge
        with contextlib.ExitStack() as stack:
            if not dry:
                stack.enter_context(k.cache.blob_lock(etag))
            try:
                st = blob.lstat()
            except FileNotFoundError:
                continue
            ours = (st.st_dev, st.st_ino) in removed_inodes  # unlinking a hard link updates the ctime
            if st.st_ctime > started and not ours:  # installed or linked while we ran: a sync may need it
                report.busy.append(f"{folder.name}/blobs/{blob.name}")
                continue
            if blob.name == etag:
                report.blobs += 1
                size, nlink, n = removed_inodes.get((st.st_dev, st.st_ino), (st.st_size, st.st_nlink, 0))
                removed_inodes[(st.st_dev, st.st_ino)] = (size, nlink, n + 1)
            else:
                report.partials += 1
                report.freed_bytes += st.st_size if st.st_nlink == 1 else 0
            if not dry:
                blob.unlink()


def _is_hex(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _remove_empty_dirs(top: Path, keep_top: bool = False) -> None:
    """Remove folders left empty under `top` (deepest first), and `top` itself unless `keep_top`."""
    for folder in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    if not keep_top:
        with contextlib.suppress(OSError):
            top.rmdir()


# ------------------------------------------------------------------------------------------------ bundle
@dataclass
class BundleReport:
    output: Path
    cache_dir: Path
    entries: int
    files: int
    blobs: int
    bytes: int
    archive_bytes: int
    sha256: str

    def render(self) -> str:
        return (
            f"wrote {self.output}: {self.files} files of {self.entries} entries ({self.blobs} blobs, "
            f"{human_bytes(self.bytes)}, every blob verified), {human_bytes(self.archive_bytes)}, "
            f"sha256 {self.sha256}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "cache_dir": str(self.cache_dir),
            "entries": self.entries,
            "files": self.files,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "archive_bytes": self.archive_bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class _Link:
    cache: RepoCache = field(compare=False)  # equal links: same member name, same blob
    commit: str
    path: str
    etag: str

    @property
    def member(self) -> str:
        return f"{self.cache.folder.name}/snapshots/{self.commit}/{self.path}"

    @property
    def target(self) -> str:
        return self.cache.link_target(self.commit, self.path, self.etag)


@dataclass(frozen=True)
class _Ref:
    cache: RepoCache = field(compare=False)
    revision: str
    commit: str

    @property
    def member(self) -> str:
        return f"{self.cache.folder.name}/refs/{self.revision}"


@dataclass
class _Layout:
    """The members a bundle of this lock holds, in bundle order (blobs, then links, then refs)."""

    blobs: dict[str, _Blob]
    links: dict[str, _Link]
    refs: dict[str, _Ref]
    problems: list[str]  # contradictions inside the lock itself


def _layout(lock: Lock, root: Path) -> _Layout:
    blobs = {b.member: b for b in _blobs(lock, root).values()}
    links: dict[str, _Link] = {}
    refs: dict[str, _Ref] = {}
    problems: list[str] = []
    sizes: dict[str, int] = {}
    for entry in lock.entries:
        cache = RepoCache(root, entry.repo, entry.type)
        for f in entry.files:
            link = _Link(cache, entry.commit, f.path, f.etag)
            if links.setdefault(link.member, link) != link:
                problems.append(
                    f"{_label(entry)}: {f.path}: two entries lock different blobs for {link.member}"
                )
            member = f"{cache.folder.name}/blobs/{f.etag}"
            if sizes.setdefault(member, f.size) != f.size:
                problems.append(
                    f"{_label(entry)}: {f.path}: blob {f.etag} is locked with two different sizes"
                )
        if entry.revision != entry.commit:
            safe_relpath(entry.revision)
            ref = _Ref(cache, entry.revision, entry.commit)
            if refs.setdefault(ref.member, ref) != ref:
                problems.append(f"{_label(entry)}: two entries lock {ref.member} at different commits")
    return _Layout(blobs, dict(sorted(links.items())), dict(sorted(refs.items())), problems)


def _tarinfo(name: str, *, size: int = 0, symlink: str | None = None) -> tarfile.TarInfo:
    """A member header with everything that varies between machines zeroed."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if symlink is None:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, size
    else:
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, symlink
    return info


class _HashingReader:
    """Hands the blob to tarfile while hashing it, so the bundle verifies each blob in the same read."""

    def __init__(self, f: IO[bytes], h: Any) -> None:
        self.f, self.h = f, h

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        return data


class _HashingWriter:
    """Hashes the archive as it is written (the report gives its sha256 for the trip across the air gap)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()


def bundle(lock_path: str | Path, output: str | Path, *, cache_dir: str | Path | None = None) -> BundleReport:
    """Write a tar of exactly the locked part of the cache (+ the lockfile), verifying every blob on the way.

    Links and refs come from the lock, so only the blobs must be in the cache. The tar is written to a
    temporary file beside `output` and renamed over it: a failed bundle leaves no half archive behind.
    """
    lock_path, output = Path(lock_path), Path(output)
    lock = load_lock(lock_path)
    lock_bytes = lock_path.read_bytes()
    root = _cache_root(lock, lock_path, cache_dir)
    layout = _layout(lock, root)
    problems = list(layout.problems)
    for blob in layout.blobs.values():
        if not is_regular_blob(blob.path):
            problems.append(f"missing blob {blob.etag} ({blob.size} bytes) for {blob.who()}")
        elif blob.path.stat().st_size != blob.size:
            size = blob.path.stat().st_size
            problems.append(f"blob {blob.etag} for {blob.who()} has {size} bytes, the lock says {blob.size}")
    if problems:
        raise _verify_error(f"cannot bundle {lock_path}", root, problems)
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder: name the tar file to write")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as raw:
            out = _HashingWriter(raw)
            tar = tarfile.TarFile(
                fileobj=cast(IO[bytes], out),
                mode="w",
                format=tarfile.PAX_FORMAT,
                copybufsize=READ_BLOCK,  # type: ignore[arg-type]
            )
            with tar:
                tar.addfile(_tarinfo(BUNDLE_LOCK_NAME, size=len(lock_bytes)), io.BytesIO(lock_bytes))
                problems += _add_blobs(tar, layout.blobs.values())
                for link in layout.links.values():
                    tar.addfile(_tarinfo(link.member, symlink=link.target))
                for ref in layout.refs.values():
                    tar.addfile(_tarinfo(ref.member, size=len(ref.commit)), io.BytesIO(ref.commit.encode()))
            if problems:
                raise _verify_error(f"cannot bundle {lock_path}", root, problems)
            raw.flush()
            os.fsync(raw.fileno())
            size = raw.tell()
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(output.parent)
    return BundleReport(
        output=output,
        cache_dir=root,
        entries=len(lock.entries),
        files=sum(len(e.files) for e in lock.entries),
        blobs=len(layout.blobs),
        bytes=sum(b.size for b in layout.blobs.values()),
        archive_bytes=size,
        sha256=out.h.hexdigest(),
    )


def _add_blobs(tar: tarfile.TarFile, blobs: Iterable[_Blob]) -> list[str]:
    """Add each blob, hashing the bytes as tarfile reads them; return the blobs that did not match."""
    problems: list[str] = []
    for blob in blobs:
        h = blob_hasher(blob.lfs, blob.size)
        try:
            with open(blob.path, "rb") as f:
                tar.addfile(_tarinfo(blob.member, size=blob.size), _HashingReader(f, h))  # type: ignore[arg-type]
        except OSError as exc:  # vanished or shrank since the size check: the tar cannot be finished
            problem = f"blob {blob.etag} for {blob.who()}: {exc.strerror or exc}"
            raise _verify_error("cannot bundle", blob.cache.root, [*problems, problem]) from None
        if h.hexdigest() != blob.etag:
            problems.append(
                f"corrupt blob {blob.etag} for {blob.who()}: {_alg(blob)} is {h.hexdigest()}: {blob.path}"
            )
    return problems


# ------------------------------------------------------------------------------------------------ unbundle
@dataclass
class UnbundleReport:
    archive: Path
    cache_dir: Path
    entries: int
    files: int
    blobs_added: int
    blobs_present: int
    bytes_added: int
    links: int
    refs: int

    def render(self) -> str:
        return (
            f"unbundled {self.archive} into {self.cache_dir}: {self.files} files of {self.entries} entries; "
            f"{self.blobs_added} blobs added ({human_bytes(self.bytes_added)}, each verified), "
            f"{self.blobs_present} already present and verified; {self.links} links, {self.refs} refs. "
            f"The bundle's lockfile is its member {BUNDLE_LOCK_NAME} (--lock-out PATH writes it out)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "cache_dir": str(self.cache_dir),
            "entries": self.entries,
            "files": self.files,
            "blobs_added": self.blobs_added,
            "blobs_present": self.blobs_present,
            "bytes_added": self.bytes_added,
            "links": self.links,
            "refs": self.refs,
        }


def _archive_error(archive: Path, problems: list[str]) -> IntegrityError:
    return IntegrityError(
        f"{archive}: refusing the bundle, nothing was changed in the cache:{_bullets(problems)}"
    )


def _member_problem(m: tarfile.TarInfo, layout: _Layout, dirs: set[str]) -> str | None:
    """Why this member may not be unpacked (None: it is exactly one the bundled lock expects)."""
    name = m.name
    reason = unsafe_path_reason(name)
    if reason:
        return f"{name!r}: unsafe member name ({reason})"
    if not (m.isreg() or m.issym() or m.isdir()):
        kind = "hard link" if m.islnk() else "device file" if (m.ischr() or m.isblk()) else "special file"
        return f"{name!r}: {kind} (a bundle holds only files and relative symlinks)"
    if name in layout.blobs:
        blob = layout.blobs[name]
        if not m.isreg():
            return f"{name!r}: a blob must be a regular file"
        if m.size != blob.size:
            return f"{name!r}: {m.size} bytes, the bundled lock says {blob.size}"
        return None
    if name in layout.links:
        link = layout.links[name]
        if not m.issym():
            return f"{name!r}: a snapshot entry must be a symlink"
        if m.linkname != link.target:
            return f"{name!r}: symlink to {m.linkname!r}, expected exactly {link.target!r}"
        return None
    if name in layout.refs:
        if not m.isreg() or m.size != len(layout.refs[name].commit):
            return f"{name!r}: a ref must be a regular file holding the 40-hex commit"
        return None
    if name in dirs and m.isdir():
        return None
    if m.issym():
        return f"{name!r}: symlink to {m.linkname!r} that the bundled lock does not name"
    return f"{name!r}: not named by the bundled lock"


def unbundle(
    archive: str | Path, *, cache_dir: str | Path | None = None, lock_out: str | Path | None = None
) -> UnbundleReport:
    """Merge a bundle into a cache, treating the archive as hostile.

    Every member header is checked against the bundled lock before anything is written (exact names, types,
    sizes, link targets; no absolute paths, `..`, devices or hard links). Blobs are then copied into a private
    staging folder and hashed; only when every one verified are they renamed into the cache under the
    per-blob lock (blob, then links, then refs). Any failure leaves the cache as it was. Blobs the cache
    already holds with the right content are kept and not copied. `lock_out`: also write the bundled
    lockfile there, once everything is in place.
    """
    archive = Path(archive)
    with _open_archive(archive) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise IntegrityError(f"{archive}: the archive is damaged: {exc}") from None
        lock_members = [m for m in members if m.name == BUNDLE_LOCK_NAME]
        if len(lock_members) != 1 or not lock_members[0].isreg() or lock_members[0].size > _MAX_LOCK_BYTES:
            raise UsageError(
                f"{archive}: not a prefetch bundle (it needs exactly one regular {BUNDLE_LOCK_NAME})"
            )
        lock_text = _read_member(tar, lock_members[0]).decode("utf-8", errors="replace")
        lock = parse_lock(lock_text, f"{archive}:{BUNDLE_LOCK_NAME}")
        root = _cache_root(lock, archive, cache_dir)
        layout = _layout(lock, root)
        problems = list(layout.problems)
        expected = [*layout.blobs, *layout.links, *layout.refs]
        dirs = {str(p) for name in expected for p in PurePosixPath(name).parents if str(p) != "."}
        seen: set[str] = set()
        by_name: dict[str, tarfile.TarInfo] = {}
        for m in members:
            if m is lock_members[0]:
                continue
            if m.name in seen:
                problems.append(f"{m.name!r}: appears twice in the archive")
                continue
            seen.add(m.name)
            problem = _member_problem(m, layout, dirs)
            if problem:
                problems.append(problem)
            else:
                by_name[m.name] = m
        problems += [f"{name!r}: missing from the archive" for name in expected if name not in seen]
        for name, ref in layout.refs.items():
            if name in by_name and _read_member(tar, by_name[name]) != ref.commit.encode():
                problems.append(f"{name!r}: does not hold the locked commit {ref.commit}")
        if problems:
            raise _archive_error(archive, problems)
        report = _unbundle_into(tar, archive, root, lock, layout, by_name)
    if lock_out is not None:  # the bundled lock, byte for byte: what verify / sync --offline --frozen read
        atomic_write(Path(lock_out), lock_text.encode("utf-8"))
    return report


def _open_archive(archive: Path) -> tarfile.TarFile:
    """The archive for reading (plain or compressed tar); anything else is a usage error."""
    try:
        return tarfile.open(archive, "r:*")  # the caller closes it (`with`)
    except tarfile.TarError:
        raise UsageError(f"{archive}: not a tar archive (a prefetch bundle is one)") from None
    except OSError as exc:
        raise UsageError(f"{archive}: cannot read: {exc.strerror or exc}") from None


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(m)
    return f.read() if f is not None else b""


def _unbundle_into(
    tar: tarfile.TarFile,
    archive: Path,
    root: Path,
    lock: Lock,
    layout: _Layout,
    by_name: dict[str, tarfile.TarInfo],
) -> UnbundleReport:
    """Stage and verify the blobs the cache lacks, then install blobs, links and refs in that order."""
    blobs = list(layout.blobs.values())
    candidates = [b for b in blobs if is_regular_blob(b.path) and b.path.stat().st_size == b.size]
    good = {b.member for b, r in zip(candidates, _digests(candidates), strict=True) if r == (b.size, b.etag)}
    bad = {b.member for b in candidates} - good  # present but corrupt: replaced by the bundle's copy
    todo = [b for b in blobs if b.member not in good]
    created = _missing_parents(root / ".locks")
    staging = root / ".locks" / ".prefetch-staging" / f"{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir(parents=True)
        free = shutil.disk_usage(staging).free
        needed = sum(b.size for b in todo)
        if needed + DISK_MARGIN > free:
            raise DiskSpaceError(
                f"not enough disk space in {root} to unbundle: {needed} bytes to add (+{DISK_MARGIN} margin), "
                f"{free} bytes free"
            )
        staged: list[tuple[_Blob, Path]] = []
        problems: list[str] = []
        for i, blob in enumerate(todo):
            path = staging / str(i)
            digest = _stage(tar, by_name[blob.member], blob, path)
            if digest != blob.etag:
                problems.append(f"{blob.member!r} (for {blob.who()}): corrupt, {_alg(blob)} is {digest}")
            staged.append((blob, path))
        if problems:
            raise _archive_error(archive, problems)
        added = [blob for blob, path in staged if _install(blob, path, replace=blob.member in bad)]
        for link in layout.links.values():
            link.cache.link(link.commit, link.path, link.etag)
        for ref in layout.refs.values():
            ref.cache.write_ref(ref.revision, ref.commit)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(staging.parent, created)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    _remove_created(staging.parent, created)
    return UnbundleReport(
        archive=archive,
        cache_dir=root,
        entries=len(lock.entries),
        files=sum(len(e.files) for e in lock.entries),
        blobs_added=len(added),
        blobs_present=len(blobs) - len(added),
        bytes_added=sum(b.size for b in added),
        links=len(layout.links),
        refs=len(layout.refs),
    )


def _stage(tar: tarfile.TarFile, m: tarfile.TarInfo, blob: _Blob, path: Path) -> str:
    """Copy one blob out of the archive into the staging folder, fsynced; return its hash."""
    source = tar.extractfile(m)
    if source is None:  # not reachable: the member was checked to be a regular file
        raise PrefetchError(f"internal: {m.name} has no content")
    h = blob_hasher(blob.lfs, blob.size)
    with source, open(path, "wb") as out:
        for block in iter(lambda: source.read(READ_BLOCK), b""):
            h.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def _install(blob: _Blob, staged: Path, *, replace: bool) -> bool:
    """Rename a verified staged blob into the cache through RepoCache (partial -> fsync -> rename)."""
    cache = blob.cache
    cache.blobs.mkdir(parents=True, exist_ok=True)
    with cache.blob_lock(blob.etag):
        if not replace and cache.has_blob(blob.etag, blob.size):  # another process installed it meanwhile
            return False
        os.replace(staged, cache.partial_path(blob.etag))
        cache.install_blob(blob.etag)
    return True


def _missing_parents(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet (deepest first), to remove them again on failure."""
    missing = []
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_created(staging_parent: Path, created: list[Path]) -> None:
    with contextlib.suppress(OSError):
        staging_parent.rmdir()  # `.prefetch-staging`, when no other unbundle is using it
    for p in created:
        with contextlib.suppress(OSError):
            p.rmdir()


__all__ = [
    "BUNDLE_LOCK_NAME",
    "BundleReport",
    "PruneReport",
    "UnbundleReport",
    "VerifyReport",
    "bundle",
    "env_exports",
    "prune",
    "sbom",
    "unbundle",
    "verify",
]
