"""Every environment variable prefetch reads, and every default, in one place.

The Hugging Face variables follow huggingface_hub's `constants.py` rule for rule (`~` and `$VARS`
expanded in paths, the legacy `HUGGINGFACE_HUB_CACHE`, `TRANSFORMERS_OFFLINE`, its truthy words, taken
from it), so prefetch fills the cache that transformers and vLLM will read. huggingface_hub computes
those as module constants at import, from `os.environ`; prefetch restates the rules instead, so that
each function takes an optional `env` mapping (default: `os.environ`, read at call time): no
process-wide state, and tests need not touch the real environment. tests/test_hf_rules.py holds the
restatement to huggingface_hub by running both on the same environments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefetch import hfhub

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_JOBS = 32  # connections; 32 beats per-connection CDN caps (docs/benchmarks.md)
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024  # big files are fetched as parallel Range segments of this size
DEFAULT_SEGMENT_THRESHOLD = 64 * 1024 * 1024  # files of at least this size are split into segments
DEFAULT_PROGRESS_INTERVAL = 5.0  # seconds between two status lines without a terminal
MAX_JSON_BYTES = 64 * 1024 * 1024  # a bigger JSON answer from a server is refused, not read whole
MAX_LISTING_PAGES = 10_000  # a tree listing of more pages is refused (the Hub sends ~1000 files per page)
# ... or of more entries in all: ten times the Hub's recommended most files per repo (100k), so a hostile
# endpoint that pages forever with new entries stops long before it fills the memory.
MAX_LISTING_ENTRIES = 1_000_000
FIRST_CONTACT_ATTEMPTS = 3  # a host that never answered this run: attempts before giving up (~1 s)
MIN_BODY_RATE = 1024  # bytes/s: a body slower than this over the window is abandoned (and retried)
DEFAULT_MIN_RATE_WINDOW = 60.0  # seconds
DOCKER_SECRET_PATH = Path(
    "/run/secrets/hf_token"
)  # where BuildKit's `--mount=type=secret,id=hf_token` puts it

# Read, in this order, for the proxies to try (as curl and requests read them).
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

Env = Mapping[str, str]


@dataclass(frozen=True)
class RetrySettings:
    """How hard to retry network calls (manifest `retry:`, overridable on the command line). Here, not
    in `manifest`: the helper process gets one, and need not import the manifest's YAML to read it."""

    attempts: int = 8
    max_wait: float = 60.0  # seconds, cap of one backoff wait
    max_time: float = 900.0  # seconds, bound on all attempts of one call


def _env(env: Env | None) -> Env:
    return os.environ if env is None else env


def is_true(value: str | None) -> bool:
    """huggingface_hub's `_is_true`: 1, ON, YES, TRUE in any case."""
    return value is not None and value.upper() in hfhub.TRUE_VALUES


_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)  # posixpath.expandvars' pattern


def _expand(path: str, env: Env) -> str:
    """`os.path.expandvars(os.path.expanduser(path))` as on POSIX, reading `env` instead of os.environ."""
    if (path == "~" or path.startswith("~/")) and "HOME" in env:
        path = (env["HOME"].rstrip("/") + path[1:]) or "/"
    else:
        path = os.path.expanduser(path)  # `~user`, or no HOME: the password database

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        name = name[1:-1] if name.startswith("{") and name.endswith("}") else name
        return env.get(name, match.group(0))

    return _VARIABLE.sub(value, path)


def hf_home(env: Env | None = None) -> Path:
    """`$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`; `~` and `$VARS` expanded."""
    env = _env(env)
    default = os.path.join(
        env.get("XDG_CACHE_HOME", os.path.join(_expand("~", env), ".cache")), "huggingface"
    )
    return Path(_expand(env.get("HF_HOME", default), env))


def hub_cache(env: Env | None = None) -> Path:
    """`$HF_HUB_CACHE`, else the legacy `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`."""
    env = _env(env)
    legacy = env.get("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home(env), "hub"))
    return Path(_expand(env.get("HF_HUB_CACHE", legacy), env))


def resolve_cache_dir(explicit: str | Path | None = None, env: Env | None = None) -> Path:
    """The cache to fill: `--cache-dir` or the manifest's `cache_dir` (with `~`), else `hub_cache()`."""
    if explicit:
        return Path(explicit).expanduser()
    return hub_cache(env)


def offline(env: Env | None = None) -> bool:
    """`HF_HUB_OFFLINE`, else `TRANSFORMERS_OFFLINE` (the first one set and non-empty decides)."""
    env = _env(env)
    return is_true(env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE"))


def xet_disabled(env: Env | None = None) -> bool:
    """`HF_HUB_DISABLE_XET`, as huggingface_hub reads it: Xet-backed files are fetched through /resolve."""
    return is_true(_env(env).get("HF_HUB_DISABLE_XET"))


def endpoint(env: Env | None = None) -> str | None:
    """`$HF_ENDPOINT` without its trailing `/`, or None when unset (the caller falls back further)."""
    value = _env(env).get("HF_ENDPOINT")
    return None if value is None else value.rstrip("/")


def env_token(env: Env | None = None) -> tuple[str, str] | None:
    """(variable name, token) from `HF_TOKEN`, else the legacy `HUGGING_FACE_HUB_TOKEN`; blank is unset."""
    env = _env(env)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = env.get(name, "").strip()
        if value:
            return name, value
        if env.get(name):  # huggingface_hub: `HF_TOKEN or HUGGING_FACE_HUB_TOKEN`, then strip
            return None
    return None


def token_path(env: Env | None = None) -> Path:
    """`$HF_TOKEN_PATH`, else `$HF_HOME/token` (where `hf auth login` writes); `~` and `$VARS` expanded."""
    env = _env(env)
    return Path(_expand(env.get("HF_TOKEN_PATH", os.path.join(hf_home(env), "token")), env))


def token_path_is_set(env: Env | None = None) -> bool:
    """Did the user point HF_TOKEN_PATH somewhere (reports then name the variable)?"""
    return "HF_TOKEN_PATH" in _env(env)


def progress_bars_disabled(env: Env | None = None) -> bool:
    """`HF_HUB_DISABLE_PROGRESS_BARS` set to a true value: no progress bar on a terminal."""
    return is_true(_env(env).get("HF_HUB_DISABLE_PROGRESS_BARS"))


def proxy_variables(env: Env | None = None) -> list[tuple[str, str]]:
    """(variable, proxy URL) in failover order: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, either case; blank
    and repeated values skipped."""
    env = _env(env)
    found: dict[str, str] = {}
    for name in PROXY_VARIABLES:
        value = env.get(name, "").strip()
        if value and value not in found:
            found[value] = name
    return [(name, value) for value, name in found.items()]


def proxies(env: Env | None = None) -> tuple[list[str], str]:
    """(proxy URLs in failover order: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, either case), and NO_PROXY."""
    env = _env(env)
    return [value for _, value in proxy_variables(env)], env.get("NO_PROXY", env.get("no_proxy", ""))


def token_env_value(name: str, env: Env | None = None) -> str:
    """The value of an entry's `token_env` variable, stripped ("" when unset)."""
    return _env(env).get(name, "").strip()


def progress_interval(env: Env | None = None) -> float:
    """`PREFETCH_PROGRESS_INTERVAL` seconds between CI status lines (default 5; unparsable: default)."""
    try:
        return float(_env(env).get("PREFETCH_PROGRESS_INTERVAL", DEFAULT_PROGRESS_INTERVAL))
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL


def min_rate_window(env: Env | None = None) -> float:
    """`PREFETCH_MIN_RATE_WINDOW`: seconds over which a body must average MIN_BODY_RATE (default 60)."""
    try:
        return max(0.1, float(_env(env).get("PREFETCH_MIN_RATE_WINDOW", DEFAULT_MIN_RATE_WINDOW)))
    except ValueError:
        return DEFAULT_MIN_RATE_WINDOW


def processes(env: Env | None = None) -> int | None:
    """`PREFETCH_PROCESSES`, the processes that share many small files (`download.helper`): 1, or 2
    (from the start). Unset (or unparsable): None, a second one once this one is bound by its own
    CPU. Always 1 where this process may not run on 2 cores."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    if len(allowed) < 2:  # (macOS has no affinity: there, the machine's cores)
        return 1
    try:
        return min(2, max(1, int(_env(env).get("PREFETCH_PROCESSES", ""))))
    except ValueError:
        return None


def show_traceback(env: Env | None = None) -> bool:
    """`PREFETCH_TRACEBACK` set (non-empty): print the traceback of an internal error."""
    return bool(_env(env).get("PREFETCH_TRACEBACK"))


# ------------------------------------------------------------------- container registries (prefetch.oci)
def registry_auth_file(env: Env | None = None) -> Path | None:
    """`REGISTRY_AUTH_FILE`: when set, the only registry login file read (as skopeo's `--authfile`)."""
    value = _env(env).get("REGISTRY_AUTH_FILE")
    return Path(value) if value else None


def registry_login_files(env: Env | None = None) -> tuple[Path, Path, Path, Path]:
    """Where docker, podman and skopeo users keep registry logins, in skopeo's order: podman's
    `$XDG_RUNTIME_DIR/containers/auth.json` (else `/run/containers/$UID/auth.json`),
    `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`, `${DOCKER_CONFIG:-~/.docker}/config.json`, and
    the legacy `~/.dockercfg`."""
    env = _env(env)
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    runtime = env.get("XDG_RUNTIME_DIR")
    docker = env.get("DOCKER_CONFIG")
    return (
        Path(runtime) / "containers/auth.json"
        if runtime
        else Path(f"/run/containers/{os.getuid()}/auth.json"),
        Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers/auth.json",
        Path(docker) / "config.json" if docker else home / ".docker/config.json",
        home / ".dockercfg",
    )


def state_home(env: Env | None = None) -> Path:
    """`$XDG_STATE_HOME`, else `~/.local/state`: where prefetch keeps what must outlive a run (unfinished
    registry uploads)."""
    env = _env(env)
    return Path(
        env.get("XDG_STATE_HOME") or Path(env.get("HOME") or os.path.expanduser("~")) / ".local/state"
    )
