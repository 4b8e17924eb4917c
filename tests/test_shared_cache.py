"""Two real Unix users on one group-shared cache (a setgid folder, `umask 002`, as the README recommends).

One member (the attacker) plants links in the cache before the other (the victim) runs `prefetch sync`:
the victim's run must never write, create, truncate or chmod anything outside the cache. It either
completes correctly (planted files replaced, and said) or refuses with a clear message and exit 5.
Needs root, to create the two users (`useradd`) and to run prefetch as each (`setpriv`).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.hubemu import HubEmulator
from tests.test_helper_process import many_small_files

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd"),
    reason="needs root (to create two users) and setpriv",
)

GROUP, VICTIM, ATTACKER = "pfshare", "pfvictim", "pfattacker"
BIG = os.urandom(2 * 1024 * 1024 + 5)  # over 1 MiB: downloaded through a partial file with resume state
CONFIG = b'{"model_type": "tiny"}\n'  # small: fetched into memory, then written once
SECRET = b"the victim's own file\n"
FOLDER = "models--org--model"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Shared:
    """The two users' world: a shared cache, the victim's private folder and file, a Hub."""

    base: Path
    cache: Path
    victim_home: Path
    secret: Path
    hub: HubEmulator
    commit: str

    @property
    def folder(self) -> Path:
        return self.cache / FOLDER

    def run(
        self, user: str, *command: str, timeout: float = 120, **more_env: str
    ) -> subprocess.CompletedProcess[str]:
        """`command` as `user` (group pfshare, umask 002). The ambient CAP_DAC_READ_SEARCH only lets the
        user reach this interpreter where it lives (under /root here): reading, never writing."""
        home = self.base / user
        env = {
            **more_env,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HF_HOME": str(home / "hf"),
            "HF_HUB_CACHE": str(self.cache),
            "HF_ENDPOINT": self.hub.url,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": str(ROOT),
        }
        setpriv = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={GROUP}",
            "--init-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
        ]
        umask = ["sh", "-c", 'umask 002 && exec "$@"', "sh"]
        return subprocess.run(
            [*setpriv, *umask, *command],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def plant(self, script: str) -> None:
        """The attacker's shell commands, run in the cache."""
        done = self.run(ATTACKER, "sh", "-c", f"cd {self.cache} && {script}")
        assert done.returncode == 0, done.stderr

    def victim_sync(self) -> subprocess.CompletedProcess[str]:
        return self.run(
            VICTIM, sys.executable, "-m", "prefetch", "sync", str(self.victim_home / "models.yaml")
        )

    def assert_secret_untouched(self) -> None:
        st = self.secret.lstat()
        assert self.secret.read_bytes() == SECRET
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, pwd.getpwnam(VICTIM).pw_uid)

    def assert_synced(self) -> None:
        """The victim's sync left the right bytes, as regular group-shared files, linked from the snapshot."""
        for data, etag in ((BIG, hashlib.sha256(BIG).hexdigest()), (CONFIG, git_sha1(CONFIG))):
            blob = self.folder / "blobs" / etag
            st = blob.lstat()
            assert stat.S_ISREG(st.st_mode) and blob.read_bytes() == data
            assert stat.S_IMODE(st.st_mode) == 0o664
        for path, data in (("big.safetensors", BIG), ("config.json", CONFIG)):
            assert (self.folder / "snapshots" / self.commit / path).read_bytes() == data
        assert (self.folder / "refs" / "main").read_text() == self.commit


def _user(name: str) -> None:
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-N", "-g", GROUP, "-s", "/usr/sbin/nologin", name], check=True)


@pytest.fixture
def shared(hub: HubEmulator) -> Iterator[Shared]:
    subprocess.run(["groupadd", "-f", GROUP], check=True)
    _user(VICTIM)
    _user(ATTACKER)
    gid = grp.getgrnam(GROUP).gr_gid
    base = Path(tempfile.mkdtemp(prefix="prefetch-shared-", dir="/tmp"))
    try:
        base.chmod(0o755)
        cache = base / "cache"
        cache.mkdir()
        os.chown(cache, 0, gid)
        cache.chmod(0o2775)  # setgid: new folders inherit the group
        for user in (VICTIM, ATTACKER):
            home = base / user
            home.mkdir(mode=0o700)
            os.chown(home, pwd.getpwnam(user).pw_uid, gid)
        victim_home = base / VICTIM
        secret = victim_home / "secret.txt"
        secret.write_bytes(SECRET)
        secret.chmod(0o600)
        manifest = victim_home / "models.yaml"
        manifest.write_text(yaml.safe_dump({"version": 1, "repos": [{"repo": "org/model"}]}))
        for path in (secret, manifest):
            os.chown(path, pwd.getpwnam(VICTIM).pw_uid, gid)
        commit = hub.create_repo("org/model").commit({"big.safetensors": BIG, "config.json": CONFIG})
        yield Shared(base, cache, victim_home, secret, hub, commit)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_planted_links_to_a_victims_file_are_never_written_through(shared: Shared) -> None:
    """Partial file, resume state and lock file of both blobs planted as links to the victim's own file."""
    big, small = hashlib.sha256(BIG).hexdigest(), git_sha1(CONFIG)
    shared.plant(
        f"mkdir -p {FOLDER}/blobs .locks/{FOLDER} && cd {FOLDER}/blobs && "
        f"ln -s {shared.secret} {big}.prefetch-partial && ln -s {shared.secret} {big}.prefetch-partial.json && "
        f"ln -s {shared.secret} {small}.prefetch-partial && "
        f"ln -s {shared.secret} ../../.locks/{FOLDER}/{big}.lock"
    )
    result = shared.victim_sync()
    assert result.returncode == 0, result.stderr
    shared.assert_secret_untouched()
    shared.assert_synced()
    assert f"{big}.prefetch-partial was a symlink to '{shared.secret}' (not followed)" in result.stderr
    assert not (shared.folder / "blobs" / f"{big}.prefetch-partial.json").exists()


def test_links_planted_under_the_blob_names_are_replaced_not_written_through(shared: Shared) -> None:
    """The blobs' own names planted as links to the victim's file: each is replaced by the blob."""
    big, small = hashlib.sha256(BIG).hexdigest(), git_sha1(CONFIG)
    shared.plant(
        f"mkdir -p {FOLDER}/blobs && cd {FOLDER}/blobs && ln -s {shared.secret} {big} && ln -s {shared.secret} {small}"
    )
    result = shared.victim_sync()
    assert result.returncode == 0, result.stderr
    shared.assert_secret_untouched()
    shared.assert_synced()


def test_a_dangling_planted_link_creates_nothing_where_it_points(shared: Shared) -> None:
    """A link to a path of the attacker's choosing, in a folder the victim can write: nothing appears there."""
    big, small = hashlib.sha256(BIG).hexdigest(), git_sha1(CONFIG)
    chosen = shared.victim_home / "chosen-by-the-attacker"
    shared.plant(
        f"mkdir -p {FOLDER}/blobs && cd {FOLDER}/blobs && "
        f"ln -s {chosen} {big}.prefetch-partial && ln -s {chosen}.small {small}.prefetch-partial"
    )
    result = shared.victim_sync()
    assert result.returncode == 0, result.stderr
    assert not chosen.exists() and not Path(f"{chosen}.small").exists()
    shared.assert_synced()


def test_planted_snapshot_entries_are_replaced_and_said(shared: Shared) -> None:
    """A snapshot entry linking outside the repo's blobs/, and one that is a regular file: both replaced."""
    snapshot = f"{FOLDER}/snapshots/{shared.commit}"
    shared.plant(
        f"mkdir -p {snapshot} && ln -s {shared.secret} {snapshot}/config.json && "
        f"echo planted > {snapshot}/big.safetensors"
    )
    result = shared.victim_sync()
    assert result.returncode == 0, result.stderr
    shared.assert_secret_untouched()
    shared.assert_synced()
    assert f"config.json was a symlink to '{shared.secret}', outside this repo's blobs/" in result.stderr
    assert "big.safetensors was a regular file; replaced by a link to its blob" in result.stderr
    assert os.readlink(shared.folder / "snapshots" / shared.commit / "config.json") == (
        f"../../blobs/{git_sha1(CONFIG)}"
    )


@pytest.mark.parametrize(
    "planted", [FOLDER, f"{FOLDER}/blobs", f"{FOLDER}/snapshots/COMMIT", f"{FOLDER}/refs"]
)
def test_a_planted_folder_link_is_refused_and_nothing_is_written_through_it(
    shared: Shared, planted: str
) -> None:
    """A folder of the cache replaced by a link to a folder the victim can write: the run refuses (exit 5)."""
    planted = planted.replace("COMMIT", shared.commit)
    target = shared.victim_home / "target"
    target.mkdir()
    os.chown(target, pwd.getpwnam(VICTIM).pw_uid, grp.getgrnam(GROUP).gr_gid)
    shared.plant(f"mkdir -p {Path(planted).parent} && ln -s {target} {planted}")
    result = shared.victim_sync()
    assert result.returncode == 5, result.stderr
    assert f"refusing to write through {shared.cache / planted}: it is a symlink" in result.stderr
    assert "internal error" not in result.stderr
    assert list(target.iterdir()) == []
    shared.assert_secret_untouched()


def test_a_partial_file_of_another_member_is_resumed(shared: Shared) -> None:
    """What the cache is shared for still works: the attacker's own regular partial file (group-writable)
    is resumed, not refused; its bytes are checked by the hash like any other."""
    big = hashlib.sha256(BIG).hexdigest()
    half = len(BIG) // 2
    source = shared.base / ATTACKER / "half"
    source.write_bytes(BIG[:half] + b"\0" * (len(BIG) - half))
    shutil.chown(source, ATTACKER, GROUP)
    source.chmod(0o664)
    state = f'{{"size": {len(BIG)}, "done": [[0, {half}]], "synced": [[0, {half}]], "boot_id": null}}'
    shared.plant(
        f"mkdir -p {FOLDER}/blobs && cp {source} {FOLDER}/blobs/{big}.prefetch-partial && "
        f"printf '%s' '{state}' > {FOLDER}/blobs/{big}.prefetch-partial.json"
    )
    result = shared.victim_sync()
    assert result.returncode == 0, result.stderr
    shared.assert_synced()
    assert shared.hub.bytes_served(f"/lfs/{big}") == len(BIG) - half


def test_prune_never_deletes_through_a_planted_folder_link(shared: Shared) -> None:
    """prune deletes by name: `blobs/` replaced by a link to a folder of the victim's (another cache of
    theirs, say) must not make it delete the victim's files there."""
    assert shared.victim_sync().returncode == 0
    target = shared.victim_home / "private-cache-blobs"
    target.mkdir()
    unneeded = target / ("a" * 64)  # a blob name no lock of this cache needs
    unneeded.write_bytes(b"the victim's blob")
    shutil.chown(target, VICTIM, GROUP)
    shutil.chown(unneeded, VICTIM, GROUP)
    shared.plant(f"mv {FOLDER}/blobs {FOLDER}/moved && ln -s {target} {FOLDER}/blobs")
    lock = str(shared.victim_home / "models.lock")
    result = shared.run(VICTIM, sys.executable, "-m", "prefetch", "prune", "--lock", lock)
    assert result.returncode == 5, result.stderr
    assert f"refusing to write through {shared.folder / 'blobs'}: it is a symlink" in result.stderr
    assert unneeded.read_bytes() == b"the victim's blob"


def test_files_the_helper_process_fetched_are_the_groups_like_the_others(shared: Shared) -> None:
    """Many small files are shared with a second process (`download.helper`), which writes blobs its own
    way (unnamed files, linked in batches): they too are group-shared, and the other member's sync of
    the same repo finds them complete and fetches nothing."""
    files = many_small_files()
    shared.hub.create_repo("org/many").commit(files)
    for user in (VICTIM, ATTACKER):
        manifest = shared.base / user / "many.yaml"
        manifest.write_text(yaml.safe_dump({"version": 1, "repos": [{"repo": "org/many"}]}))
        shutil.chown(manifest, user, GROUP)

    def sync(user: str) -> subprocess.CompletedProcess[str]:
        manifest = str(shared.base / user / "many.yaml")
        return shared.run(
            user, sys.executable, "-m", "prefetch", "--verbose", "sync", manifest, PREFETCH_PROCESSES="2"
        )

    first = sync(VICTIM)
    assert first.returncode == 0, first.stderr
    assert "sharing the small files with a helper process" in first.stderr
    fetched = shared.hub.count(kind="file")
    assert fetched == len(files)
    blobs = list((shared.cache / "models--org--many" / "blobs").iterdir())
    assert len(blobs) == len(files)
    for blob in blobs:
        st = blob.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o664, blob.name
        assert st.st_gid == grp.getgrnam(GROUP).gr_gid
    second = sync(ATTACKER)
    assert second.returncode == 0, second.stderr
    assert shared.hub.count(kind="file") == fetched


# -------------------------------------------------------------------- files planted where prefetch reads
# Every kind of file a command reads below the cache root, in a cache one sync made; another member
# plants a FIFO under its name. `True`: the big blob is removed too, as the file is read only while that
# blob is fetched (the partial file, its resume state, its lock file).
READ_BY_NAME = {
    "ref": (f"{FOLDER}/refs/main", False),
    "blob": (f"{FOLDER}/blobs/BIG", False),
    "small blob": (f"{FOLDER}/blobs/SMALL", False),
    "partial file": (f"{FOLDER}/blobs/BIG.prefetch-partial", True),
    "resume state": (f"{FOLDER}/blobs/BIG.prefetch-partial.json", True),
    "blob lock": (f".locks/{FOLDER}/BIG.lock", True),
    "snapshot entry": (f"{FOLDER}/snapshots/COMMIT/config.json", False),
}
# Each command that reads the cache, and the exit codes that are an answer (not a hang, not a bug): the
# network commands replace what was planted; the offline ones may only report it.
READERS = {
    "sync": (("sync", "MANIFEST"), {0}),
    "sync --verify": (("sync", "--verify", "MANIFEST"), {0}),
    "sync --offline": (("sync", "--offline", "MANIFEST"), {0, 7}),
    "verify": (("verify", "LOCK"), {0, 7}),
    "verify --repair": (("verify", "--repair", "LOCK"), {0}),
    "status": (("status", "MANIFEST"), {0, 7}),
    "prune": (("prune", "--lock", "LOCK", "--dry-run"), {0}),
    "bundle": (("bundle", "LOCK", "-o", "OUT"), {0, 7}),
}
STALL = 20  # seconds: a command of a few files that takes this long is stalled on what was planted


@pytest.mark.soak
@pytest.mark.parametrize("writer", [False, True], ids=["fifo", "fifo-with-a-writer"])
@pytest.mark.parametrize("command", list(READERS))
def test_a_fifo_planted_where_prefetch_reads_never_stalls_it(
    shared: Shared, command: str, writer: bool
) -> None:
    """A FIFO under each name a command reads: opened without a writer, a blocking open waits forever;
    with a writer that never stops (`cat /dev/zero`), a read that is not bounded never ends. Either way a
    node-warming loop would stall on another user's file. Each command must answer within seconds,
    replacing what it writes (the network commands) or reporting it (the offline ones)."""
    first = shared.victim_sync()
    assert first.returncode == 0, first.stderr
    pristine = shared.base / "pristine"
    subprocess.run(["cp", "-a", str(shared.cache), str(pristine)], check=True)
    names = {"BIG": hashlib.sha256(BIG).hexdigest(), "SMALL": git_sha1(CONFIG), "COMMIT": shared.commit}
    home = shared.victim_home
    args, answers = READERS[command]
    values = {
        "MANIFEST": str(home / "models.yaml"),
        "LOCK": str(home / "models.lock"),
        "OUT": str(home / "b.tar"),
    }
    args = tuple(values.get(a, a) for a in args)
    stalled = []
    for kind, (template, refetch) in READ_BY_NAME.items():
        subprocess.run(["rm", "-rf", str(shared.cache)], check=True)
        subprocess.run(["cp", "-a", str(pristine), str(shared.cache)], check=True)
        planted = re.sub("BIG|SMALL|COMMIT", lambda m: names[m.group(0)], template)
        remove = f"rm -f {FOLDER}/blobs/{names['BIG']} && " if refetch else ""
        shared.plant(f"{remove}mkdir -p {Path(planted).parent} && rm -f {planted} && mkfifo -m 664 {planted}")
        feeder = None
        if writer:  # the attacker's endless writer, waiting for a reader
            feeder = subprocess.Popen(
                ["setpriv", f"--reuid={ATTACKER}", f"--regid={GROUP}", "--init-groups",
                 "sh", "-c", f"exec cat /dev/zero > {shared.cache / planted}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            result = shared.run(VICTIM, sys.executable, "-m", "prefetch", *args, timeout=STALL)
        except subprocess.TimeoutExpired:
            stalled.append(f"{kind} ({planted}): stalled for {STALL}s")
            continue
        finally:
            if feeder is not None:
                feeder.kill()
                feeder.wait()
        if result.returncode not in answers or "internal error" in result.stderr:
            stalled.append(f"{kind} ({planted}): exit {result.returncode}: {result.stderr[-600:]}")
    assert not stalled, "\n".join(stalled)
    shared.assert_secret_untouched()
