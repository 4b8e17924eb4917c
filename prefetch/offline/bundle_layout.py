"""The members a bundle of a lock holds, shared by `bundle` (which writes them) and `unbundle` (which
accepts exactly them). A bundle is a plain tar that holds exactly the locked part of the cache, in this order:

    prefetch.lock                                      the lockfile, byte for byte
    {repo_folder}/blobs/{etag}                         every locked blob, once
    {repo_folder}/snapshots/{commit}/{path}            relative symlinks, as huggingface_hub writes them
    {repo_folder}/refs/{revision}                      the commit, no newline

Each member's name is its path relative to the cache root (`RepoCache.relpath`). Member order is sorted,
mtime/uid/gid/owner names are zeroed, so the same cache always gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefetch.cache import RepoCache
from prefetch.lockfile import Lock
from prefetch.offline.shared import LockedBlob, label, locked_blobs

BUNDLE_LOCK_NAME = "prefetch.lock"


@dataclass(frozen=True)
class LinkMember:
    """A snapshot link of the bundle."""

    cache: RepoCache = field(compare=False)  # equal links: same member name, same blob
    commit: str
    path: str
    etag: str

    @property
    def member(self) -> str:
        return self.cache.relpath(self.cache.snapshot_path(self.commit, self.path))

    @property
    def target(self) -> str:
        return self.cache.link_target(self.commit, self.path, self.etag)


@dataclass(frozen=True)
class RefMember:
    """A ref of the bundle."""

    cache: RepoCache = field(compare=False)
    revision: str
    commit: str

    @property
    def member(self) -> str:
        return self.cache.relpath(self.cache.ref_path(self.revision))


@dataclass
class BundleLayout:
    """The members a bundle of this lock holds, in bundle order (blobs, then links, then refs)."""

    blobs: dict[str, LockedBlob]
    links: dict[str, LinkMember]
    refs: dict[str, RefMember]
    problems: list[str]  # contradictions inside the lock itself


def bundle_layout(lock: Lock, root: Path) -> BundleLayout:
    """Every member a bundle of `lock` holds, keyed by member name, and the lock's own contradictions."""
    blobs = {b.member: b for b in locked_blobs(lock, root)}
    links: dict[str, LinkMember] = {}
    refs: dict[str, RefMember] = {}
    problems: list[str] = []
    sizes: dict[str, int] = {}
    for entry in lock.entries:
        cache = RepoCache(root, entry.repo, entry.type)
        for f in entry.files:
            link = LinkMember(cache, entry.commit, f.path, f.etag)
            if links.setdefault(link.member, link) != link:
                problems.append(
                    f"{label(entry)}: {f.path}: two entries lock different blobs for {link.member}"
                )
            if sizes.setdefault(cache.relpath(cache.blob_path(f.etag)), f.size) != f.size:
                problems.append(f"{label(entry)}: {f.path}: blob {f.etag} is locked with two different sizes")
        if entry.revision != entry.commit:
            ref = RefMember(cache, entry.revision, entry.commit)
            if refs.setdefault(ref.member, ref) != ref:
                problems.append(f"{label(entry)}: two entries lock {ref.member} at different commits")
    return BundleLayout(blobs, dict(sorted(links.items())), dict(sorted(refs.items())), problems)
