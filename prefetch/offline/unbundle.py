"""`prefetch unbundle`: merge a bundle into a cache, treating the archive as hostile.

What a bundle may hold: `prefetch.offline.bundle_layout`, and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from prefetch.cache import is_regular_blob, staging_dir
from prefetch.errors import DiskSpaceError, IntegrityError, PrefetchError, UsageError
from prefetch.files import atomic_write, opened_folder
from prefetch.hashing import READ_BLOCK, blob_hasher
from prefetch.lockfile import Lock, parse_lock
from prefetch.offline.bundle_layout import BUNDLE_LOCK_NAME, BundleLayout, bundle_layout
from prefetch.offline.shared import LockedBlob, Report, bullets, mismatches
from prefetch.paths import unsafe_path_reason
from prefetch.plan import DISK_MARGIN
from prefetch.progress import human_bytes
from prefetch.settings import resolve_cache_dir

log = logging.getLogger("prefetch")
_MAX_LOCK_BYTES = 64 * 1024 * 1024  # a bundled lockfile larger than this is not one of ours


@dataclass
class UnbundleReport(Report):
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


def _archive_error(archive: Path, problems: list[str]) -> IntegrityError:
    return IntegrityError(
        f"{archive}: refusing the bundle, nothing was changed in the cache:{bullets(problems)}"
    )


def _member_problem(m: tarfile.TarInfo, layout: BundleLayout, dirs: set[str]) -> str | None:
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
        root = _target_cache(archive, lock, cache_dir)
        layout = bundle_layout(lock, root)
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


def _target_cache(archive: Path, lock: Lock, cache_dir: str | Path | None) -> Path:
    """`--cache-dir`, else the HF cache of the environment: never a folder the archive names (its
    lock's `cache_dir` could be `/home/someone` or `../../x`), which is ignored with a warning."""
    if lock.cache_dir and not cache_dir:
        log.warning(
            "%s: ignoring the bundled lock's cache_dir %r: unbundle writes only into --cache-dir or "
            "the HF cache of the environment (HF_HUB_CACHE, HF_HOME)",
            archive,
            lock.cache_dir,
        )
    return resolve_cache_dir(cache_dir)


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
    layout: BundleLayout,
    by_name: dict[str, tarfile.TarInfo],
) -> UnbundleReport:
    """Stage and verify the blobs the cache lacks, then install blobs, links and refs in that order."""
    blobs = list(layout.blobs.values())
    candidates = [b for b in blobs if is_regular_blob(b.path) and b.path.stat().st_size == b.size]
    wrong = mismatches(candidates)
    good = {b.member for i, b in enumerate(candidates) if i not in wrong}
    bad = {b.member for b in candidates} - good  # present but corrupt: replaced by the bundle's copy
    todo = [b for b in blobs if b.member not in good]
    created = _missing_parents(staging_dir(root).parent)
    staging = staging_dir(root) / f"{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with opened_folder(root, (".locks", ".prefetch-staging")) as parent:  # no link followed on the way
            os.mkdir(staging.name, 0o700, dir_fd=parent)
        free = shutil.disk_usage(staging).free
        needed = sum(b.size for b in todo)
        if needed + DISK_MARGIN > free:
            raise DiskSpaceError(
                f"not enough disk space in {root} to unbundle: {needed} bytes to add (+{DISK_MARGIN} margin), "
                f"{free} bytes free"
            )
        staged: list[tuple[LockedBlob, Path]] = []
        problems: list[str] = []
        for i, blob in enumerate(todo):
            path = staging / str(i)
            digest = _stage(tar, by_name[blob.member], blob, path)
            if digest != blob.etag:
                problems.append(f"{blob.member!r} (for {blob.who()}): corrupt, {blob.hash_name} is {digest}")
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


def _stage(tar: tarfile.TarFile, m: tarfile.TarInfo, blob: LockedBlob, path: Path) -> str:
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


def _install(blob: LockedBlob, staged: Path, *, replace: bool) -> bool:
    """Rename a verified staged blob into the cache through RepoCache (partial -> fsync -> rename)."""
    cache = blob.cache
    with cache.blob_lock(blob.etag):
        if not replace and cache.has_blob(blob.etag, blob.size):  # another process installed it meanwhile
            return False
        cache.installer.install_blob(blob.etag, source=staged)
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
