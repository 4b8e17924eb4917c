"""The Hugging Face cache layout, owned here and nowhere else.

    {cache}/models--org--name/blobs/{etag}                  complete, verified bytes only
    {cache}/models--org--name/blobs/{etag}.prefetch-partial  bytes in flight (+ `.json` state: done ranges)
    {cache}/models--org--name/snapshots/{commit}/{path}     relative symlink to ../../blobs/{etag}
    {cache}/models--org--name/refs/{revision}               commit hash, no trailing newline
    {cache}/.locks/models--org--name/{etag}.lock            the per-blob lock huggingface_hub takes too

Order of visibility: blob (fsync, rename) -> snapshot link -> ref. A reader therefore never sees a
link to a blob that is not complete and verified.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from filelock import FileLock, SoftFileLock, Timeout

from prefetch.errors import IntegrityError

log = logging.getLogger("prefetch")

PARTIAL_SUFFIX = ".prefetch-partial"
STATE_SUFFIX = ".prefetch-partial.json"
TYPE_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}


def resolve_cache_dir(explicit: str | Path | None = None, env: dict[str, str] | None = None) -> Path:
    """`--cache-dir`/manifest value, else HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = dict(os.environ) if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(env.get("HF_HOME") or Path(xdg) / "huggingface").expanduser() / "hub"


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    """`models--org--name`, as huggingface_hub names it."""
    return "--".join([TYPE_PREFIX[repo_type], *repo_id.split("/")])


def safe_relpath(path: str) -> PurePosixPath:
    """A repo file path that cannot escape its snapshot folder; anything else is refused."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise IntegrityError(f"refusing unsafe file path from the server: {path!r}")
    return PurePosixPath(path)


@functools.cache
def _umask() -> int:
    # Read once (os.umask is process-global and racy); called before worker threads start.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of new blobs and refs: what `open()` would give, so group-shared caches (umask 002) stay shared."""
    return 0o666 & ~_umask()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old or the new content, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


class RepoCache:
    """One repo's folder in the cache."""

    def __init__(self, root: Path, repo_id: str, repo_type: str) -> None:
        self.root = root
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.folder = root / repo_folder_name(repo_id, repo_type)
        self.blobs = self.folder / "blobs"

    # blobs --------------------------------------------------------------------------------------
    def blob_path(self, etag: str) -> Path:
        return self.blobs / etag

    def has_blob(self, etag: str, size: int) -> bool:
        """A blob of the right size is present (content was verified when it was installed)."""
        try:
            return self.blob_path(etag).stat().st_size == size
        except FileNotFoundError:
            return False

    def partial_path(self, etag: str) -> Path:
        return self.blobs / (etag + PARTIAL_SUFFIX)

    def state_path(self, etag: str) -> Path:
        return self.blobs / (etag + STATE_SUFFIX)

    def read_partial_state(self, etag: str, size: int) -> list[tuple[int, int]]:
        """Byte ranges of the partial file already written and recorded, or [] if nothing usable."""
        try:
            state = json.loads(self.state_path(etag).read_text())
            partial_size = self.partial_path(etag).stat().st_size
        except (FileNotFoundError, ValueError, OSError):
            return []
        if state.get("size") != size:
            return []
        done = [(int(a), int(b)) for a, b in state.get("done", []) if 0 <= a < b <= min(size, partial_size)]
        return done

    def write_partial_state(self, etag: str, size: int, done: list[tuple[int, int]]) -> None:
        # Not fsynced: it only matters across a process kill, where the page cache survives; after a
        # power cut the final hash check catches any lost write.
        atomic_write(self.state_path(etag), json.dumps({"size": size, "done": done}).encode(), durable=False)

    def discard_partial(self, etag: str) -> None:
        for path in (self.partial_path(etag), self.state_path(etag)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def install_blob(self, etag: str) -> None:
        """Make the verified partial file the blob: fsync, set mode, rename, fsync the folder."""
        partial = self.partial_path(etag)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(partial, file_mode())
        os.replace(partial, self.blob_path(etag))
        fsync_dir(self.blobs)
        with contextlib.suppress(FileNotFoundError):
            self.state_path(etag).unlink()

    def find_blob_elsewhere(self, etag: str, size: int) -> Path | None:
        """The same blob in another repo's folder, to hard-link instead of downloading it again."""
        try:
            folders = sorted(self.root.iterdir())
        except FileNotFoundError:
            return None
        for folder in folders:
            if folder == self.folder or "--" not in folder.name:
                continue
            candidate = folder / "blobs" / etag
            with contextlib.suppress(OSError):
                if candidate.is_file() and not candidate.is_symlink() and candidate.stat().st_size == size:
                    return candidate
        return None

    @contextlib.contextmanager
    def blob_lock(self, etag: str, on_wait: object = None) -> Iterator[None]:
        """Hold huggingface_hub's per-blob lock, so concurrent downloaders fetch each blob once."""
        path = self.root / ".locks" / self.folder.name / f"{etag}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock: FileLock | SoftFileLock = FileLock(str(path), mode=0o664)
        waited = False
        while True:
            try:
                lock.acquire(timeout=10 if waited else 0)
                break
            except Timeout:
                if not waited and callable(on_wait):
                    on_wait()
                waited = True
                log.info("waiting for another process to finish downloading %s", etag[:12])
            except NotImplementedError:  # filesystem without flock: same fallback as huggingface_hub
                lock = SoftFileLock(str(path))
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.release()

    # snapshots and refs --------------------------------------------------------------------------
    def snapshot_dir(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def snapshot_path(self, commit: str, path: str) -> Path:
        return self.snapshot_dir(commit) / safe_relpath(path)

    def link_target(self, commit: str, path: str, etag: str) -> str:
        """The relative symlink target huggingface_hub writes: `../../blobs/{etag}` (+ `../` per folder)."""
        link = self.snapshot_path(commit, path)
        return os.path.relpath(self.blob_path(etag), link.parent)

    def is_linked(self, commit: str, path: str, etag: str) -> bool:
        link = self.snapshot_path(commit, path)
        try:
            return os.readlink(link) == self.link_target(commit, path, etag)
        except OSError:
            return False

    def link(self, commit: str, path: str, etag: str) -> None:
        """Point snapshots/{commit}/{path} at the blob, atomically (a temp link renamed over)."""
        if self.is_linked(commit, path, etag):
            return
        link = self.snapshot_path(commit, path)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_dir() and not link.is_symlink():
            raise IntegrityError(f"cannot link {path}: a folder of that name exists in {link.parent}")
        tmp = link.with_name(f".{link.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        os.symlink(self.link_target(commit, path, etag), tmp)
        os.replace(tmp, link)

    def read_ref(self, revision: str) -> str | None:
        try:
            return (self.folder / "refs" / revision).read_text()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write_ref(self, revision: str, commit: str) -> None:
        """refs/{revision} = commit, without newline; nothing to write when the revision is the commit."""
        if revision == commit or self.read_ref(revision) == commit:
            return
        safe_relpath(revision)
        atomic_write(self.folder / "refs" / revision, commit.encode())

    def write_tree_listing(self, commit: str, files: dict[str, dict[str, object]]) -> None:
        """Write huggingface_hub's `trees/{commit}.json` (only ever for a commit fetched in full).

        With it, huggingface_hub can tell a complete snapshot from a partial one; a listing of a
        filtered subset would make it treat the subset as the whole repo, so callers must not.
        """
        data = {"format_version": 1, "files": {p: files[p] for p in sorted(files)}}
        path = self.folder / "trees" / f"{commit}.json"
        if not path.exists():
            atomic_write(path, json.dumps(data, indent=1).encode(), durable=False)


def is_regular_blob(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False
