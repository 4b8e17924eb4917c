"""prefetch.settings: every variable read in one place, at call time, and the CLI honouring each one
on a real sync against the Hub emulator. (That it reads them as huggingface_hub does is
tests/test_hf_rules.py's job.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from prefetch import settings
from tests.conftest import PrefetchRunner
from tests.hubemu import HubEmulator


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
