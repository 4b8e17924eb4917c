"""The lane of small files (`prefetch.download.lane`): one thread, several requests in flight."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from prefetch.download import new_blobs
from prefetch.download.lane import BigAndSmall
from prefetch.offline.verify import verify
from prefetch.progress import QuietProgress
from prefetch.run import Settings
from prefetch.sync import sync
from tests.conftest import CANARY_TOKEN
from tests.hubemu import Fault, HubEmulator

FILES = 120


class Threads(QuietProgress):
    """The threads that read files' bytes (each reports them as they come). (Not the threads that
    report files done: a batch of small blobs may be installed by its timer's thread.)"""

    def __init__(self) -> None:
        super().__init__()
        self.fetched_by: set[int] = set()

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        self.fetched_by.add(threading.get_ident())


def slow_small_repo(hub: HubEmulator, tmp_path: Path) -> Path:
    """FILES small files, each served in a few milliseconds."""
    hub.create_repo("org/small").commit({f"data/{i:03d}.json": os.urandom(100 + i) for i in range(FILES)})
    hub.inject(Fault(kind="slow", times=None, match=r"/resolve/.*\.json", bytes_per_sec=40_000))
    manifest = tmp_path / "models.yaml"
    manifest.write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: org/small\n")
    return manifest


def test_small_files_come_from_one_thread_with_requests_in_flight(tmp_path: Path, hub: HubEmulator) -> None:
    """One thread reads every small file (no hand-off of the interpreter lock per file), yet the
    server answers several at once: the next requests were sent before the oldest answer was read.
    Before the lane, each of the `jobs` worker threads fetched its own files."""
    threads = Threads()
    settings = Settings(cache_dir=tmp_path / "cache", processes=1, jobs=8)
    result = sync(slow_small_repo(hub, tmp_path), settings=settings, progress=threads)
    assert result.summary()["fetched_files"] == FILES
    assert len(threads.fetched_by) == 1, threads.fetched_by
    answers = [(r.time, r.sent) for r in hub.requests if r.kind == "file"]
    assert len(answers) == FILES  # one request per file
    assert most_at_once(answers) >= 2, "no request was sent while another answer was on its way"
    assert verify(tmp_path / "models.lock", cache_dir=tmp_path / "cache").ok


def most_at_once(requests: list[tuple[float, float]]) -> int:
    """The most requests whose answers were on their way at one time (arrival, answer sent)."""
    return max(sum(1 for a, _ in requests if start <= a < end) for start, end in requests)


def test_small_lfs_files_are_fetched_from_their_cdn_with_requests_in_flight(
    tmp_path: Path, hub: HubEmulator
) -> None:
    """Small LFS files: the Hub redirects each to its CDN. The redirect's target joins the requests in
    flight (the lane does not wait for each CDN answer in turn), the token stays on the Hub, and the
    hashes the Hub states in the redirect are checked. Before, each CDN request was made and read
    before the next file's."""
    hub.add_user("alice", token=CANARY_TOKEN)
    files = {f"img/{i:03d}.jpg": os.urandom(300 + i) for i in range(60)}
    hub.create_repo("alice/pics", private=True).commit(files, lfs=set(files))
    hub.inject(Fault(kind="slow", times=None, origin="cdn", bytes_per_sec=40_000))
    manifest = tmp_path / "models.yaml"
    manifest.write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: alice/pics\n")
    threads = Threads()
    (tmp_path / "token").write_text(CANARY_TOKEN)
    settings = Settings(cache_dir=tmp_path / "cache", processes=1, jobs=8, token_file=tmp_path / "token")
    result = sync(manifest, settings=settings, progress=threads)
    assert result.summary()["fetched_files"] == len(files)
    assert len(threads.fetched_by) == 1, threads.fetched_by
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    assert len(cdn) == len(files)
    assert most_at_once([(r.time, r.sent) for r in cdn]) >= 2, "each CDN request waited for the one before"
    assert all("authorization" not in r.headers for r in cdn)
    assert verify(tmp_path / "models.lock", cache_dir=tmp_path / "cache").ok


def test_a_small_file_that_fails_in_the_lane_is_retried_while_the_others_go_on(
    tmp_path: Path, hub: HubEmulator
) -> None:
    """A 503 and a corrupt body in the lane: those two files are fetched again (the lane's try was
    their first attempt), the others are not asked twice, and the cache verifies."""
    manifest = slow_small_repo(hub, tmp_path)
    hub.inject(Fault(kind="status", status=503, match=r"/resolve/.*/data/007\.json"))
    hub.inject(Fault(kind="corrupt", match=r"/resolve/.*/data/042\.json"))
    settings = Settings(cache_dir=tmp_path / "cache", processes=1, jobs=8)
    result = sync(manifest, settings=settings)
    assert result.summary()["fetched_files"] == FILES
    asked = [r.path.rsplit("/", 1)[-1] for r in hub.requests if r.kind == "file"]
    assert asked.count("007.json") == 2 and asked.count("042.json") == 2
    assert len(asked) == FILES + 2
    assert verify(tmp_path / "models.lock", cache_dir=tmp_path / "cache").ok


class Job:
    def __init__(self, name: str, small: bool) -> None:
        self.name, self.small = name, small


def test_the_lane_takes_the_small_files_from_the_start_and_workers_the_big_ones() -> None:
    """The lane's first file is the first small one, however many big files come before it (it used to
    take a big one as a worker, and the small files waited for it); workers get the big ones, the lane
    takes big ones only once no small one is left."""
    jobs = [
        Job("big1", False),
        Job("big2", False),
        Job("big3", False),
        Job("small1", True),
        Job("small2", True),
    ]
    files = BigAndSmall(jobs)  # type: ignore[arg-type]
    workers = files.big()
    assert next(workers).name == "big1"
    assert files.take().name == "small1"  # type: ignore[union-attr]
    assert [job.name for job in workers] == ["big2", "big3"]  # stopped at small2, which stays for the lane
    assert files.take().name == "small2"  # type: ignore[union-attr]
    assert files.take() is None and list(files.big()) == []
    files = BigAndSmall([Job("big1", False), Job("big2", False), Job("small1", True)])  # type: ignore[arg-type]
    assert [files.take().name for _ in range(3)] == ["small1", "big1", "big2"]  # type: ignore[union-attr]


def test_a_batch_named_by_its_timer_thread_keeps_its_folder_open(
    tmp_path: Path, hub: HubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last small blobs of a run may be named by their batch's timer thread while the run ends.
    The run used to close the folders it kept open before it waited for that thread, which then named
    the blob relative to a closed folder fd (EBADF; a reused fd would have been another folder). Here
    the timer's naming of the blob is held (a slow `link`) until the run is past its workers."""
    # The bigger file first (the run's order), then one that takes ~0.4 s.
    hub.create_repo("org/one").commit({"vocab.json": os.urandom(20_000), "config.json": os.urandom(100)})
    hub.inject(Fault(kind="slow", times=None, match=r"config\.json", bytes_per_sec=250))
    manifest = tmp_path / "models.yaml"
    manifest.write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: org/one\n")
    link = os.link

    def slow_link(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.6)
        link(*args, **kwargs)

    monkeypatch.setattr(new_blobs, "BATCH_WAIT", 0.01)
    monkeypatch.setattr(os, "link", slow_link)
    result = sync(manifest, settings=Settings(cache_dir=tmp_path / "cache", processes=1))
    assert result.summary()["fetched_files"] == 2
    assert verify(tmp_path / "models.lock", cache_dir=tmp_path / "cache").ok
