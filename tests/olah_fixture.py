"""olah (a real third-party Hugging Face mirror, from PyPI) run as a subprocess on 127.0.0.1 for the tests.

Why: prefetch must work against Hub-compatible endpoints other than the Hub (issue 14). The Hub emulator's
`profile="mirror"` imitates what mirrors lack; olah is the real thing, in its two modes:
(a) serving local git+LFS repos (`offline = true`, `mirrors-path`), (b) pull-through cache in front of an
upstream Hub (`hf-scheme`, `hf-netloc`, `hf-lfs-netloc`), here the Hub emulator.

Tests skip (with the reason) where olah or git-lfs is missing; `.ci/run` installs both.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 30.0


def olah_missing() -> str | None:
    """Why olah cannot run here (None: it can)."""
    if importlib.util.find_spec("olah") is None:
        return "olah is not installed (pip install -e '.[test]')"
    if shutil.which("git-lfs") is None:
        return "git-lfs is not installed (apt-get install git-lfs; .ci/run does it)"
    return None


OLAH_MISSING = olah_missing()
needs_olah = pytest.mark.skipif(OLAH_MISSING is not None, reason=str(OLAH_MISSING))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(cwd),
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, timeout=60)


# The .gitattributes line `git lfs track "*.safetensors"` writes: a local repo's files include it.
LFS_ATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def make_git_lfs_repo(mirrors: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """A git repo at `mirrors/models/{repo_id}` with `files` committed through git-LFS as their
    `.gitattributes` (e.g. LFS_ATTRIBUTES) says; returns the commit sha."""
    path = mirrors / "models" / repo_id
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "lfs", "install", "--local")
    for name, data in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "add files")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True, timeout=30
    )
    return head.stdout.strip()


@dataclass
class OlahServer:
    """A running olah: `url` is what HF_ENDPOINT points at; `log` is its combined stdout/stderr file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def output(self, tail: int = 4000) -> str:
        """The end of olah's log (for failure messages)."""
        return self.log.read_text(errors="replace")[-tail:]


def start_olah(workdir: Path, basic: dict[str, str | int | list[str]], offline: bool) -> OlahServer:
    """Start olah on a free 127.0.0.1 port with `[basic]` settings, wait (bounded) until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    netloc = f"127.0.0.1:{port}"
    settings: dict[str, str | int | list[str]] = {
        "host": "127.0.0.1",
        "port": port,
        "repos-path": str(workdir / "repos"),
        "mirror-scheme": "http",
        "mirror-netloc": netloc,
        "mirror-lfs-netloc": netloc,
        **basic,
    }
    lines = ["[basic]"]
    lines += [f"{key} = {_toml(value)}" for key, value in settings.items()]
    lines += ["", "[accessibility]", f"offline = {'true' if offline else 'false'}", ""]
    config = workdir / "olah.toml"
    config.write_text("\n".join(lines))
    log = workdir / "olah.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(NO_PROXY="*", no_proxy="*", PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "olah.server",
                "--config",
                str(config),
                "--log-path",
                str(workdir / "logs"),
            ],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = OlahServer(f"http://{netloc}", process, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"olah exited with {process.returncode}:\n{server.output()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/whoami-v2", timeout=2):
                return server
        except urllib.error.HTTPError:  # any HTTP answer means it serves
            return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"olah did not answer within {START_TIMEOUT:.0f} s:\n{server.output()}")


def _toml(value: str | int | list[str]) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


OlahFactory = Callable[..., OlahServer]


@pytest.fixture
def olah_factory(tmp_path: Path) -> Iterator[OlahFactory]:
    """`olah_factory(basic={...}, offline=False)` -> a started OlahServer, stopped at teardown."""
    if OLAH_MISSING is not None:
        pytest.skip(OLAH_MISSING)
    servers: list[OlahServer] = []

    def make(basic: dict[str, str | int | list[str]] | None = None, offline: bool = False) -> OlahServer:
        server = start_olah(tmp_path / f"olah{len(servers)}", basic or {}, offline)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


def olah_in_front_of(factory: OlahFactory, hub_url: str, hub_cdn_url: str) -> OlahServer:
    """olah in pull-through mode, with the Hub emulator (both origins) as its upstream."""
    scheme, _, netloc = hub_url.partition("://")
    return factory(
        {"hf-scheme": scheme, "hf-netloc": netloc, "hf-lfs-netloc": hub_cdn_url.partition("://")[2]}
    )


def olah_serving_local(factory: OlahFactory, mirrors: Path) -> OlahServer:
    """olah offline, serving the git repos under `mirrors/{models,datasets}/{org}/{name}`."""
    return factory({"mirrors-path": [str(mirrors)]}, offline=True)
