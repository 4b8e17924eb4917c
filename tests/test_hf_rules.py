"""The differential suite: what prefetch restates of huggingface_hub's private rules, held to
huggingface_hub itself. CI runs this file against the pinned huggingface_hub and again against the
newest release (.ci/run), so the next release's change to a rule shows up here.

Restated, because huggingface_hub keeps them private (see prefetch/hfhub.py for what is taken from it):
- how it reads its environment variables (`prefetch.settings`): huggingface_hub computes its
  constants at import from `os.environ`, and prefetch reads an injectable mapping at call time. The
  test runs `huggingface_hub.constants` in a fresh interpreter per environment and compares;
- where the cache keeps a blob's lock file (`prefetch.cache.RepoCache.lock_path`), so that prefetch and
  huggingface_hub exclude each other from the same blob;
- which repo ids are certainly valid without asking `validate_repo_id` (`prefetch.hfhub`'s fast path
  for the offline commands): a subset of what it accepts, so it can never let through one it refuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.utils import HFValidationError, validate_repo_id
from hypothesis import example, given
from hypothesis import strategies as st

from prefetch import settings
from prefetch.cache import RepoCache
from prefetch.hfhub import repo_id_problem

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


def test_the_blob_lock_is_where_huggingface_hub_takes_it(tmp_path: Path) -> None:
    from huggingface_hub.file_download import repo_folder_name

    etag = "a" * 64
    expected = tmp_path / ".locks" / repo_folder_name(repo_id="org/name", repo_type="model") / f"{etag}.lock"
    assert RepoCache(tmp_path, "org/name", "model").lock_path(etag) == expected


def _hf_accepts(repo_id: str) -> bool:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


@given(st.text(alphabet="aZ09_.-/-\u00e9\u0661 \n", max_size=200))
@example("a" * 96 + "/" + "b" * 96)
@example("a" * 97)
@example("org/model.git")
@example("org--x/model")
@example("_org/model_")
@example("org/model.")
@example("\u00e9t\u00e9/mod\u00e8le")
def test_repo_ids_prefetch_accepts_are_the_ones_huggingface_hub_accepts(repo_id: str) -> None:
    """The fast path never accepts an id huggingface_hub refuses; what it does not know gets
    huggingface_hub's verdict: so prefetch's verdict is huggingface_hub's, for every id."""
    assert (repo_id_problem(repo_id) is None) == _hf_accepts(repo_id)
