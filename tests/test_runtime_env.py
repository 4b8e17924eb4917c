"""`prefetch env`: the shell exports that point a runtime at the cache, quoted for any folder name."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

from tests.conftest import PrefetchRunner
from tests.offline_helpers import make_model
from tests.test_interop import sync


def test_env_prints_shell_exports(prefetch: PrefetchRunner, hub: Any) -> None:
    make_model(hub)
    lock = sync(prefetch, [{"repo": "org/model"}])
    result = prefetch("env", str(lock))
    assert result.code == 0, result
    assert result.stdout.splitlines() == [
        f"export HF_HUB_CACHE={prefetch.cache_dir}",
        "export HF_HUB_OFFLINE=1",
        "export HF_HUB_DISABLE_TELEMETRY=1",
    ]
    odd = prefetch.tmp / "a cache; with $(odd) chars"
    quoted = prefetch("env", str(lock), "--cache-dir", str(odd))
    assert quoted.code == 0, quoted
    shell = subprocess.run(
        ["sh", "-c", quoted.stdout + 'printf "%s|%s" "$HF_HUB_CACHE" "$HF_HUB_OFFLINE"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == f"{odd}|1"
    assert shlex.split(quoted.stdout.splitlines()[0]) == ["export", f"HF_HUB_CACHE={odd}"]
