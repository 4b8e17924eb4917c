"""In-memory git-like repository model for the Hub emulator.

Why real git object ids: huggingface_hub names cache blobs by the ETag (git blob sha1 for regular files, the
sha256 for LFS files) and prefetch verifies them, so every oid the emulator reports must be computed exactly
the way the Hub computes it: ``sha1(b"blob <size>\\0" + content)``, LFS pointers, and git tree objects.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hub import HubEmulator

LFS_SUFFIXES = frozenset(
    {
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".h5",
        ".msgpack",
        ".gguf",
        ".onnx",
        ".model",
        ".parquet",
        ".arrow",
    }
)
REPO_TYPES = ("model", "dataset", "space")


def git_blob_sha1(data: bytes) -> str:
    """Git blob object id, as the Hub reports for regular files (ETag, tree `oid`)."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class StoredFile:
    """One file version: content plus every hash the Hub reports about it."""

    data: bytes
    lfs: bool
    size: int
    oid: str  # git blob sha1 of what git stores (the pointer file for LFS files)
    sha256: str | None = None  # LFS only
    pointer_size: int | None = None  # LFS only
    xet_hash: str | None = None  # Xet-backed LFS files only (hash string, as the tree listing gives it)

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> StoredFile:
        if lfs:
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = lfs_pointer(sha256, len(data))
            return cls(data, True, len(data), git_blob_sha1(pointer), sha256, len(pointer))
        return cls(data, False, len(data), git_blob_sha1(data))

    @property
    def etag(self) -> str:
        """What huggingface_hub uses as the cache blob name."""
        return self.sha256 if self.lfs and self.sha256 else self.oid


@dataclass
class Commit:
    """An immutable snapshot: path -> file, plus derived directory oids and per-path last commit."""

    sha: str
    parent: str | None
    files: dict[str, StoredFile]
    last_changed: dict[str, str]
    date: float
    title: str
    tree_oid: str
    dir_oids: dict[str, str] = field(default_factory=dict)  # "" is the root


def _tree_oids(files: dict[str, StoredFile]) -> dict[str, str]:
    """Compute git tree object ids for every directory (bottom-up), exactly like `git write-tree`."""
    entries: dict[str, dict[str, tuple[bool, str]]] = {"": {}}
    for path, f in files.items():
        parts = path.split("/")
        for i in range(len(parts) - 1):
            parent = "/".join(parts[:i])
            d = "/".join(parts[: i + 1])
            entries.setdefault(d, {})
            entries.setdefault(parent, {})[parts[i]] = (True, "")
        entries.setdefault("/".join(parts[:-1]), {})[parts[-1]] = (False, f.oid)
    oids: dict[str, str] = {}
    for d in sorted(entries, key=lambda p: p.count("/") + (1 if p else 0), reverse=True):
        items = []
        for name, (is_dir, oid) in entries[d].items():
            child = f"{d}/{name}" if d else name
            items.append(
                (
                    name + "/" if is_dir else name,
                    name,
                    "40000" if is_dir else "100644",
                    oids[child] if is_dir else oid,
                )
            )
        items.sort(key=lambda it: it[0].encode())
        body = b"".join(
            mode.encode() + b" " + name.encode() + b"\0" + bytes.fromhex(oid) for _, name, mode, oid in items
        )
        oids[d] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    return oids


class Repo:
    """A Hub repository: branches, tags and commits. Mutations are thread-safe (guarded by the hub lock)."""

    def __init__(
        self,
        hub: HubEmulator,
        repo_id: str,
        repo_type: str,
        gated: bool | str,
        private: bool,
        owner: str,
        xet: bool = False,
    ) -> None:
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, got {repo_type!r}")
        if gated is True:
            gated = "auto"
        if gated not in (False, "auto", "manual"):
            raise ValueError(f"gated must be False, 'auto' or 'manual', got {gated!r}")
        self._hub = hub
        self._lock: threading.RLock = hub._lock
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.gated: bool | str = gated
        self.private = private
        self.owner = owner
        self.xet = xet  # Xet-enabled: its LFS files are stored in Xet unless `commit(xet=...)` says otherwise
        self.members: set[str] = set()
        self.grants: dict[str, str] = {}
        self.created = time.time()
        self.object_id = hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24]
        self._branches: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._commits: dict[str, Commit] = {}
        self._seq = 0

    def __repr__(self) -> str:
        return f"Repo({self.repo_type}:{self.repo_id})"

    # ----------------------------------------------------------------------------------------- mutations
    def commit(
        self,
        files: dict[str, bytes | None],
        branch: str = "main",
        lfs: set[str] | None = None,
        *,
        message: str | None = None,
        date: float | None = None,
        sha: str | None = None,
        xet: set[str] | None = None,
    ) -> str:
        """Create a commit on `branch` (created if missing); unnamed paths carry over, None deletes.

        `sha` pins the commit id (e.g. a real Hub commit that a shipped manifest names) instead of the
        one computed from the commit's content. `xet`: the paths stored in Xet (they are LFS files then);
        default: every LFS file of a Xet-enabled repo. Deduplication runs against every xorb stored before."""
        with self._lock:
            parent = self._branches.get(branch)
            base = self._commits[parent] if parent else None
        new_files = dict(base.files) if base else {}
        last_changed = dict(base.last_changed) if base else {}
        changed: dict[str, StoredFile] = {}
        for path, data in files.items():
            path = path.strip("/")
            if not path:
                raise ValueError("empty path")
            if data is None:
                new_files.pop(path, None)
                last_changed.pop(path, None)
                continue
            data = bytes(data)
            is_lfs = (path in lfs) if lfs is not None else self._hub._auto_lfs(path, len(data))
            in_xet = (path in xet) if xet is not None else (self.xet and is_lfs)
            stored = StoredFile.make(data, is_lfs or in_xet)
            changed[path] = self._hub.xet.store(stored, self) if in_xet else stored
        new_files.update(changed)
        dirs = {p[:i] for p in new_files for i in range(len(p)) if p[i] == "/"}
        clash = dirs & new_files.keys()
        if clash:  # a file and a directory cannot share a path
            raise ValueError(f"paths used both as file and directory: {sorted(clash)}")
        dir_oids = _tree_oids(new_files)
        when = time.time() if date is None else date
        with self._lock:
            self._seq += 1
            title = message or f"Commit #{self._seq} on {branch}"
            text = f"tree {dir_oids['']}\n"
            if parent:
                text += f"parent {parent}\n"
            sig = f"{self.owner} <{self.owner}@users.noreply.hubemu> {int(when)} +0000"
            text += (
                f"author {sig}\ncommitter {sig}\n\n{title}\n\n"
                f"Hubemu-Commit: {self.repo_type}/{self.repo_id}#{self._seq}\n"
            )
            raw = text.encode()
            sha = sha or hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
            for path in changed:
                last_changed[path] = sha
            self._commits[sha] = Commit(
                sha, parent, new_files, last_changed, when, title, dir_oids[""], dir_oids
            )
            self._branches[branch] = sha
            for sf in changed.values():
                if sf.lfs and sf.sha256:
                    self._hub._lfs_blobs[sf.sha256] = sf.data
        return sha

    def create_branch(self, name: str, at: str | None = None) -> str:
        """Point a new branch at `at` (a branch, tag or commit; default: head of main)."""
        with self._lock:
            sha = self._need(at or "main")
            self._branches[name] = sha
            return sha

    def delete_branch(self, name: str) -> None:
        with self._lock:
            del self._branches[name]

    def create_tag(self, name: str, at: str | None = None) -> str:
        with self._lock:
            sha = self._need(at or "main")
            self._tags[name] = sha
            return sha

    def delete_tag(self, name: str) -> None:
        with self._lock:
            del self._tags[name]

    # -------------------------------------------------------------------------------------------- reads
    def head(self, branch: str = "main") -> str:
        with self._lock:
            return self._branches[branch]

    @property
    def branches(self) -> dict[str, str]:
        with self._lock:
            return dict(self._branches)

    @property
    def tags(self) -> dict[str, str]:
        with self._lock:
            return dict(self._tags)

    def resolve(self, rev: str) -> str | None:
        """Branch, tag, or full commit sha of this repo -> commit sha (None if unknown), like the Hub."""
        with self._lock:
            if rev in self._branches:
                return self._branches[rev]
            if rev in self._tags:
                return self._tags[rev]
            for prefix, table in (("refs/heads/", self._branches), ("refs/tags/", self._tags)):
                if rev.startswith(prefix) and rev[len(prefix) :] in table:
                    return table[rev[len(prefix) :]]
            if len(rev) == 40 and rev.lower() in self._commits:
                return rev.lower()
            return None

    def get_commit(self, rev: str) -> Commit | None:
        sha = self.resolve(rev)
        with self._lock:
            return self._commits.get(sha) if sha else None

    def _need(self, rev: str) -> str:
        sha = self.resolve(rev)
        if sha is None:
            raise KeyError(f"unknown revision {rev!r} in {self!r}")
        return sha

    def files(self, rev: str = "main") -> dict[str, bytes]:
        """Path -> content at a revision (branch, tag or sha)."""
        c = self.get_commit(rev)
        if c is None:
            raise KeyError(f"unknown revision {rev!r} in {self!r}")
        return {p: f.data for p, f in c.files.items()}

    def lfs_paths(self, rev: str = "main") -> set[str]:
        c = self.get_commit(rev)
        if c is None:
            raise KeyError(f"unknown revision {rev!r} in {self!r}")
        return {p for p, f in c.files.items() if f.lfs}

    def file_info(self, rev: str, path: str) -> StoredFile:
        """Hashes of one file (etag, oid, sha256...), handy for asserting on cache contents."""
        c = self.get_commit(rev)
        if c is None:
            raise KeyError(f"unknown revision {rev!r} in {self!r}")
        return c.files[path]

    def history(self, rev: str) -> list[Commit]:
        """Commits reachable from `rev`, newest first."""
        out: list[Commit] = []
        c = self.get_commit(rev)
        with self._lock:
            while c is not None:
                out.append(c)
                c = self._commits.get(c.parent) if c.parent else None
        return out
