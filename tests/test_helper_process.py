"""The second process for many small files (`prefetch.download.helper`), through the test Hub.

The runs are in-process library calls (`prefetch.sync.sync`), so the tests can see which thread
reported each file: the helper's files reach the run's reporter from the relay thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from prefetch import errors
from prefetch.cancel import CancelToken
from prefetch.download import helper
from prefetch.download.job import FileJob
from prefetch.errors import Cancelled, ExitCode, IntegrityError, relayed_error
from prefetch.offline.verify import verify
from prefetch.progress import QuietProgress
from prefetch.run import Settings
from prefetch.sync import sync
from tests.conftest import CANARY_TOKEN, PrefetchRunner
from tests.hubemu import Fault, HubEmulator
from tests.test_interop import NETNS_UNAVAILABLE, run_consumer

COUNT = helper.MIN_FILES + 88
RELAY = "prefetch-helper-relay"


class Recorder(QuietProgress):
    """Counts the files each side reported (the helper's come from the relay thread); `then` runs
    after each of the helper's files, with how many it reported so far."""

    def __init__(self, then: Callable[[int], None] = lambda n: None) -> None:
        super().__init__()
        self.by_side: Counter[str] = Counter()
        self._then = then
        self._lock = threading.Lock()

    def file_done(self, job: FileJob, how: str) -> None:
        super().file_done(job, how)
        side = "helper" if threading.current_thread().name == RELAY else "parent"
        with self._lock:
            self.by_side[side] += 1
            count = self.by_side["helper"]
        if side == "helper":
            self._then(count)


def many_small_files() -> dict[str, bytes]:
    """Enough small files for a run to share them with the helper (`helper.MIN_FILES` and more)."""
    return {f"data/{i:04d}.json": b'{"n": %d}\n' % i for i in range(helper.MIN_FILES + 40)}


def small_repo(hub: HubEmulator, tmp_path: Path, repo: str = "org/many", **repo_args: object) -> Path:
    """COUNT small files, each served in about 10 ms: the parent alone would take seconds, so the
    helper, which starts in a fraction of one, gets its share however busy the machine is."""
    hub.create_repo(repo, **repo_args).commit(  # type: ignore[arg-type]
        {f"data/{i // 250:03d}/{i:05d}.json": os.urandom(200 + i % 700) for i in range(COUNT)}
    )
    hub.inject(Fault(kind="slow", times=None, match=r"/resolve/.*\.json", bytes_per_sec=50_000))
    manifest = tmp_path / "models.yaml"
    manifest.write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: {repo}\n")
    return manifest


def two_processes(tmp_path: Path, **more: object) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", processes=2, jobs=4, **more)  # type: ignore[arg-type]


def helpers() -> list[int]:
    """This process's children that run the helper (`helper.SERVE`)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"prefetch.download.helper" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
    return found


def the_helper() -> int:
    (pid,) = helpers()
    return pid


def test_many_small_files_are_shared_with_a_helper_process(tmp_path: Path, hub: HubEmulator) -> None:
    """Both processes fetch files, none twice (one counter hands them out), and the cache verifies."""
    manifest = small_repo(hub, tmp_path)
    progress = Recorder()
    result = sync(manifest, settings=two_processes(tmp_path), progress=progress)
    assert result.summary()["fetched_files"] == COUNT
    assert progress.by_side["helper"] > 0 and progress.by_side["parent"] > 0, progress.by_side
    assert sum(progress.by_side.values()) == COUNT
    assert hub.count(kind="file") == COUNT
    assert verify(tmp_path / "models.lock", cache_dir=tmp_path / "cache").ok
    assert not helpers()


def test_the_helper_does_not_import_the_manifests_yaml(tmp_path: Path, hub: HubEmulator) -> None:
    """The helper is a fresh interpreter started mid-run: its imports are time taken from the small
    files. It reads no manifest, so PyYAML (~25 ms of imports here) is not among them. PyYAML's C
    extension, loaded whenever `yaml` is imported, is how this test sees it in the helper's memory."""
    maps: list[str] = []

    def look(count: int) -> None:
        if count == 1:
            maps.append(Path(f"/proc/{the_helper()}/maps").read_text())

    sync(small_repo(hub, tmp_path), settings=two_processes(tmp_path), progress=Recorder(look))
    assert maps, "the helper fetched no file"
    assert "_yaml." not in maps[0]
    assert "_yaml." in Path("/proc/self/maps").read_text()  # the test itself imported it: it would show


@pytest.mark.soak
def test_one_process_when_told_or_when_there_are_few_small_files(tmp_path: Path, hub: HubEmulator) -> None:
    manifest = small_repo(hub, tmp_path)
    progress = Recorder()
    sync(manifest, settings=Settings(cache_dir=tmp_path / "cache", processes=1, jobs=4), progress=progress)
    assert progress.by_side == {"parent": COUNT}
    hub.create_repo("org/few").commit({f"f{i}.json": b"%d" % i for i in range(helper.MIN_FILES - 1)})
    (tmp_path / "few.yaml").write_text(f"version: 1\nendpoint: {hub.url}\nrepos:\n  - repo: org/few\n")
    progress = Recorder()
    sync(tmp_path / "few.yaml", settings=two_processes(tmp_path), progress=progress)
    assert progress.by_side == {"parent": helper.MIN_FILES - 1}
    # By default, fewer than AUTO_MIN_FILES: one process (the start of a second one would not pay).
    progress = Recorder()
    sync(manifest, settings=Settings(cache_dir=tmp_path / "default", jobs=4), progress=progress)
    assert COUNT < helper.AUTO_MIN_FILES and progress.by_side == {"parent": COUNT}


@pytest.mark.soak
def test_a_killed_helper_leaves_its_files_to_the_parent(
    tmp_path: Path, hub: HubEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of the helper mid-run: the parent fetches what it had taken and not finished."""
    manifest = small_repo(hub, tmp_path)

    def kill(count: int) -> None:
        if count == 20:
            os.kill(the_helper(), signal.SIGKILL)

    with caplog.at_level(logging.WARNING, logger="prefetch"):
        result = sync(manifest, settings=two_processes(tmp_path), progress=Recorder(kill))
    assert "the helper process for small files ended early (exit code -9)" in caplog.text
    assert result.summary()["fetched_files"] > COUNT - 100  # some, installed but not yet reported, were found
    assert verify(tmp_path / "models.lock", cache_dir=tmp_path / "cache").ok


def test_cancelling_the_run_stops_the_helper(tmp_path: Path, hub: HubEmulator) -> None:
    manifest = small_repo(hub, tmp_path)
    cancel = CancelToken()
    with pytest.raises(Cancelled):
        sync(
            manifest,
            settings=two_processes(tmp_path),
            progress=Recorder(lambda count: cancel.cancel() if count == 20 else None),
            cancel=cancel,
        )
    assert not helpers()  # it ended (and was reaped) before the run returned
    assert hub.count(kind="file") < COUNT
    blobs = tmp_path / "cache" / "models--org--many" / "blobs"
    assert all(len(p.name) == 40 for p in blobs.iterdir())  # complete blobs only, no leftovers


@pytest.mark.soak
def test_the_helpers_failures_reach_the_run_with_their_exit_code(tmp_path: Path, hub: HubEmulator) -> None:
    """Every file arrives corrupted: each side fails its own files, and the run's error lists them all."""
    manifest = small_repo(hub, tmp_path)
    hub.inject(Fault(kind="corrupt", times=None, match="/resolve/"))
    progress = Recorder()
    with pytest.raises(IntegrityError) as failed:
        sync(manifest, settings=two_processes(tmp_path), progress=progress)
    assert str(failed.value).count("do not match the expected hash") == COUNT
    assert failed.value.exit_code == ExitCode.INTEGRITY
    assert hub.count(kind="file") == 2 * COUNT


def test_the_helper_gets_the_token_through_its_pipe_only(
    tmp_path: Path, hub: HubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private repo read with a token file: the helper's requests carry the token, which is on
    neither its command line nor in its environment."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.add_user("alice", token=CANARY_TOKEN)
    manifest = small_repo(hub, tmp_path, "alice/many", private=True)
    token_file = tmp_path.parent / f"{tmp_path.name}-token"
    token_file.write_text(CANARY_TOKEN)
    seen: list[bytes] = []

    def look(count: int) -> None:
        if count == 1:
            pid = the_helper()
            seen.extend(Path(f"/proc/{pid}/{what}").read_bytes() for what in ("cmdline", "environ"))

    progress = Recorder(look)
    settings = two_processes(tmp_path, token_file=token_file)
    assert sync(manifest, settings=settings, progress=progress).summary()["fetched_files"] == COUNT
    assert progress.by_side["helper"] > 0
    assert len(seen) == 2 and not any(CANARY_TOKEN.encode() in text for text in seen)


@pytest.mark.soak
def test_once_the_helper_ended_its_connections_are_the_parents_again(
    tmp_path: Path, hub: HubEmulator
) -> None:
    """Small files and a big file behind a per-connection cap: while the helper works the parent has
    half of `--jobs`; once it ended, the big file's segments get all of them."""
    jobs, mib = 16, 1024 * 1024
    small_repo(hub, tmp_path)
    commit = hub.repo("org/many").commit({"model.safetensors": os.urandom(48 * mib)})
    sha = hub.repo("org/many").file_info(commit, "model.safetensors").sha256
    hub.bandwidth_per_connection = 2 * mib
    progress = Recorder()
    settings = Settings(
        cache_dir=tmp_path / "cache", processes=2, jobs=jobs, segment_size=mib, segment_threshold=mib
    )
    sync(tmp_path / "models.yaml", settings=settings, progress=progress)
    assert progress.by_side["helper"] > 0
    connections = {r.client_port for r in hub.requests if r.origin == "cdn" and sha and sha in r.path}
    assert jobs // 2 < len(connections) <= jobs


@pytest.mark.soak
def test_a_process_bound_by_its_cpu_shares_its_small_files(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """By default (`helper.AUTO_MIN_FILES` small files or more) the helper gets files once the run is
    seen bound by its own CPU: small files from a near server (the test Hub, on loopback) are.
    huggingface_hub, with no network, loads what the two processes wrote."""
    files = {f"data/{i:05d}.json": os.urandom(300) for i in range(helper.AUTO_MIN_FILES + 88)}
    hub.create_repo("org/many").commit(files)
    manifest = prefetch.manifest([{"repo": "org/many"}])
    result = prefetch("-v", "sync", str(manifest))
    assert result.code == 0, result
    assert "sharing the small files with a helper process" in result.stderr
    assert "this process is bound by its own CPU" in result.stderr
    assert prefetch("verify", str(prefetch.tmp / "models.lock")).code == 0
    mode = "netns" if NETNS_UNAVAILABLE is None else "plain"
    call = {
        "call": "snapshot_download",
        "kwargs": {"repo_id": "org/many", "cache_dir": str(prefetch.cache_dir)},
    }
    (loaded,) = run_consumer(prefetch, [call], mode=mode, hub=hub)
    assert loaded == {"ok": {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}}


@pytest.mark.soak
def test_a_library_callers_unguarded_script_runs_once(tmp_path: Path, hub: HubEmulator) -> None:
    """The helper is not started by importing the caller's main script again (as multiprocessing's
    spawn would): a script without `if __name__ == "__main__"` runs once."""
    manifest = small_repo(hub, tmp_path)
    ran = tmp_path / "ran"
    script = tmp_path / "fetch.py"
    script.write_text(
        textwrap.dedent(f"""
            import logging
            from prefetch.run import Settings
            from prefetch.sync import sync
            logging.basicConfig(level=logging.INFO)
            with open({str(ran)!r}, "a") as out:
                out.write("ran\\n")
            sync({str(manifest)!r}, settings=Settings(cache_dir={str(tmp_path / "cache")!r}, processes=2, jobs=4))
        """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "sharing the small files with a helper process" in done.stderr
    assert ran.read_text() == "ran\n"


@pytest.mark.soak
@pytest.mark.parametrize("hub", ["mirror"], indirect=True)
def test_names_the_helper_learned_from_the_bytes_reach_the_lock(tmp_path: Path, hub: HubEmulator) -> None:
    """An endpoint that publishes no hash: each file's sha256 is learned from its bytes, by whichever
    process fetched it, and recorded in the lock."""
    manifest = small_repo(hub, tmp_path)
    hub.missing_routes.add("tree")
    hub.publishes_hashes = False
    progress = Recorder()
    sync(manifest, settings=two_processes(tmp_path), progress=progress)
    assert progress.by_side["helper"] > 0
    files = yaml.safe_load((tmp_path / "models.lock").read_text())["entries"][0]["files"]
    snapshot = next((tmp_path / "cache" / "models--org--many" / "snapshots").iterdir())
    assert len(files) == COUNT
    for entry in files:
        data = (snapshot / entry["path"]).read_bytes()
        assert (
            entry["sha256"] == hashlib.sha256(data).hexdigest() == (snapshot / entry["path"]).resolve().name
        )
    assert verify(tmp_path / "models.lock", cache_dir=tmp_path / "cache").ok


def test_a_relayed_error_keeps_its_class_and_so_its_exit_code() -> None:
    for kind in (
        errors.NetworkError,
        errors.AccessError,
        errors.IntegrityError,
        errors.DiskSpaceError,
        errors.FilesystemError,
        errors.VerifyError,
        errors.GatedRepoError,
        errors.EgressLimitError,
    ):
        error = relayed_error(kind.__name__, "what happened")
        assert type(error) is kind and error.exit_code == kind.exit_code and str(error) == "what happened"
    assert relayed_error("VerifyError", "x").exit_code == ExitCode.VERIFY_FAILED
    assert relayed_error("NoSuchError", "a bug").exit_code == ExitCode.INTERNAL
    assert relayed_error("Path", "not an error class").exit_code == ExitCode.INTERNAL
