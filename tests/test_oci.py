"""The locked set as OCI artifacts (prefetch/oci), against software no one here wrote: the Distribution
registry (`docker-registry`, with and without htpasswd basic auth), `skopeo` (inspect, copy between
two registries: the air-gap path, and from prefetch's OCI layout), and podman's image mount as the
stand-in for a kubelet's image volume, with huggingface_hub loading from it offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from prefetch.auth import Secrets
from prefetch.errors import AccessError, ExitCode, IntegrityError, UsageError, VerifyError
from prefetch.lockfile import Lock, load_lock, write_lock
from prefetch.net.connection import FileBody
from prefetch.oci.blobs import canonical_json
from prefetch.oci.credentials import RegistryLogin, find_login
from prefetch.oci.layout import blob_path, read_index_json
from prefetch.oci.modelpack import FILEPATH, MODEL_ARTIFACT, MODEL_CONFIG, modelpack
from prefetch.oci.pull import resolve_pull
from prefetch.oci.push import push
from prefetch.oci.reference import LayoutRef, RegistryRef, parse_reference
from prefetch.oci.registry import Registry
from tests.oci_fixture import (
    REGISTRY_CANARY,
    REGISTRY_USER,
    RecordingProxy,
    RegistryServer,
    TokenService,
    auth_registry,  # noqa: F401  (fixture)
    recording_proxy,  # noqa: F401  (fixture)
    registry,  # noqa: F401  (fixture)
    second_registry,  # noqa: F401  (fixture)
    token_registry,  # noqa: F401  (fixture)
    write_entry,
    write_lock_file,
)

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = os.urandom(3 * 1024 * 1024 + 11)  # LFS, shared by two entries
BIG = os.urandom(16 * 1024 * 1024 + 5)  # LFS, only in the first entry (the read-count test)
C1, C2, D1 = "1" * 40, "2" * 40, "3" * 40


def make_lock(tmp: Path, big: bool = False) -> tuple[Path, Path, Lock]:
    """A cache and its lock: org/model at v1.0 and at main (same weights blob), and a dataset."""
    cache = tmp / "cache"
    v1 = {"config.json": b'{"hidden": 8}', "README.md": b"# model\n", "model.safetensors": WEIGHTS,
          "nested/tokenizer.json": b'{"vocab": {}}'}  # fmt: skip
    if big:
        v1["big.bin"] = BIG
    e1 = write_entry(cache, "org/model", "v1.0", C1, v1, {"model.safetensors", "big.bin"})
    e2 = write_entry(cache, "org/model", "main", C2, {"config.json": b'{"hidden": 16}', "model.safetensors": WEIGHTS},
                     {"model.safetensors"})  # fmt: skip
    e3 = write_entry(cache, "org/data", "main", D1, {"data/train.csv": b"a,b\n1,2\n"}, set(), "dataset")
    lock_path = tmp / "models.lock"
    return lock_path, cache, write_lock_file(lock_path, [e1, e2, e3])


def skopeo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if shutil.which("skopeo") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("skopeo is not installed (.ci/run installs it)")
        pytest.skip("skopeo (Debian package skopeo) is not installed")
    proc = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"skopeo {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment with no auth file of the user's, and upload state in the test's folder."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    return {**base, "HOME": str(home), "XDG_RUNTIME_DIR": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(tmp / "state"), **extra}  # fmt: skip


# ==================================================================================== references
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci://127.0.0.1:5000/org/model:v1", RegistryRef("127.0.0.1:5000", "org/model", "v1")),
        ("oci://Registry.Example.com/a/b/c", RegistryRef("registry.example.com", "a/b/c")),
        ("oci://r.io/m@sha256:" + "a" * 64, RegistryRef("r.io", "m", None, "sha256:" + "a" * 64)),
        ("oci://[::1]:5000/m:t", RegistryRef("[::1]:5000", "m", "t")),
        ("oci:some/dir:v2", LayoutRef(Path("some/dir"), "v2")),
        ("oci:some/dir", LayoutRef(Path("some/dir"))),
    ],
)
def test_references_parse(text: str, expected: object) -> None:
    assert parse_reference(text) == expected
    assert str(parse_reference(text)).replace("Registry.Example", "registry.example") in (
        text.replace("Registry.Example", "registry.example"),
        text,
    )


@pytest.mark.parametrize(
    "text",
    [
        "docker://r.io/m", "oci://r.io", "oci://r.io/", "oci://r.io/UPPER", "oci://r.io/a//b", "oci://r.io/m:-bad",
        "oci://r.io/m@sha256:abc", "oci://r.io:99999/m", "oci://bad_host/m", "oci://r.io/m:" + "t" * 129,
        "oci://r.io/" + "a" * 300, "oci://r.io/m\x1b[2J", "oci:", "oci:dir:bad tag", "oci://r.io/m" + "x" * 5000,
    ],
)  # fmt: skip
def test_hostile_references_are_refused(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_reference(text)
    assert info.value.exit_code == ExitCode.USAGE
    assert "\x1b" not in str(info.value) and len(str(info.value)) < 600


# ================================================================================== credentials
def auth_json(entries: dict[str, Any], **top: Any) -> str:
    return json.dumps({"auths": entries, **top})


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_logins_are_found_in_skopeos_order(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    home = Path(env["HOME"])
    docker = home / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(auth_json({"https://r.io/v1/": {"auth": b64("docker-user:docker-pw")}}))
    assert find_login("r.io", "m", env).username == "docker-user"  # type: ignore[union-attr]
    podman = home / "containers" / "auth.json"  # ${XDG_RUNTIME_DIR}/containers/auth.json comes first
    podman.parent.mkdir()
    podman.write_text(
        auth_json({"r.io": {"auth": b64("podman-user:pw")}, "r.io/team/m": {"auth": b64("repo-user:pw")}})
    )
    assert find_login("r.io", "m", env).username == "podman-user"  # type: ignore[union-attr]
    assert find_login("r.io", "team/m", env).username == "repo-user"  # type: ignore[union-attr]
    other = tmp_path / "dockercfg"
    other.mkdir()
    (other / "config.json").write_text(auth_json({"q.io": {"username": "u", "password": "p"}}))
    assert find_login("q.io", "m", {**env, "DOCKER_CONFIG": str(other)}).username == "u"  # type: ignore[union-attr]
    assert find_login("q.io", "m", env) is None
    explicit = tmp_path / "explicit.json"
    explicit.write_text(auth_json({"s.io": {"auth": b64("explicit:pw")}}))
    only = {**env, "REGISTRY_AUTH_FILE": str(explicit)}
    assert find_login("s.io", "m", only).username == "explicit"  # type: ignore[union-attr]
    assert find_login("r.io", "m", only) is None  # REGISTRY_AUTH_FILE alone, as skopeo's --authfile


def test_credential_helpers_are_run_bounded_and_logins_never_shown(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f'if [ "$server" = "h.io" ]; then echo \'{{"Username":"helper-user","Secret":"{REGISTRY_CANARY}"}}\'; '
        'else echo "credentials not found in native keychain"; exit 1; fi\n'
    )
    helper.chmod(0o755)
    env = env_for(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}")
    config = Path(env["HOME"]) / ".docker" / "config.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps({"auths": {"h.io": {}}, "credHelpers": {"h.io": "fake"}, "credsStore": "fake"})
    )
    login = find_login("h.io", "m", env)
    assert login is not None and login.username == "helper-user" and login.password == REGISTRY_CANARY
    assert find_login("other.io", "m", env) is None  # credsStore: the helper knows nothing of it
    secrets = Secrets()
    for value in login.secret_values:
        secrets.add(value)
    for text in (repr(login), str(login), secrets.redact(f"x {REGISTRY_CANARY} Basic {login.basic_value}")):
        assert REGISTRY_CANARY not in text and login.basic_value not in text
    assert "docker-credential-fake" in str(login) and str(config) in str(login)
    config.write_text(json.dumps({"credHelpers": {"h.io": "../../bin/sh"}}))
    with pytest.raises(UsageError):
        find_login("h.io", "m", env)
    config.write_text('{"auths": {"h.io": {"auth": "not base64!"}}}')
    with pytest.raises(UsageError) as info:
        find_login("h.io", "m", env)
    assert str(config) in str(info.value)


# ====================================================================================== artifacts
def test_modelpack_artifacts_are_deterministic_and_follow_the_spec(tmp_path: Path) -> None:
    lock_path, cache, lock = make_lock(tmp_path)
    first, second = modelpack(lock, cache), modelpack(load_lock(lock_path), cache)
    assert first.index.data == second.index.data
    assert [m.data for m in first.manifests] == [m.data for m in second.manifests]
    index = json.loads(first.index.data)
    assert [m["annotations"]["prefetch.entry"] for m in index["manifests"]] == [e.key for e in lock.entries]
    manifest = json.loads(first.manifests[0].data)
    assert manifest["artifactType"] == MODEL_ARTIFACT and manifest["config"]["mediaType"] == MODEL_CONFIG
    layers = {layer["annotations"][FILEPATH]: layer for layer in manifest["layers"]}
    assert layers["model.safetensors"]["digest"] == "sha256:" + hashlib.sha256(WEIGHTS).hexdigest()
    assert layers["model.safetensors"]["mediaType"] == "application/vnd.cncf.model.weight.v1.raw"
    assert layers["config.json"]["mediaType"] == "application/vnd.cncf.model.weight.config.v1.raw"
    assert layers["README.md"]["mediaType"] == "application/vnd.cncf.model.doc.v1.raw"
    assert layers["config.json"]["digest"] == "sha256:" + hashlib.sha256(b'{"hidden": 8}').hexdigest()
    meta = json.loads(layers["config.json"]["annotations"]["org.cncf.model.file.metadata+json"])
    assert meta == {"name": "config.json", "mode": 420, "uid": 0, "gid": 0, "size": 13,
                    "mtime": "1970-01-01T00:00:00Z", "typeflag": 48}  # fmt: skip
    config = json.loads(first.blobs[manifest["config"]["digest"]].parts[0])  # type: ignore[arg-type]
    assert set(config) == {"descriptor", "config", "modelfs"}  # the schema allows no other field
    assert config["descriptor"] == {"name": "org/model", "version": "v1.0", "revision": C1,
                                    "sourceURL": "https://huggingface.co/org/model"}  # fmt: skip
    assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in manifest["layers"]]
    dataset = json.loads(first.manifests[2].data)
    assert dataset["layers"][0]["mediaType"] == "application/vnd.cncf.model.dataset.v1.raw"
    assert canonical_json(index) == first.index.data


def test_a_corrupt_regular_blob_is_refused_before_any_request(tmp_path: Path) -> None:
    lock_path, cache, lock = make_lock(tmp_path)
    config = next(f for f in lock.entries[0].files if f.path == "config.json")
    blob = cache / "models--org--model" / "blobs" / config.etag
    blob.write_bytes(b'{"hidden": 9}')  # same size, other bytes
    with pytest.raises(IntegrityError) as info:
        push(lock_path, f"oci:{tmp_path / 'layout'}")
    assert info.value.exit_code == ExitCode.INTEGRITY
    blob.unlink()
    with pytest.raises(VerifyError) as missing:
        push(lock_path, f"oci:{tmp_path / 'layout'}")
    assert missing.value.exit_code == ExitCode.VERIFY_FAILED and config.etag in str(missing.value)


# ============================================================================== push to a registry
def test_push_twice_uploads_nothing_again_and_a_shared_blob_once(
    tmp_path: Path,
    recording_proxy: RecordingProxy,  # noqa: F811  (fixtures)
) -> None:
    lock_path, _, lock = make_lock(tmp_path, big=True)
    env = env_for(tmp_path)
    target = f"oci://{recording_proxy.host}/team/models:prod"
    io_before = _read_bytes()
    report = push(lock_path, target, env=env, jobs=3, chunk_size=4 * 1024 * 1024)
    read = _read_bytes() - io_before
    lfs_bytes = len(WEIGHTS) + len(BIG)
    # Every LFS byte was read once, to be sent: never hashed again (that would be twice).
    assert lfs_bytes <= read < 1.5 * lfs_bytes, read
    digests = {f.sha256 for e in lock.entries for f in e.files if f.sha256}
    assert report.uploaded == report.blobs and report.present == 0
    for digest in digests:  # the weights are in two entries: one upload
        assert recording_proxy.count("PUT", f"digest=sha256%3A{digest}") == 1
    assert recording_proxy.count("PATCH") == 5  # BIG in 4 MiB chunks; the rest monolithic
    assert report.manifests_sent == 4 and set(report.manifests) == {e.key for e in lock.entries}
    recording_proxy.clear()
    again = push(lock_path, target, env=env, jobs=3)
    assert (again.uploaded, again.present, again.manifests_sent) == (0, again.blobs, 0)
    assert again.digest == report.digest
    assert (
        recording_proxy.count("POST") == recording_proxy.count("PATCH") == recording_proxy.count("PUT") == 0
    )
    # Another repository of the same registry: every blob mounted, none sent.
    recording_proxy.clear()
    other = push(lock_path, f"oci://{recording_proxy.host}/other/models:v1", env=env)
    assert (other.mounted, other.uploaded, other.uploaded_bytes) == (other.blobs, 0, 0)
    assert recording_proxy.count("PATCH") == 0 and recording_proxy.count("POST", "mount=") == other.blobs
    text = report.render() + json.dumps(report.to_json())
    assert "team/models:prod" in text and report.digest in text


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_skopeo_reads_the_index_and_copies_it_to_a_second_registry_for_the_air_gap(
    tmp_path: Path,
    registry: RegistryServer,  # noqa: F811
    second_registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    lock_path, _, lock = make_lock(tmp_path)
    env = env_for(tmp_path)
    report = push(lock_path, f"oci://{registry.host}/models:prod", env=env)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/models:prod").stdout
    assert hashlib.sha256(raw.encode()).hexdigest() == report.digest.split(":")[1]
    skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{registry.host}/models:prod", f"docker://{second_registry.host}/mirror/models:prod")  # fmt: skip
    # The air-gapped side: pull's first half finds every locked file there, by the same digests.
    plan = resolve_pull(f"oci://{second_registry.host}/mirror/models:prod", lock, env=env)
    try:
        assert plan.index_digest == report.digest and plan.missing == []
        assert len(plan.sources) == sum(len(e.files) for e in lock.entries)
        source = next(s for s in plan.sources if s.path == "model.safetensors")
        assert source.digest == "sha256:" + hashlib.sha256(WEIGHTS).hexdigest()
        assert source.url is not None and source.url.startswith(
            f"http://{second_registry.host}/v2/mirror/models/blobs/"
        )
        assert plan.registry is not None
        response = plan.registry.http.open(source.url, source.credential)
        try:
            assert hashlib.sha256(response.read(64 << 20)).hexdigest() == source.digest.split(":")[1]
        finally:
            response.close()
    finally:
        plan.close()


def test_layout_hard_links_the_cache_and_skopeo_copies_it_to_a_registry(
    tmp_path: Path,
    registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    lock_path, cache, lock = make_lock(tmp_path)
    layout = tmp_path / "layout"
    report = push(lock_path, f"oci:{layout}:v1")
    weights = "sha256:" + hashlib.sha256(WEIGHTS).hexdigest()
    cached = cache / "models--org--model" / "blobs" / weights.split(":")[1]
    assert blob_path(layout, weights).stat().st_ino == cached.stat().st_ino  # hard-linked, not copied
    assert report.linked == 1 and read_index_json(layout)["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "v1"
    }
    again = push(lock_path, f"oci:{layout}:v1")
    assert again.uploaded == again.linked == 0 and again.digest == report.digest
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{layout}:v1",
        f"docker://{registry.host}/airgap/models:v1",
    )
    for reference in (f"oci:{layout}:v1", f"oci://{registry.host}/airgap/models:v1"):
        plan = resolve_pull(reference, lock, env=env_for(tmp_path))
        plan.close()
        assert plan.index_digest == report.digest and plan.missing == []
        assert len(plan.sources) == 7
    layout_plan = resolve_pull(f"oci:{layout}:v1", lock)
    assert all(s.file is not None and s.file.is_file() for s in layout_plan.sources)


# ============================================================================== basic auth, canary
def test_basic_auth_registry_with_credentials_from_the_auth_file(
    tmp_path: Path,
    auth_registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    lock_path, _, lock = make_lock(tmp_path)
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(auth_json({auth_registry.host: {"auth": b64(f"{REGISTRY_USER}:{REGISTRY_CANARY}")}}))
    env = env_for(tmp_path, REGISTRY_AUTH_FILE=str(auth_file))
    target = f"oci://{auth_registry.host}/private/models:v1"
    outputs = []
    with pytest.raises(AccessError) as anonymous:
        push(lock_path, target, env=env_for(tmp_path))
    outputs.append(str(anonymous.value))
    assert anonymous.value.exit_code == ExitCode.ACCESS and "none were found" in str(anonymous.value)
    report = push(lock_path, target, env=env)
    outputs += [report.render(), json.dumps(report.to_json())]
    plan = resolve_pull(target, lock, env=env)
    plan.close()
    outputs.append(repr(plan))
    assert plan.missing == []
    auth_file.write_text(
        auth_json({auth_registry.host: {"auth": b64(f"{REGISTRY_USER}:wrong-{REGISTRY_CANARY}")}})
    )
    with pytest.raises(AccessError) as refused:
        push(lock_path, target, env=env)
    outputs.append(str(refused.value))
    assert str(auth_file) in str(refused.value)  # names the file, never what is in it
    skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"--creds={REGISTRY_USER}:{REGISTRY_CANARY}",
        f"docker://{target[6:]}",
    )
    secret_forms = (REGISTRY_CANARY, b64(f"{REGISTRY_USER}:{REGISTRY_CANARY}"))
    files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    outputs += [p.read_text(errors="replace") for p in files]
    for text in outputs:
        assert not any(secret in text for secret in secret_forms), text


def test_credentials_stay_on_the_registry_origin_and_off_plain_http_to_remote_hosts(tmp_path: Path) -> None:
    login = RegistryLogin(REGISTRY_USER, REGISTRY_CANARY, "test")
    with Registry(RegistryRef("127.0.0.1:9", "m"), login) as reg:
        reg.auth.scheme = "basic"
        credential = reg.credential("m")
        assert credential.authorization("http://127.0.0.1:9/v2/m/blobs/x") == f"Basic {login.basic_value}"
        for elsewhere in (
            "http://127.0.0.1:10/v2/m/blobs/x",
            "https://127.0.0.1:9/v2/",
            "http://storage.example/b",
        ):
            assert credential.authorization(elsewhere) is None  # a redirect to storage gets nothing
    with Registry(RegistryRef("registry.example", "m"), login, plain_http=True) as remote:
        remote.auth.scheme = "basic"
        with pytest.raises(AccessError) as info:
            remote.http.request("GET", "http://registry.example/v2/", remote.credential("m"))
        assert "plain http" in str(info.value) and REGISTRY_CANARY not in str(info.value)


# ======================================================================================== resumes
def test_a_broken_chunk_upload_resumes_at_the_registrys_offset(
    tmp_path: Path,
    recording_proxy: RecordingProxy,  # noqa: F811  (fixtures)
) -> None:
    lock_path, _, _ = make_lock(tmp_path, big=True)
    recording_proxy.rules.break_patch = {2}
    report = push(lock_path, f"oci://{recording_proxy.host}/m:v1", env=env_for(tmp_path), jobs=1,
                  chunk_size=4 * 1024 * 1024)  # fmt: skip
    assert report.uploaded == report.blobs
    patches = [r for r in recording_proxy.requests if r.method == "PATCH"]
    assert len(patches) == 6  # 5 chunks, one of them sent twice; not the whole blob again
    assert recording_proxy.count("GET", "/blobs/uploads/") >= 1  # asked where the upload stood


def test_a_killed_push_resumes_its_upload(tmp_path: Path, recording_proxy: RecordingProxy) -> None:  # noqa: F811  (fixtures)
    lock_path, _, _ = make_lock(tmp_path, big=True)
    env = env_for(tmp_path, PYTHONPATH=str(ROOT))
    target = f"oci://{recording_proxy.host}/m:v1"
    code = textwrap.dedent(f"""
        from prefetch.oci.push import push
        r = push({str(lock_path)!r}, {target!r}, jobs=1, chunk_size=4 * 1024 * 1024)
        print(r.uploaded_bytes, r.resumed)
    """)
    recording_proxy.rules.stall_patch = 3  # two chunks acknowledged, the third held
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert recording_proxy.rules.stalled.wait(60), child.communicate(timeout=5)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    recording_proxy.rules.release.set()
    states = list((tmp_path / "state").rglob("uploads/*.json"))
    assert len(states) == 1 and REGISTRY_CANARY not in states[0].read_text()
    assert states[0].stat().st_mode & 0o077 == 0
    recording_proxy.rules.stall_patch = None
    second = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    sent, resumed = map(int, second.stdout.split())
    assert resumed == 1
    assert sent == len(BIG) - 8 * 1024 * 1024 + len(WEIGHTS) + _small_bytes(tmp_path)
    assert not list((tmp_path / "state").rglob("uploads/*.json"))


def _small_bytes(tmp: Path) -> int:
    """Bytes of every blob but BIG and WEIGHTS the first push sent in full: the regular files and configs."""
    artifact = modelpack(load_lock(tmp / "models.lock"), tmp / "cache")
    return sum(b.size for b in artifact.blobs.values() if b.size < len(WEIGHTS))


# =========================================================================================== pull
def test_pull_refuses_what_the_lock_does_not_name(tmp_path: Path) -> None:
    lock_path, cache, lock = make_lock(tmp_path)
    layout = tmp_path / "layout"
    push(lock_path, f"oci:{layout}:v1")
    # The lock names other weights than the artifact's layer (as a registry serving other bytes would).
    with pytest.raises(IntegrityError) as info:
        resolve_pull(f"oci:{layout}:v1", _with_weights_digest(lock, "0" * 64))
    assert info.value.exit_code == ExitCode.INTEGRITY and "refusing layer" in str(info.value)
    # A manifest naming an unsafe path, or a file the lock does not have, is refused.
    for path, reason in (("../../etc/passwd", "unsafe"), ("extra.bin", "no such file")):
        _rewrite_first_layer_path(layout, path)
        with pytest.raises(IntegrityError) as bad:
            resolve_pull(f"oci:{layout}:v1", lock)
        assert reason in str(bad.value)
    # A locked file the artifact lacks is reported, not invented.
    fewer = tmp_path / "fewer"
    lock_small = Lock(lock.manifest_digest, lock.tool_version, lock.entries[2:], endpoint=lock.endpoint)
    write_lock(lock_small, fewer.with_suffix(".lock"))
    push(fewer.with_suffix(".lock"), f"oci:{fewer}:v1", cache_dir=cache)
    plan = resolve_pull(f"oci:{fewer}:v1", lock)
    assert len(plan.missing) == 6 and plan.sources[0].path == "data/train.csv"
    # An oversize manifest is not read whole.
    digest = read_index_json(fewer)["manifests"][0]["digest"]
    huge = blob_path(fewer, digest)
    huge.write_bytes(b" " * (5 * 1024 * 1024))
    with pytest.raises(Exception, match="larger than"):
        resolve_pull(f"oci:{fewer}:v1", lock)


def _with_weights_digest(lock: Lock, sha256: str) -> Lock:
    from dataclasses import replace

    entries = tuple(
        replace(
            e, files=tuple(replace(f, sha256=sha256) if f.path == "model.safetensors" else f for f in e.files)
        )
        for e in lock.entries
    )
    return replace(lock, entries=entries)


def _rewrite_first_layer_path(layout: Path, path: str) -> None:
    """Rewrite the first entry's first layer's filepath, and the digests above it, as a hostile
    registry would (everything consistent, so only the content is wrong)."""
    index_ref = read_index_json(layout)["manifests"][0]
    index = json.loads(blob_path(layout, index_ref["digest"]).read_bytes())
    manifest = json.loads(blob_path(layout, index["manifests"][0]["digest"]).read_bytes())
    manifest["layers"][0]["annotations"][FILEPATH] = path
    data = canonical_json(manifest)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(layout, digest).write_bytes(data)
    index["manifests"][0].update(digest=digest, size=len(data))
    data = canonical_json(index)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(layout, digest).write_bytes(data)
    index_json = read_index_json(layout)
    index_json["manifests"][0].update(digest=digest, size=len(data))
    (layout / "index.json").write_bytes(canonical_json(index_json))


# ======================================================================================= net body
def test_file_bodies_stream_exactly_their_length(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as f:
        body = FileBody(f, 2, 5)
        assert b"".join(body.blocks()) == b"23456" == b"".join(body.blocks())  # restartable
        with pytest.raises(ValueError, match="ended"):
            list(FileBody(f, 8, 5).blocks())


# ============================================================================ the image-volume profile
def _podman_ready() -> str | None:
    from tests.test_docker import container_skip_reason

    return container_skip_reason()


@pytest.mark.container
@pytest.mark.timeout(300)
def test_image_volume_mounts_under_podman_and_huggingface_hub_loads_offline(
    tmp_path: Path,
    registry: RegistryServer,  # noqa: F811  (fixtures)
) -> None:
    reason = _podman_ready()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run in CI: {reason}")
    if reason:
        pytest.skip(reason)
    lock_path, _, lock = make_lock(tmp_path)
    image = f"{registry.host}/volumes/models:v1"
    report = push(lock_path, f"oci://{image}", profile="image-volume", env=env_for(tmp_path))
    again = push(lock_path, f"oci://{image}", profile="image-volume", env=env_for(tmp_path))
    assert again.digest == report.digest and again.uploaded == 0  # deterministic tars
    pulled = subprocess.run(
        ["podman", "pull", "--tls-verify=false", image], capture_output=True, text=True, timeout=120
    )
    assert pulled.returncode == 0, pulled.stderr
    import huggingface_hub

    site = Path(huggingface_hub.__file__).parent.parent
    code = textwrap.dedent(f"""
        import hashlib, json, os
        from huggingface_hub import hf_hub_download, snapshot_download
        out = {{}}
        snap = snapshot_download("org/model", revision="v1.0")
        out["files"] = sorted(os.path.relpath(os.path.join(d, f), snap) for d, _, fs in os.walk(snap) for f in fs)
        out["weights"] = hashlib.sha256(open(os.path.join(snap, "model.safetensors"), "rb").read()).hexdigest()
        out["main"] = open(hf_hub_download("org/model", "config.json")).read()
        out["by_commit"] = open(hf_hub_download("org/model", "config.json", revision="{C1}")).read()
        out["data"] = open(hf_hub_download("org/data", "data/train.csv", repo_type="dataset")).read()
        print(json.dumps(out))
    """)
    try:
        run = subprocess.run(
            ["podman", "run", "--rm", "--network", "none",
             "--mount", f"type=image,source={image},destination=/models",
             "-v", f"{site}:/hostsite:ro", "-e", "PYTHONPATH=/hostsite",
             "-e", "HF_HUB_CACHE=/models", "-e", "HF_HUB_OFFLINE=1", "-e", "HF_HUB_DISABLE_TELEMETRY=1",
             "python:3.11-slim", "python", "-c", code],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["files"] == ["README.md", "config.json", "model.safetensors", "nested/tokenizer.json"]
    assert out["weights"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert (out["main"], out["by_commit"], out["data"]) == ('{"hidden": 16}', '{"hidden": 8}', "a,b\n1,2\n")
    assert len(lock.entries) == 3


def test_image_volume_layers_are_deterministic_tars_of_the_cache(tmp_path: Path) -> None:
    import tarfile

    from prefetch.oci.volume import volume_image

    lock_path, cache, lock = make_lock(tmp_path, big=True)
    first, second = volume_image(lock, cache), volume_image(load_lock(lock_path), cache)
    assert first.index.data == second.index.data
    manifest = json.loads(first.manifests[0].data)
    layers = manifest["layers"]
    assert len(layers) == 3  # BIG and WEIGHTS alone, then the tree
    with first.blobs[layers[-1]["digest"]].open() as f, tarfile.open(fileobj=f, mode="r:") as tree:
        members = {m.name: m for m in tree.getmembers()}
    link = members[f"models--org--model/snapshots/{C1}/nested/tokenizer.json"]
    assert link.issym() and link.linkname.startswith("../../../blobs/")
    assert members["models--org--model/refs/v1.0"].size == 40
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members.values())
    assert list(members) == sorted(members)
    config = json.loads(first.blobs[manifest["config"]["digest"]].parts[0])  # type: ignore[arg-type]
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in layers]
    assert {json.dumps(m.platform) for m in first.manifests} == {
        '{"architecture": "amd64", "os": "linux"}', '{"architecture": "arm64", "os": "linux"}'}  # fmt: skip


def test_cancel_is_honoured(tmp_path: Path, registry: RegistryServer) -> None:  # noqa: F811  (fixtures)
    from prefetch.cancel import CancelToken
    from prefetch.errors import Cancelled

    lock_path, _, _ = make_lock(tmp_path)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        push(lock_path, f"oci://{registry.host}/m:v1", env=env_for(tmp_path), cancel=token)


def test_bearer_tokens_from_the_realm_per_scope(
    tmp_path: Path,
    token_registry: tuple[RegistryServer, TokenService],  # noqa: F811  (fixtures)
) -> None:
    """The registry's `auth: token:` (JWTs it verifies itself): the challenge leads to the realm, the
    login goes there as Basic and nowhere else, tokens are asked per scope (a mount's names both
    repositories), and a refused login is exit 3 naming the file."""
    server, service = token_registry
    lock_path, _, lock = make_lock(tmp_path)
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(auth_json({server.host: {"auth": b64(f"{REGISTRY_USER}:{REGISTRY_CANARY}")}}))
    env = env_for(tmp_path, REGISTRY_AUTH_FILE=str(auth_file))
    report = push(lock_path, f"oci://{server.host}/team/models:v1", env=env)
    assert report.uploaded == report.blobs
    basic = "Basic " + b64(f"{REGISTRY_USER}:{REGISTRY_CANARY}")
    assert set(service.authorizations) == {basic}
    assert len(service.scopes) <= 3  # one token per set of scopes, kept and reused
    mounted = push(lock_path, f"oci://{server.host}/other/models:v1", env=env)
    assert mounted.mounted == mounted.blobs
    assert ["repository:other/models:pull,push", "repository:team/models:pull"] in [
        sorted(s) for s in service.scopes
    ]
    plan = resolve_pull(f"oci://{server.host}/team/models:v1", lock, env=env)
    try:
        source = plan.sources[0]
        assert source.credential is not None
        assert (source.credential.authorization(source.url or "") or "").startswith("Bearer ")
        assert source.credential.authorization("http://127.0.0.1:1/elsewhere") is None
        assert plan.registry is not None
        response = plan.registry.http.open(source.url or "", source.credential)
        assert hashlib.sha256(response.read(1 << 20)).hexdigest() == source.digest.split(":")[1]
        response.close()
    finally:
        plan.close()
    anonymous = resolve_pull(f"oci://{server.host}/team/models:v1", lock, env=env_for(tmp_path))
    anonymous.close()  # the realm grants anonymous pulls here
    with pytest.raises(AccessError):
        push(lock_path, f"oci://{server.host}/team/models:v2", env=env_for(tmp_path))
    auth_file.write_text(auth_json({server.host: {"auth": b64(f"{REGISTRY_USER}:nope")}}))
    with pytest.raises(AccessError) as refused:
        push(lock_path, f"oci://{server.host}/team/models:v3", env=env)
    assert REGISTRY_CANARY not in str(refused.value)
