"""Where tokens come from, and keeping them (and proxy passwords) out of every output.

A `Token` knows its value and its *source*; everything user-facing names the source only.
Every secret seen is registered with `redact`, which all output paths (log handler, error
printing, JSON events) run text through, so even an unexpected traceback cannot leak one.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DOCKER_SECRET_PATH = Path("/run/secrets/hf_token")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Remember a secret so `redact` removes it from any text."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every registered secret and every URL password replaced by `***`."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return _URL_USERINFO.sub(r"\1***@", text)


_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]*@")


def redact_url(url: str) -> str:
    """A URL safe to print: its password (if any) replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    register_secret(parts.password)
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Token:
    """A Hub token and where it came from; `repr`/`str` never show the value."""

    value: str = field(repr=False)
    source: str

    def __post_init__(self) -> None:
        register_secret(self.value)

    def __str__(self) -> str:
        return f"token from {self.source}"


def _read_token_file(path: Path) -> str | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
        return None
    return value or None


def _hf_home(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(env.get("HF_HOME") or Path(xdg) / "huggingface").expanduser()


def find_token(token_file: Path | None = None, env: Mapping[str, str] | None = None) -> Token | None:
    """The default token, from the first source that has one.

    Order: `--token-file`, `HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`, `/run/secrets/hf_token`
    (where a BuildKit `--mount=type=secret,id=hf_token` puts it).
    """
    env = os.environ if env is None else env
    if token_file is not None:
        value = _read_token_file(token_file)
        if value is None:
            from prefetch.errors import UsageError

            raise UsageError(f"--token-file {token_file}: no token there (missing, unreadable or empty)")
        return Token(value, f"--token-file {token_file}")
    if env.get("HF_TOKEN", "").strip():
        return Token(env["HF_TOKEN"].strip(), "HF_TOKEN")
    candidates: list[tuple[Path, str]] = []
    if env.get("HF_TOKEN_PATH"):
        path = Path(env["HF_TOKEN_PATH"]).expanduser()
        candidates.append((path, f"HF_TOKEN_PATH ({path})"))
    home_token = _hf_home(env) / "token"
    candidates += [(home_token, str(home_token)), (DOCKER_SECRET_PATH, str(DOCKER_SECRET_PATH))]
    for path, source in candidates:
        value = _read_token_file(path)
        if value is not None:
            return Token(value, source)
    return None


def entry_token(
    token_env: str | None, default: Token | None, env: Mapping[str, str] | None = None
) -> Token | None:
    """The token an entry uses: its own `token_env` variable when it names one, else the default."""
    if token_env is None:
        return default
    env = os.environ if env is None else env
    value = env.get(token_env, "").strip()
    return Token(value, token_env) if value else None
