"""Shared test harness: the Hub emulator fixtures, a runner for the real CLI, and the canary scan.

Every CLI run goes through `PrefetchRunner`, which records stdout and stderr; every test that uses
it has its whole tmp folder (cache, lockfiles, logs) scanned for the canary token afterwards, and
the session fails if the canary shows up anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.hubemu.fixtures import hub, proxy_factory  # noqa: F401  (fixtures)
from tests.olah_fixture import olah_factory  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
# The token every test user holds. It must never appear in any output or file prefetch writes.
CANARY_TOKEN = "hf_CANARYzq7Xb3LmT9vKp2WsR8dNf4Yh6Jc"
OTHER_TOKEN = "hf_CANARYotherAccountToken55Qw3Er7Ty"
_LEAKS: list[str] = []


@dataclass
class CliResult:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:
        return f"CliResult(args={self.args}, code={self.code})\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def scan_for_canary(text: str, where: str) -> None:
    for token in (CANARY_TOKEN, OTHER_TOKEN):
        if token in text:
            _LEAKS.append(f"{where}: contains a canary token")


class PrefetchRunner:
    """Runs `python -m prefetch` in a subprocess against the test Hub, with an isolated HF_HOME/HOME."""

    def __init__(self, tmp_path: Path, endpoint: str) -> None:
        self.tmp = tmp_path
        self.cache_dir = tmp_path / "cache"
        self.hf_home = tmp_path / "hf_home"
        home = tmp_path / "home"
        for folder in (self.hf_home, home):
            folder.mkdir(exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGING"))
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        self.env.update(
            HOME=str(home),
            HF_HOME=str(self.hf_home),
            HF_HUB_CACHE=str(self.cache_dir),
            HF_ENDPOINT=endpoint,
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            PYTHONPATH=str(ROOT),
        )

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "prefetch", *args]

    def env_with(self, env: dict[str, str | None] | None) -> dict[str, str]:
        merged = dict(self.env)
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def __call__(
        self, *args: str, env: dict[str, str | None] | None = None, timeout: float = 120
    ) -> CliResult:
        proc = subprocess.run(
            self.command(*args),
            cwd=self.tmp,
            env=self.env_with(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        result = CliResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)
        scan_for_canary(result.output, f"output of prefetch {' '.join(args)}")
        return result

    def popen(self, *args: str, env: dict[str, str | None] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.tmp,
            env=self.env_with(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def manifest(self, repos: list[dict[str, Any]], name: str = "models.yaml", **top: Any) -> Path:
        """Write a version-1 manifest in the test folder."""
        path = self.tmp / name
        path.write_text(yaml.safe_dump({"version": 1, **top, "repos": repos}, sort_keys=False))
        return path

    def scan_files(self) -> None:
        for path in self.tmp.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 * 1024 * 1024:
                scan_for_canary(path.read_bytes().decode("latin-1"), str(path))


@pytest.fixture
def prefetch(tmp_path: Path, hub: Any) -> Iterator[PrefetchRunner]:  # noqa: F811
    runner = PrefetchRunner(tmp_path, hub.url)
    yield runner
    runner.scan_files()


@pytest.fixture(scope="session", autouse=True)
def canary_guard() -> Iterator[None]:
    """Fail the run if the canary token reached any output or file in any test."""
    yield
    if _LEAKS:
        pytest.fail("canary token leaked:\n" + "\n".join(sorted(set(_LEAKS))), pytrace=False)
