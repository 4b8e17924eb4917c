"""The manifest and the lockfile through the real CLI where the YAML itself is hostile or the wrong file,
and the promise that both are pure data: importing them loads no network code."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT, PrefetchRunner

DEEP = "[" * 50_000 + "]" * 50_000


def test_a_manifest_nested_too_deep_is_a_usage_error_at_its_position(
    prefetch: PrefetchRunner, hub: Any
) -> None:
    (prefetch.tmp / "models.yaml").write_text(f"version: 1\nrepos: {DEEP}\n")
    for command in ("lock", "check"):
        result = prefetch(command, "models.yaml")
        assert result.code == 2, result
        assert "models.yaml:2:107: lists and mappings nested more than 100 levels deep" in result.stderr
        assert "internal error" not in result.stderr
    assert hub.count() == 0


def test_a_lockfile_nested_too_deep_is_a_usage_error_not_a_crash(prefetch: PrefetchRunner, hub: Any) -> None:
    """libyaml's composer recursed in C on this one: the process died of a segmentation fault."""
    (prefetch.tmp / "models.lock").write_text(f"version: 1\ntool_version: x\nentries: {DEEP}\n")
    result = prefetch("verify", "models.lock")
    assert result.code == 2, result
    assert "models.lock:3:109: lists and mappings nested more than 100 levels deep" in result.stderr


def test_a_manifest_passed_as_the_lockfile_is_recognised(prefetch: PrefetchRunner, hub: Any) -> None:
    prefetch.manifest([{"repo": "org/model"}])
    result = prefetch("verify", "models.yaml")
    assert result.code == 2, result
    assert "this is a manifest, not a lockfile" in result.stderr and "models.lock" in result.stderr
    assert "unknown key" not in result.stderr


NETWORK_CODE = ("prefetch.net", "prefetch.download", "http.client", "ssl")
IMPORTED = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def imported_by(*modules: str) -> list[str]:
    """Every module a fresh interpreter holds after importing `modules`."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTED, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(proc.stdout))


def network_code(modules: list[str]) -> list[str]:
    return [m for m in modules if m in NETWORK_CODE or m.startswith(tuple(f"{n}." for n in NETWORK_CODE))]


@pytest.mark.parametrize("module", ["prefetch.manifest", "prefetch.lockfile"])
def test_the_manifest_and_the_lockfile_are_pure_data(module: str) -> None:
    assert network_code(imported_by("prefetch.net.proxies"))  # what is looked for shows where it is
    assert network_code(imported_by(module)) == []


def test_the_proxy_url_parser_is_shared_not_copied() -> None:
    from prefetch import manifest, urls
    from prefetch.net import proxies

    assert manifest.parse_proxy_url is proxies.parse_proxy_url is urls.parse_proxy_url
