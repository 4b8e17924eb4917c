"""prefetch.settings reads the environment exactly as huggingface_hub 2.x does, and the CLI honours it.

The differential test runs `huggingface_hub.constants` in a fresh interpreter per environment (its
constants are read at import) and compares with prefetch.settings on the same mapping. The CLI tests
show each variable taking effect on a real sync against the Hub emulator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefetch import settings
from tests.conftest import PrefetchRunner
from tests.hubemu import HubEmulator

HF_PROBE = """
import json
import huggingface_hub.constants as c
from huggingface_hub.utils._auth import _get_token_from_environment
print(json.dumps({
    "hf_home": c.HF_HOME,
    "hub_cache": c.HF_HUB_CACHE,
    "offline": c.HF_HUB_OFFLINE,
    "token": _get_token_from_environment(),
    "token_path": c.HF_TOKEN_PATH,
    "endpoint": c.ENDPOINT,
    "bars_disabled": bool(c.HF_HUB_DISABLE_PROGRESS_BARS),
}))
"""

HOME = "/home/tester"
# Each case: the Hugging Face variables set (on top of HOME, PATH). Together they cover every rule.
CASES: dict[str, dict[str, str]] = {
    "nothing set": {},
    "XDG_CACHE_HOME": {"XDG_CACHE_HOME": "/xdg"},
    "XDG_CACHE_HOME empty": {"XDG_CACHE_HOME": ""},
    "HF_HOME plain": {"HF_HOME": "/data/hf"},
    "HF_HOME with ~": {"HF_HOME": "~/hf"},
    "HF_HOME with $VAR": {"HF_HOME": "$BASE/hf", "BASE": "/mnt/big"},
    "HF_HOME with ${VAR} and ~": {"HF_HOME": "~/${SUB}/hf", "SUB": "models"},
    "HF_HOME with an unset $VAR": {"HF_HOME": "/x/$NOT_SET/hf"},
    "HF_HOME beats XDG": {"HF_HOME": "/data/hf", "XDG_CACHE_HOME": "/xdg"},
    "HF_HOME empty": {"HF_HOME": ""},
    "HF_HUB_CACHE": {"HF_HUB_CACHE": "/cache/hub", "HF_HOME": "/data/hf"},
    "HF_HUB_CACHE with $VAR and ~": {"HF_HUB_CACHE": "~/$SUB/hub", "SUB": "c"},
    "legacy HUGGINGFACE_HUB_CACHE": {"HUGGINGFACE_HUB_CACHE": "/legacy/hub", "HF_HOME": "/data/hf"},
    "legacy with $VAR": {"HUGGINGFACE_HUB_CACHE": "$BASE/legacy", "BASE": "/mnt"},
    "HF_HUB_CACHE beats legacy": {"HF_HUB_CACHE": "/new", "HUGGINGFACE_HUB_CACHE": "/legacy"},
    "HF_HUB_OFFLINE=1": {"HF_HUB_OFFLINE": "1"},
    "HF_HUB_OFFLINE=true": {"HF_HUB_OFFLINE": "true"},
    "HF_HUB_OFFLINE=On": {"HF_HUB_OFFLINE": "On"},
    "HF_HUB_OFFLINE=yes": {"HF_HUB_OFFLINE": "yes"},
    "HF_HUB_OFFLINE=0": {"HF_HUB_OFFLINE": "0"},
    "HF_HUB_OFFLINE=y": {"HF_HUB_OFFLINE": "y"},
    "TRANSFORMERS_OFFLINE=1": {"TRANSFORMERS_OFFLINE": "1"},
    "TRANSFORMERS_OFFLINE=TRUE": {"TRANSFORMERS_OFFLINE": "TRUE"},
    "HF_HUB_OFFLINE=0 beats TRANSFORMERS_OFFLINE=1": {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"},
    "HF_HUB_OFFLINE empty, TRANSFORMERS_OFFLINE=1": {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "1"},
    "HF_TOKEN": {"HF_TOKEN": "hf_abcdefghijklmnop"},
    "HF_TOKEN padded": {"HF_TOKEN": "  hf_abcdefghijklmnop \n"},
    "HF_TOKEN blank": {"HF_TOKEN": "   "},
    "HF_TOKEN empty, legacy set": {"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "hf_legacylegacylegacy"},
    "HF_TOKEN blank, legacy set": {"HF_TOKEN": " ", "HUGGING_FACE_HUB_TOKEN": "hf_legacylegacylegacy"},
    "HF_TOKEN_PATH": {"HF_TOKEN_PATH": "/secrets/token"},
    "HF_TOKEN_PATH with ~ and $VAR": {"HF_TOKEN_PATH": "~/$SUB/token", "SUB": "keys"},
    "token path follows HF_HOME": {"HF_HOME": "$BASE/hf", "BASE": "/b"},
    "HF_ENDPOINT": {"HF_ENDPOINT": "https://mirror.example/api/hf/"},
    "HF_ENDPOINT several slashes": {"HF_ENDPOINT": "http://127.0.0.1:8080//"},
    "bars disabled 1": {"HF_HUB_DISABLE_PROGRESS_BARS": "1"},
    "bars disabled yes": {"HF_HUB_DISABLE_PROGRESS_BARS": "YES"},
    "bars enabled 0": {"HF_HUB_DISABLE_PROGRESS_BARS": "0"},
    "bars empty": {"HF_HUB_DISABLE_PROGRESS_BARS": ""},
}


def _environment(variables: dict[str, str]) -> dict[str, str]:
    return {"HOME": HOME, "PATH": os.environ.get("PATH", ""), **variables}


def _prefetch_view(env: dict[str, str]) -> dict[str, object]:
    from_env = settings.env_token(env)
    return {
        "hf_home": str(settings.hf_home(env)),
        "hub_cache": str(settings.hub_cache(env)),
        "offline": settings.offline(env),
        "token": from_env[1] if from_env else None,
        "token_path": str(settings.token_path(env)),
        "endpoint": settings.endpoint(env) or settings.DEFAULT_ENDPOINT,
        "bars_disabled": settings.progress_bars_disabled(env),
    }


def _paths_as_path(view: dict[str, object]) -> dict[str, object]:
    """huggingface_hub keeps strings, prefetch Paths: compare both as pathlib would print them."""
    return {
        k: str(Path(str(v))) if k in ("hf_home", "hub_cache", "token_path") else v for k, v in view.items()
    }


@pytest.mark.parametrize("name", list(CASES))
def test_settings_match_huggingface_hub(name: str) -> None:
    env = _environment(CASES[name])
    probe = subprocess.run(
        [sys.executable, "-c", HF_PROBE], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    theirs = json.loads(probe.stdout)
    assert _paths_as_path(_prefetch_view(env)) == _paths_as_path(theirs), name


def test_settings_read_os_environ_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No state kept between calls: a changed environment is seen by the next call."""
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert settings.offline() is True
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert settings.offline() is False


def test_proxies_in_failover_order() -> None:
    env = {
        "https_proxy": "http://a:1",
        "HTTP_PROXY": "http://b:2",
        "http_proxy": "http://b:2",
        "ALL_PROXY": "http://c:3",
        "no_proxy": "corp",
    }
    assert settings.proxies(env) == (["http://a:1", "http://b:2", "http://c:3"], "corp")
    assert settings.proxies({"NO_PROXY": "x", "no_proxy": "y"}) == ([], "x")


def test_unparsable_progress_interval_falls_back() -> None:
    assert (
        settings.progress_interval({"PREFETCH_PROGRESS_INTERVAL": "soon"})
        == settings.DEFAULT_PROGRESS_INTERVAL
    )
    assert settings.progress_interval({"PREFETCH_PROGRESS_INTERVAL": "0.5"}) == 0.5


def test_processes_are_decided_by_the_run_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert settings.processes({}) is None  # a second one once the first is bound by its CPU
    assert settings.processes({"PREFETCH_PROCESSES": "1"}) == 1
    assert settings.processes({"PREFETCH_PROCESSES": "8"}) == 2  # one helper at most
    assert settings.processes({"PREFETCH_PROCESSES": "many"}) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert settings.processes({"PREFETCH_PROCESSES": "2"}) == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert settings.processes({}) is None


def test_only_settings_reads_the_environment() -> None:
    """Every other module asks prefetch.settings, so there is one rule per variable."""
    package = Path(settings.__file__).parent
    readers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "settings.py" and ("os.environ" in path.read_text() or "getenv" in path.read_text())
    ]
    assert readers == []


# ---------------------------------------------------------------------------------------------- the real CLI
def _one_repo(hub: HubEmulator) -> None:
    hub.create_repo("org/model").commit({"config.json": b"{}\n", "model.safetensors": os.urandom(4096)})


def _synced_into(cache: Path) -> bool:
    return (cache / "models--org--model" / "refs" / "main").is_file()


def test_hf_home_with_variables_and_legacy_cache_variable(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    _one_repo(hub)
    prefetch.manifest([{"repo": "org/model"}])
    base = prefetch.tmp / "big"
    result = prefetch(
        "sync", "models.yaml", env={"HF_HUB_CACHE": None, "HF_HOME": "$BASE/hf", "BASE": str(base)}
    )
    assert result.code == 0, result
    assert _synced_into(base / "hf" / "hub"), result
    assert not (prefetch.tmp / "$BASE").exists()

    legacy = prefetch.tmp / "legacy"
    result = prefetch("sync", "models.yaml", env={"HF_HUB_CACHE": None, "HUGGINGFACE_HUB_CACHE": str(legacy)})
    assert result.code == 0, result
    assert _synced_into(legacy), result


def test_transformers_offline_is_offline(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    _one_repo(hub)
    prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("sync", "models.yaml").code == 0
    shutil.rmtree(prefetch.cache_dir / "models--org--model" / "snapshots")
    hub.reset_counters()
    result = prefetch("sync", "models.yaml", env={"TRANSFORMERS_OFFLINE": "1"})
    assert result.code == 0, result
    assert hub.count() == 0
    assert (prefetch.cache_dir / "models--org--model" / "snapshots").is_dir()
    # HF_HUB_OFFLINE=0 wins over TRANSFORMERS_OFFLINE, as in huggingface_hub: the run asks the Hub.
    result = prefetch(
        "sync", "models.yaml", "--upgrade", env={"TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "0"}
    )
    assert result.code == 0, result
    assert hub.count() > 0


def test_token_path_with_variables(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    hub.add_user("alice", token="hf_alicealicealicealice")
    hub.create_repo("alice/private", private=True, owner="alice").commit({"config.json": b"{}\n"})
    (prefetch.tmp / "keys").mkdir()
    (prefetch.tmp / "keys" / "token").write_text("hf_alicealicealicealice\n")
    prefetch.manifest([{"repo": "alice/private"}])
    result = prefetch(
        "check", "models.yaml", env={"HF_TOKEN_PATH": "$KEYS/token", "KEYS": str(prefetch.tmp / "keys")}
    )
    assert result.code == 0, result
    assert (
        "[token: HF_TOKEN_PATH (" in result.stdout and str(prefetch.tmp / "keys" / "token") in result.stdout
    )
