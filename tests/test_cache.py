"""The cache layout module: modes, resume state, atomic writes, locks shared with huggingface_hub."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import prefetch.cache as cache_mod
from prefetch.cache import RepoCache, boot_id, repo_folders, safe_relpath
from prefetch.errors import DiskSpaceError, IntegrityError, UnsafeFolder
from prefetch.files import atomic_write, file_mode
from prefetch.hashing import hash_file

ETAG = "ab" * 32
COMMIT = "c" * 40


@pytest.fixture
def repo(tmp_path: Path) -> RepoCache:
    return RepoCache(tmp_path / "hub", "org/name", "model")


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test and restore it after."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def test_file_mode_follows_the_umask_without_touching_it(umask, monkeypatch):
    """os.umask() can only be read by setting it: another thread would create files with the wrong mask."""
    umask(0o027)
    assert file_mode() == 0o640
    umask(0o002)

    def no_umask(mask: int) -> int:
        raise AssertionError("os.umask must not be called while threads may be creating files")

    monkeypatch.setattr(os, "umask", no_umask)
    assert file_mode() == 0o664  # the current mask, not one cached earlier


def write_state(repo: RepoCache, state: object, partial_size: int = 1000) -> None:
    repo.blobs.mkdir(parents=True, exist_ok=True)
    with open(repo.partial_path(ETAG), "wb") as f:
        f.truncate(partial_size)
    repo.state_path(ETAG).write_text(json.dumps(state))


def test_partial_state_round_trip(repo):
    write_state(repo, {})
    repo.partials.write_partial_state(ETAG, 1000, [(0, 100), (200, 300)], [(0, 100)])
    assert repo.partials.read_partial_state(ETAG, 1000) == [(0, 100), (200, 300)]
    state = json.loads(repo.state_path(ETAG).read_text())
    assert state["boot_id"] == boot_id() and state["synced"] == [[0, 100]]


def test_after_a_reboot_only_synced_ranges_count(repo):
    write_state(repo, {"size": 1000, "done": [[0, 600]], "synced": [[0, 200]], "boot_id": "another-boot"})
    assert repo.partials.read_partial_state(ETAG, 1000) == [(0, 200)]
    write_state(repo, {"size": 1000, "done": [[0, 600]], "boot_id": "another-boot"})
    assert repo.partials.read_partial_state(ETAG, 1000) == []


def test_state_without_boot_id_is_trusted(repo):
    write_state(repo, {"size": 1000, "done": [[0, 600]]})
    assert repo.partials.read_partial_state(ETAG, 1000) == [(0, 600)]


@pytest.mark.parametrize(
    "state",
    [
        {"size": 999, "done": [[0, 10]]},
        {"size": 1000, "done": "nonsense"},
        {"size": 1000, "done": [[0]]},
        {"size": 1000, "done": [["a", "b"]]},
        {"size": 1000, "done": 5},
        [1, 2],
        "text",
    ],
)
def test_unusable_state_means_start_over(repo, state):
    write_state(repo, state)
    assert repo.partials.read_partial_state(ETAG, 1000) == []


def test_ranges_beyond_the_partial_file_are_dropped(repo):
    write_state(repo, {"size": 1000, "done": [[0, 100], [500, 1000], [-5, 3]]}, partial_size=600)
    assert repo.partials.read_partial_state(ETAG, 1000) == [(0, 100)]


def test_state_without_its_partial_file_is_ignored(repo):
    write_state(repo, {"size": 1000, "done": [[0, 100]]})
    repo.partial_path(ETAG).unlink()
    assert repo.partials.read_partial_state(ETAG, 1000) == []


def test_a_full_disk_while_saving_state_is_a_disk_space_error(repo, monkeypatch):
    def full(dir_fd: int, name: str, data: bytes, *, durable: bool = True) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "atomic_write_at", full)
    with pytest.raises(DiskSpaceError, match="disk full"):
        repo.partials.write_partial_state(ETAG, 10, [(0, 5)])


def test_atomic_write_leaves_no_temporary_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "refs" / "main"
    target.parent.mkdir()

    def fail(src: object, dst: object, **dir_fds: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write(target, b"x")
    assert list(target.parent.iterdir()) == []


def test_atomic_write_mode_follows_the_umask(tmp_path, umask):
    umask(0o002)
    atomic_write(tmp_path / "a", b"x")
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o664


def test_install_blob_makes_the_partial_the_blob(repo, umask):
    umask(0o002)
    write_state(repo, {"size": 1000, "done": [[0, 1000]]})
    os.chmod(repo.partial_path(ETAG), 0o600)
    repo.installer.install_blob(ETAG)
    blob = repo.blob_path(ETAG)
    assert blob.stat().st_size == 1000 and blob.stat().st_mode & 0o777 == 0o664
    assert not repo.partial_path(ETAG).exists() and not repo.state_path(ETAG).exists()
    assert repo.has_blob(ETAG, 1000) and not repo.has_blob(ETAG, 999)


def test_install_blob_installs_only_the_file_that_was_verified(repo):
    """A partial file swapped under its name after it was hashed (a member of a shared cache) is not installed."""
    write_state(repo, {"size": 1000, "done": [[0, 1000]]})
    fd = os.open(repo.partial_path(ETAG), os.O_RDWR)  # the download's file, hashed
    try:
        repo.partial_path(ETAG).unlink()
        repo.partial_path(ETAG).write_bytes(b"swapped in" * 100)
        with pytest.raises(IntegrityError, match="replaced by another file while it was being installed"):
            repo.installer.install_blob(ETAG, verified_fd=fd)
    finally:
        os.close(fd)
    assert not repo.blob_path(ETAG).exists()


def test_links_are_relative_and_nested(repo):
    repo.blobs.mkdir(parents=True)
    repo.blob_path(ETAG).write_bytes(b"x")
    repo.link(COMMIT, "a/b/c.json", ETAG)
    link = repo.snapshot_path(COMMIT, "a/b/c.json")
    assert os.readlink(link) == f"../../../../blobs/{ETAG}"
    assert link.read_bytes() == b"x" and repo.is_linked(COMMIT, "a/b/c.json", ETAG)


def test_a_link_never_goes_through_a_symlinked_folder(repo, tmp_path):
    """A folder of the snapshot replaced by a symlink must not lead a link outside the cache."""
    outside = tmp_path / "outside"
    outside.mkdir()
    repo.snapshot_dir(COMMIT).mkdir(parents=True)
    (repo.snapshot_dir(COMMIT) / "sub").symlink_to(outside)
    with pytest.raises(IntegrityError, match="outside"):
        repo.link(COMMIT, "sub/file.txt", ETAG)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("path", ["", "/abs", "../x", "a/../../x", "a//b", "./a", "a\\..\\b", "a/."])
def test_unsafe_paths_are_refused(path):
    with pytest.raises(IntegrityError, match="unsafe"):
        safe_relpath(path)


def test_layout_paths_and_their_bundle_member_names(repo):
    """A bundle member is named by its path relative to the cache root, in the cache's own layout."""
    assert repo.relpath(repo.blob_path(ETAG)) == f"models--org--name/blobs/{ETAG}"
    assert (
        repo.relpath(repo.snapshot_path(COMMIT, "a/b.json"))
        == f"models--org--name/snapshots/{COMMIT}/a/b.json"
    )
    assert repo.relpath(repo.ref_path("release/v1")) == "models--org--name/refs/release/v1"
    assert repo.tree_path(COMMIT) == repo.folder / "trees" / f"{COMMIT}.json"
    with pytest.raises(IntegrityError, match="unsafe"):
        repo.ref_path("../../escape")


def test_repo_folders_are_the_folders_named_like_repos(tmp_path):
    root = tmp_path / "hub"
    assert repo_folders(root) == []  # no cache yet
    RepoCache(root, "org/b", "dataset").blobs.mkdir(parents=True)
    RepoCache(root, "org/a", "model").blobs.mkdir(parents=True)
    (root / ".locks").mkdir()
    (root / "models--not--a-folder").write_text("")
    assert [p.name for p in repo_folders(root)] == ["datasets--org--b", "models--org--a"]


def test_blob_lock_waits_for_huggingface_hub_and_can_be_interrupted(repo):
    from huggingface_hub.utils import WeakFileLock

    class Stop(Exception):
        pass

    waits: list[float] = []
    started = time.monotonic()

    def interrupt() -> None:
        if time.monotonic() - started > 0.5:
            raise Stop()

    repo.lock_path(ETAG).parent.mkdir(parents=True)
    with WeakFileLock(repo.lock_path(ETAG)), pytest.raises(Stop):  # noqa: SIM117
        with repo.blob_lock(ETAG, on_wait=lambda: waits.append(time.monotonic()), interrupt=interrupt):
            pytest.fail("acquired a lock that huggingface_hub holds")
    assert len(waits) == 1


def test_blob_lock_is_taken_once_the_holder_releases_it(repo):
    order: list[str] = []
    holding = threading.Event()

    def holder() -> None:
        with repo.blob_lock(ETAG):
            holding.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(5)
    with repo.blob_lock(ETAG):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]


def test_a_stale_partial_is_removed_once_its_blob_is_complete(repo):
    write_state(repo, {"size": 1000, "done": [[0, 400]]})
    assert not repo.partials.discard_stale_partial(ETAG, 1000)  # no blob yet: the partial is still useful
    assert repo.partials.has_partial(ETAG)
    repo.blob_path(ETAG).write_bytes(b"\0" * 1000)  # e.g. huggingface_hub finished the download
    assert repo.partials.discard_stale_partial(ETAG, 1000)
    assert not repo.partials.has_partial(ETAG) and repo.has_blob(ETAG, 1000)
    assert not repo.partials.discard_stale_partial(ETAG, 1000)


def test_a_garbage_ref_is_replaced_not_a_crash(tmp_path):
    """A ref file holding non-UTF-8 bytes (a torn write by another tool) is overwritten with the commit."""
    cache = RepoCache(tmp_path, "org/model", "model")
    ref = cache.folder / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_bytes(b"\xff\xfe garbage")
    assert cache.read_ref("main") is not None
    cache.write_ref("main", "a" * 40)
    assert ref.read_bytes() == b"a" * 40


def test_huggingface_hub_waits_while_prefetch_holds_the_blob_lock(repo):
    """prefetch takes the lock with a bare flock: huggingface_hub's filelock must still see it held."""
    from filelock import FileLock, Timeout

    with repo.blob_lock(ETAG), pytest.raises(Timeout):
        FileLock(str(repo.lock_path(ETAG))).acquire(timeout=0.2)
    with FileLock(str(repo.lock_path(ETAG))).acquire(timeout=1):
        pass  # released with the block


def test_blob_lock_files_are_group_writable_past_the_umask(repo):
    """Another user of a shared cache must be able to open the lock file for writing, as filelock allows."""
    old = os.umask(0o077)
    try:
        with repo.blob_lock(ETAG):
            pass
    finally:
        os.umask(old)
    assert repo.lock_path(ETAG).stat().st_mode & 0o777 == 0o664


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_folders_kept_open_are_walked_once_and_closed_after(tmp_path: Path) -> None:
    """A run opens `blobs/` and the lock folder once for all its files, and leaks no fd."""
    cache = RepoCache(tmp_path, "org/model", "model")
    before = open_fds()
    with cache.folders_kept_open():
        with cache.blobs_folder() as first, cache.blobs_folder() as second:
            assert first == second
        with cache.blob_lock("a" * 40), cache.blob_lock("b" * 40):
            pass
        assert len(open_fds() - before) == 2  # blobs/ and .locks/{repo folder}/
    assert open_fds() == before


def test_a_folder_kept_open_is_still_reached_without_following_links(tmp_path: Path) -> None:
    cache = RepoCache(tmp_path, "org/model", "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache.folder.mkdir(parents=True)
    (cache.folder / "blobs").symlink_to(elsewhere)
    with cache.folders_kept_open(), pytest.raises(UnsafeFolder):
        cache.installer.write_new_blob("c" * 40, b"data")
    assert list(elsewhere.iterdir()) == []


def test_what_a_shared_cache_member_planted_is_never_read_whole(repo: RepoCache) -> None:
    """A ref, a resume state or a blob of gigabytes (sparse: a member of a shared cache makes one for
    free) is refused from its size, not read into memory; a blob that is longer than its lock says is
    read one byte past its size, which is all the answer needs."""
    repo.refs.mkdir(parents=True)
    with open(repo.ref_path("main"), "wb") as f:
        f.truncate(64 * 1024 * 1024)
    with pytest.raises(OSError) as refused:
        repo.read_ref("main")
    assert refused.value.errno == errno.EFBIG
    write_state(repo, {"size": 1000, "done": [[0, 500]]})
    with open(repo.state_path(ETAG), "ab") as f:
        f.truncate(64 * 1024 * 1024)
    assert repo.partials.read_partial_state(ETAG, 1000) == []
    blob = repo.blob_path(ETAG)
    blob.write_bytes(b"x" * (3 * 1024 * 1024))
    assert hash_file(blob, True, 10)[0] == 11


def test_a_fifo_in_the_cache_is_refused_without_waiting(repo: RepoCache) -> None:
    """Opened the usual way, a FIFO with no writer blocks forever: a ref, a resume state and a blob planted
    as FIFOs are refused at once."""
    repo.refs.mkdir(parents=True)
    repo.blobs.mkdir(parents=True)
    for path in (repo.ref_path("main"), repo.state_path(ETAG), repo.blob_path(ETAG)):
        os.mkfifo(path)
    with pytest.raises(OSError) as refused:
        repo.read_ref("main")
    assert refused.value.errno == errno.EINVAL
    assert repo.partials.read_partial_state(ETAG, 1000) == []
    with pytest.raises(OSError):
        hash_file(repo.blob_path(ETAG), True, 10)
    repo.write_ref("main", COMMIT)  # replaced
    assert repo.read_ref("main") == COMMIT
