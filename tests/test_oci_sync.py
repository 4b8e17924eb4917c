"""`prefetch push` and `prefetch sync --source oci://...` end to end: the real CLI, a lock written against
the test Hub, the Distribution registry (`docker-registry`), `skopeo copy` to a second registry for the
air gap, an OCI layout folder, and huggingface_hub loading the result offline.

The registry is as untrusted as any mirror: the lock is the root of trust, so a sync from a registry
makes no request to the Hub at all, and a layer whose bytes are not the lock's is refused (exit 5).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prefetch.cache import RepoCache
from tests.conftest import CANARY_TOKEN, CliResult, PrefetchRunner
from tests.hubemu import HubEmulator
from tests.oci_fixture import (
    REGISTRY_CANARY,
    REGISTRY_USER,
    RecordingProxy,
    RegistryServer,
    auth_registry,  # noqa: F401  (fixture)
    free_port,
    recording_proxy,  # noqa: F401  (fixture)
    registry,  # noqa: F401  (fixture)
    second_registry,  # noqa: F401  (fixture)
)
from tests.offline_helpers import blob_of, tree_state
from tests.test_oci import skopeo
from tests.test_sync import run_python

WEIGHTS = os.urandom(24 * 1024 * 1024 + 7)  # LFS, in both revisions of org/model: one blob, uploaded once
SHARD = os.urandom(3 * 1024 * 1024 + 1)  # LFS, only in v1.0
LFS_BYTES = len(WEIGHTS) + len(SHARD)


def make_repos(hub: HubEmulator) -> dict[str, str]:
    """org/model at v1.0 and main (the same weights blob, another config), and a dataset."""
    model = hub.create_repo("org/model")
    v1 = model.commit(
        {"config.json": b'{"hidden": 8}', "model.safetensors": WEIGHTS, "shard.bin": SHARD,
         "nested/deeper/tokenizer.json": b'{"vocab": {}}', "README.md": b"# model\n"},
    )  # fmt: skip
    model.create_tag("v1.0", at=v1)
    v2 = model.commit({"config.json": b'{"hidden": 16}'})
    data = hub.create_repo("org/data", repo_type="dataset")
    d1 = data.commit({"data/train.csv": b"a,b\n1,2\n", "README.md": b"# data\n"})
    return {"v1": v1, "v2": v2, "data": d1}


def hub_synced(prefetch: PrefetchRunner, hub: HubEmulator) -> dict[str, str]:
    """The repos on the test Hub, synced into `prefetch.cache_dir` with models.yaml -> models.lock."""
    commits = make_repos(hub)
    prefetch.manifest(
        [
            {"repo": "org/model", "revision": "v1.0"},
            {"repo": "org/model", "revision": "main", "include": ["*.json", "*.safetensors"]},
            {"repo": "org/data", "type": "dataset"},
        ]
    )
    result = prefetch("sync", "models.yaml", "-q")
    assert result.code == 0, result
    return commits


def run(prefetch: PrefetchRunner, *args: str, **env: str | None) -> CliResult:
    return prefetch(*args, env=dict(env))


def cache_state(root: Path) -> dict[str, str]:
    """What huggingface_hub reads of a cache: blobs, snapshot links, refs (not prefetch's lock files)."""
    return {path: what for path, what in tree_state(root).items() if not path.startswith(".locks")}


def registry_blob(server: RegistryServer, sha256: str) -> Path:
    """Where the Distribution registry's filesystem storage keeps a blob's bytes."""
    return server.root / "storage/docker/registry/v2/blobs/sha256" / sha256[:2] / sha256 / "data"


def load_offline(env: dict[str, str], cache: Path) -> dict[str, object]:
    """huggingface_hub, in a fresh interpreter without network, reading `cache` with HF_HUB_OFFLINE=1."""
    code = """
        import hashlib, json, os
        from huggingface_hub import hf_hub_download, snapshot_download
        out = {}
        snap = snapshot_download("org/model", revision="v1.0", local_files_only=True)
        out["files"] = sorted(os.path.relpath(os.path.join(d, f), snap) for d, _, fs in os.walk(snap) for f in fs)
        out["weights"] = hashlib.sha256(open(os.path.join(snap, "model.safetensors"), "rb").read()).hexdigest()
        out["main"] = open(hf_hub_download("org/model", "config.json", local_files_only=True)).read()
        out["data"] = open(hf_hub_download("org/data", "data/train.csv", repo_type="dataset",
                                           local_files_only=True)).read()
        print(json.dumps(out))
    """
    proc = run_python(code, {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def counted_push(prefetch: PrefetchRunner, *args: str) -> tuple[CliResult, int]:
    """`prefetch push ARGS`, and the bytes that process read (`rchar` of /proc/self/io, at its exit)."""
    code = (
        "import atexit, sys\n"
        "def report():\n"
        "    rchar = next(line for line in open('/proc/self/io') if line.startswith('rchar:'))\n"
        "    sys.stderr.write('\\nREAD ' + rchar.split()[1] + '\\n')\n"
        "atexit.register(report)\n"
        "from prefetch.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "push", *args],
        cwd=prefetch.tmp,
        env=prefetch.env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    stderr, _, read = proc.stderr.rpartition("\nREAD ")
    return CliResult(("push", *args), proc.returncode, proc.stdout, stderr), int(read.split()[0])


# ========================================================================================= round trip
@pytest.mark.soak
def test_round_trip_lock_push_sync_from_the_registry_is_the_hub_synced_cache(
    prefetch: PrefetchRunner,
    hub: HubEmulator,
    recording_proxy: RecordingProxy,  # noqa: F811  (fixtures)
) -> None:
    commits = hub_synced(prefetch, hub)
    target = f"oci://{recording_proxy.host}/team/models:prod"
    pushed, read = counted_push(prefetch, "models.lock", target, "--json")
    assert pushed.code == 0, pushed
    report = json.loads(pushed.stdout.splitlines()[-1])
    # Every LFS byte was read once, to be sent: never hashed again (that would be twice as many).
    assert LFS_BYTES <= read < 1.5 * LFS_BYTES, read
    for data in (WEIGHTS, SHARD):  # the weights are in two entries: one upload of them
        assert recording_proxy.count("PUT", f"digest=sha256%3A{hashlib.sha256(data).hexdigest()}") == 1
    assert report["uploaded"] == report["blobs"] and report["entries"] == 3

    hub.reset_counters()
    recording_proxy.clear()
    empty = prefetch.tmp / "from-registry"
    synced = run(prefetch, "sync", "models.yaml", "--source", target, HF_HUB_CACHE=str(empty))
    assert synced.code == 0, synced
    assert f"from {target}" in synced.stdout
    assert hub.count() == 0, hub.requests  # no resolution, no access check: the lock is the truth
    assert recording_proxy.count("GET", "/blobs/sha256:") >= 2
    assert run(prefetch, "verify", "--cache-dir", str(empty)).code == 0
    assert cache_state(empty) == cache_state(prefetch.cache_dir)  # byte for byte, link for link
    out = load_offline(prefetch.env, empty)
    assert out["files"] == ["README.md", "config.json", "model.safetensors", "nested/deeper/tokenizer.json",
                            "shard.bin"]  # fmt: skip
    assert out["weights"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert (out["main"], out["data"]) == ('{"hidden": 16}', "a,b\n1,2\n")

    # Warm: nothing to fetch, so neither the registry nor the Hub hears of it.
    recording_proxy.clear()
    again = run(prefetch, "sync", "models.yaml", "--source", target, "--json", HF_HUB_CACHE=str(empty))
    assert again.code == 0, again
    assert recording_proxy.requests == [] and hub.count() == 0
    summary = json.loads(again.stdout.splitlines()[-1])
    assert summary["source"] == target and summary["fetched_files"] == 0
    assert yaml.safe_load((prefetch.tmp / "models.lock").read_text())["entries"][0]["commit"] == commits["v1"]


@pytest.mark.soak
def test_a_download_from_the_registry_resumes_and_takes_range_segments(
    prefetch: PrefetchRunner,
    hub: HubEmulator,
    recording_proxy: RecordingProxy,  # noqa: F811  (fixtures)
) -> None:
    """What a killed sync left (a partial file and its state) is resumed with a Range request to the
    registry, and the rest of a big file comes as parallel Range segments: the engine's own work."""
    hub_synced(prefetch, hub)
    target = f"oci://{recording_proxy.host}/team/models:prod"
    assert run(prefetch, "push", target, "-q").code == 0
    weights = hashlib.sha256(WEIGHTS).hexdigest()
    cold = prefetch.tmp / "cold"
    kept = 10 * 1024 * 1024
    cache = RepoCache(cold, "org/model", "model")
    cache.blobs.mkdir(parents=True)
    cache.partial_path(weights).write_bytes(WEIGHTS[:kept])
    cache.partials.write_partial_state(weights, len(WEIGHTS), [(0, kept)], [(0, kept)])
    recording_proxy.clear()
    result = run(prefetch, "sync", "--source", target, "--segment-threshold", "8", "--segment-size", "4",
                 HF_HUB_CACHE=str(cold))  # fmt: skip
    assert result.code == 0, result
    asked = [r.range for r in recording_proxy.requests if r.method == "GET" and weights in r.path]
    assert asked and all(r.startswith("bytes=") for r in asked), asked
    starts = sorted(int(r[len("bytes=") :].split("-")[0]) for r in asked)
    assert starts[0] == kept and len(starts) >= 2, asked  # nothing before the kept bytes, in segments
    assert run(prefetch, "verify", "--cache-dir", str(cold)).code == 0


# ============================================================================================ air gap
@pytest.mark.soak
def test_air_gap_skopeo_copy_to_a_second_registry_then_sync_without_the_hub(
    prefetch: PrefetchRunner,
    hub: HubEmulator,
    registry: RegistryServer,  # noqa: F811
    second_registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    hub_synced(prefetch, hub)
    assert run(prefetch, "push", f"oci://{registry.host}/models:prod", "-q").code == 0
    skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{registry.host}/models:prod", f"docker://{second_registry.host}/mirror/models:prod")  # fmt: skip
    registry.stop()  # the connected side is gone: only the air-gapped registry answers
    hub.reset_counters()
    air = prefetch.tmp / "air-gapped"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the Hub is out of reach
    manifest = prefetch.manifest(
        yaml.safe_load((prefetch.tmp / "models.yaml").read_text())["repos"],
        source=f"oci://{second_registry.host}/mirror/models:prod",
    )
    result = run(prefetch, "sync", str(manifest), "--frozen", HF_HUB_CACHE=str(air), HF_ENDPOINT=dead,
                 HF_HUB_OFFLINE="1")  # fmt: skip
    assert result.code == 0, result
    assert hub.count() == 0
    assert run(prefetch, "verify", "--cache-dir", str(air)).code == 0
    assert cache_state(air) == cache_state(prefetch.cache_dir)


# ========================================================================================= tampering
def test_a_tampered_layer_is_refused_with_exit_5_and_nothing_installed(
    prefetch: PrefetchRunner,
    hub: HubEmulator,
    registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    hub_synced(prefetch, hub)
    target = f"oci://{registry.host}/models:prod"
    assert run(prefetch, "push", target, "-q").code == 0
    lock = prefetch.tmp / "models.lock"
    shard = blob_of(prefetch.cache_dir, lock, "shard.bin")
    config = blob_of(prefetch.cache_dir, lock, "config.json")  # a regular file: its git sha1 is checked
    config_layer = hashlib.sha256(config.read_bytes()).hexdigest()
    for layer, size in ((shard.name, len(SHARD)), (config_layer, config.stat().st_size)):
        stored = registry_blob(registry, layer)
        assert stored.stat().st_size == size
        stored.write_bytes(os.urandom(size))  # right size, wrong bytes: only a hash can tell
    cold = prefetch.tmp / "cold"
    result = run(prefetch, "sync", "--source", target, HF_HUB_CACHE=str(cold))
    assert result.code == 5, result
    assert "shard.bin" in result.stderr and "config.json" in result.stderr
    folder = cold / "models--org--model"
    assert not (folder / "blobs" / shard.name).exists() and not (folder / "blobs" / config.name).exists()
    assert not list(cold.glob("*/snapshots/*")) and not list(cold.glob("*/refs/*"))  # no snapshot, no ref
    assert not [p for p in cold.rglob("*") if p.name.endswith(".prefetch-partial")]


def test_a_file_the_artifact_lacks_is_refused_before_any_byte_moves(
    prefetch: PrefetchRunner,
    hub: HubEmulator,
    registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    hub_synced(prefetch, hub)
    lock = yaml.safe_load((prefetch.tmp / "models.lock").read_text())
    partial_lock = prefetch.tmp / "data-only.lock"
    partial_lock.write_text(yaml.safe_dump({**lock, "entries": lock["entries"][2:]}, sort_keys=False))
    target = f"oci://{registry.host}/models:data-only"
    assert run(prefetch, "push", str(partial_lock), target, "-q").code == 0
    cold = prefetch.tmp / "cold"
    result = run(prefetch, "sync", "--source", target, HF_HUB_CACHE=str(cold))
    assert result.code == 3, result
    assert "lacks 8 locked file(s)" in result.stderr and "model:org/model@v1.0: shard.bin" in result.stderr
    assert not cold.exists() or not any(cold.rglob("blobs/*"))


# ============================================================================================= layouts
def test_sync_from_an_oci_layout_folder_links_or_copies_and_verifies(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    hub_synced(prefetch, hub)
    pushed = run(prefetch, "push", "models.lock", "oci:layout:v1")
    assert pushed.code == 0, pushed
    weights = hashlib.sha256(WEIGHTS).hexdigest()
    # The manifest names the folder relative to itself.
    manifest = prefetch.manifest(
        yaml.safe_load((prefetch.tmp / "models.yaml").read_text())["repos"], name="layout.yaml",
        source="oci:layout:v1",
    )  # fmt: skip
    (prefetch.tmp / "layout.lock").write_bytes((prefetch.tmp / "models.lock").read_bytes())
    linked = prefetch.tmp / "linked"
    result = run(prefetch, "sync", str(manifest), "--frozen", "--json", HF_HUB_CACHE=str(linked))
    assert result.code == 0, result
    assert cache_state(linked) == cache_state(prefetch.cache_dir)
    layout_blob = prefetch.tmp / "layout" / "blobs" / "sha256" / weights
    installed = linked / "models--org--model" / "blobs" / weights
    assert installed.stat().st_ino == layout_blob.stat().st_ino  # same filesystem: hard-linked, not copied
    files = [json.loads(line) for line in result.stdout.splitlines() if '"event": "file"' in line]
    assert {f["result"] for f in files} == {"linked"} and len(files) == 8  # one per distinct blob

    # A layout blob changed in place (same size): refused, exit 5, not installed.
    tampered = prefetch.tmp / "layout2"
    assert run(prefetch, "push", "models.lock", f"oci:{tampered}:v1", "--cache-dir", str(linked)).code == 0
    shard = tampered / "blobs" / "sha256" / hashlib.sha256(SHARD).hexdigest()
    shard.unlink()  # (it is a hard link of the caches' blob: write a file of its own)
    shard.write_bytes(os.urandom(len(SHARD)))
    cold = prefetch.tmp / "cold"
    refused = run(prefetch, "sync", "--source", f"oci:{tampered}:v1", HF_HUB_CACHE=str(cold))
    assert refused.code == 5, refused
    assert "does not match the lock's hash" in refused.stderr and "shard.bin" in refused.stderr
    assert not (cold / "models--org--model" / "blobs" / shard.name).exists()
    assert not list(cold.glob("*/snapshots/*"))


def test_copies_where_a_hard_link_is_not_possible(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """A layout on another filesystem (here /dev/shm, a tmpfs, where the machine has one) is copied."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(prefetch.tmp).st_dev:
        pytest.skip("no second filesystem (/dev/shm) beside the test's folder")
    hub_synced(prefetch, hub)
    layout = shm / f"prefetch-test-layout-{os.getpid()}"
    try:
        assert run(prefetch, "push", "models.lock", f"oci:{layout}:v1").code == 0
        copied = prefetch.tmp / "copied"
        result = run(prefetch, "sync", "--source", f"oci:{layout}:v1", "--json", HF_HUB_CACHE=str(copied))
        assert result.code == 0, result
        assert cache_state(copied) == cache_state(prefetch.cache_dir)
        files = [json.loads(line) for line in result.stdout.splitlines() if '"event": "file"' in line]
        assert {f["result"] for f in files} == {"fetched"}
    finally:
        subprocess.run(["rm", "-rf", str(layout)], check=False)


# ===================================================================================== manifest, lock
def test_source_in_the_manifest_is_validated_and_a_lock_is_required(prefetch: PrefetchRunner) -> None:
    prefetch.manifest([{"repo": "org/model"}], source="docker://registry.example/m:v1")
    bad = run(prefetch, "sync")
    assert bad.code == 2 and "models.yaml:2:" in bad.stderr and "source" in bad.stderr, bad
    prefetch.manifest([{"repo": "org/model"}], source="oci:layout:v1")
    no_lock = run(prefetch, "sync")
    assert no_lock.code == 6, no_lock
    assert "needs the lockfile" in no_lock.stderr and "prefetch lock" in no_lock.stderr
    assert run(prefetch, "sync", "--upgrade").code == 2
    assert run(prefetch, "sync", "--source", "oci://Bad/Repo").code == 2


# ================================================================================ credentials, canary
@pytest.mark.soak
def test_credentials_from_the_auth_file_never_reach_an_output(
    prefetch: PrefetchRunner,
    hub: HubEmulator,
    auth_registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    hub_synced(prefetch, hub)
    auth_file = prefetch.tmp / "secrets" / "auth.json"
    auth_file.parent.mkdir()
    basic = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_CANARY}".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {auth_registry.host: {"auth": basic}}}))
    target = f"oci://{auth_registry.host}/private/models:v1"
    anonymous = run(prefetch, "push", target)
    assert anonymous.code == 3 and "none were found" in anonymous.stderr, anonymous
    login = {"REGISTRY_AUTH_FILE": str(auth_file), "HF_TOKEN": CANARY_TOKEN}
    outputs = [anonymous]
    outputs.append(run(prefetch, "push", target, "-vv", **login))
    outputs.append(run(prefetch, "push", target, "--json", **login))
    outputs.append(
        run(prefetch, "sync", "--source", target, "-vv", HF_HUB_CACHE=str(prefetch.tmp / "c1"), **login)
    )
    outputs.append(run(prefetch, "sync", "--source", target, "--json", HF_HUB_CACHE=str(prefetch.tmp / "c2"),
                       **login))  # fmt: skip
    assert [r.code for r in outputs] == [3, 0, 0, 0, 0], outputs
    wrong = prefetch.tmp / "secrets" / "wrong.json"
    wrong.write_text(json.dumps({"auths": {auth_registry.host: {"auth": base64.b64encode(
        f"{REGISTRY_USER}:wrong-{REGISTRY_CANARY}".encode()).decode()}}}))  # fmt: skip
    refused = run(prefetch, "sync", "--source", target, REGISTRY_AUTH_FILE=str(wrong),
                  HF_HUB_CACHE=str(prefetch.tmp / "c3"))  # fmt: skip
    assert refused.code == 3 and str(wrong) in refused.stderr, refused
    outputs.append(refused)
    written = [p for p in prefetch.tmp.rglob("*") if p.is_file() and not p.is_symlink()]
    written = [p for p in written if "secrets" not in p.parts and "registry-auth" not in p.parts]
    texts = [r.output for r in outputs] + [
        p.read_bytes().decode("latin-1") for p in written if p.stat().st_size < 1 << 20
    ]
    for text in texts:
        assert REGISTRY_CANARY not in text and basic not in text


# ================================================================================== push: the command
@pytest.mark.soak
def test_push_exit_codes_and_ctrl_c(
    prefetch: PrefetchRunner,
    hub: HubEmulator,
    recording_proxy: RecordingProxy,  # noqa: F811  (fixtures)
) -> None:
    hub_synced(prefetch, hub)
    assert run(prefetch, "push").code == 2  # TARGET is required
    assert run(prefetch, "push", "models.lock", "docker://x/y").code == 2
    assert run(prefetch, "push", "oci:layout", "--platform", "linux/amd64").code == 2  # image-volume only
    blob_of(prefetch.cache_dir, prefetch.tmp / "models.lock", "shard.bin").unlink()
    missing = run(prefetch, "push", "oci:layout")
    assert missing.code == 7 and "shard.bin" in missing.stderr, missing
    assert run(prefetch, "sync", "-q").code == 0  # fetched again from the Hub
    # Ctrl-C while a chunk is held by the registry's side: the push stops, exit 130, its upload kept.
    recording_proxy.rules.stall_patch = 1
    child = prefetch.popen("push", f"oci://{recording_proxy.host}/m:v1", "--chunk-size", "4M", "-j", "1")
    try:
        assert recording_proxy.rules.stalled.wait(60), child.communicate(timeout=5)
        child.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, err = child.communicate(timeout=30)
        assert time.monotonic() - interrupted < 10  # not the 60 s a held request takes to time out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "interrupted" in err


def test_push_help_has_examples_and_its_options(prefetch: PrefetchRunner) -> None:
    result = run(prefetch, "push", "--help")
    assert result.code == 0
    for option in (
        "--profile",
        "--jobs",
        "--cache-dir",
        "--mount-from",
        "--plain-http",
        "--platform",
        "--json",
    ):
        assert option in result.stdout, option
    assert "LOCKFILE] TARGET" in result.stdout
