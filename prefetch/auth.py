"""Where tokens come from, and keeping them (and proxy passwords) out of every output.

A `Token` knows its value and its *source*; everything user-facing names the source only.
Each run has its `Secrets`: the token values and proxy passwords it has seen, which every output path of
the run (log handler, error printing, JSON events, reports) runs text through (`Secrets.redact`), so even
an unexpected traceback cannot leak one. Token-shaped strings (`hf_...`, `Bearer ...`) and URL passwords
are masked too, registered or not (`mask_patterns`): defence in depth for a value that reached a message
before anyone registered it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from prefetch import settings
from prefetch.errors import UsageError
from prefetch.settings import DOCKER_SECRET_PATH

MASK = "***"
MIN_SECRET = 4  # shorter values are not redacted: they would mask ordinary words

_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]*@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+")
_HF_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{20,}")
# A token is one HTTP header word: printable ASCII without spaces. Anything else (two lines pasted
# into a file, a stray tab) would either break the request or end up in an error message.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def mask_patterns(text: str) -> str:
    """`text` with URL passwords, `Bearer` values and token-shaped words (`hf_...`) replaced by `***`."""
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _BEARER.sub(rf"\1{MASK}", text)
    return _HF_TOKEN_SHAPE.sub(MASK, text)


class Secrets:
    """The secret values one run has seen (token values, proxy passwords): its outputs redact them.

    One per run (a command, or a library call), handed to what shows text (progress, logging, the CLI's
    error printing) and to what learns secrets (token lookup, the HTTP session's proxies); never
    process-wide, so one run's values are not another's business.
    """

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        """Remember a secret so `redact` removes it from any text."""
        if value and len(value) >= MIN_SECRET:
            with self._lock:
                self._values.add(value)

    def add_url(self, url: str) -> None:
        """Remember a URL's password (as written and percent-decoded: the form Basic auth sends)."""
        password = urlsplit(url).password
        if password is not None:
            self.add(password)
            self.add(unquote(password))

    def redact(self, text: str) -> str:
        """`text` with every secret of this run, URL password and token-shaped word replaced by `***`."""
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return mask_patterns(text)


def redact_url(url: str) -> str:
    """A URL safe to print: its password (if any) replaced by `***`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed authority, as urlsplit may
    except ValueError:  # a URL no reader can take apart: mask whatever looks like a password
        return mask_patterns(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Authorizer(Protocol):
    """A credential that decides per URL where it goes (a registry's, scoped to its own origin and its
    token realm's; the Xet CAS's): the `Authorization` value for `url`, or None to send nothing there."""

    def authorization(self, url: str) -> str | None: ...


@dataclass(frozen=True)
class Token:
    """A Hub token and where it came from; `repr`/`str` never show the value.

    `source` is what reports print ("HF_TOKEN", "--token-file /x", a path); `env_var` or `path`
    say where a replacement goes, for the remedy of an invalid token.
    """

    value: str = field(repr=False)
    source: str
    env_var: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        return f"token from {self.source}"

    @property
    def replace_hint(self) -> str:
        """Where to put a new token so this source yields it."""
        if self.path is not None:
            return f"write it to {self.path}"
        if self.env_var is not None:
            return f"set {self.env_var} to it"
        return f"put it in {self.source}"


def _checked(value: str, source: str, secrets: Secrets) -> str:
    """The token, or a usage error naming its source (never its value) if it cannot be a token."""
    secrets.add(value)
    if not _TOKEN_CHARS.fullmatch(value):
        raise UsageError(
            f"the token from {source} contains spaces, several lines or control characters; "
            "it must be the token alone, on one line"
        )
    return value


def _read_token_file(path: Path) -> str | None:
    try:
        value = path.read_text(encoding="utf-8", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
        return None
    return value or None


def default_token_path(env: Mapping[str, str] | None = None) -> Path:
    """Where `hf auth login` stores the token: `$HF_HOME/token`."""
    return settings.hf_home(env) / "token"


def find_token(
    secrets: Secrets, token_file: Path | None = None, env: Mapping[str, str] | None = None
) -> Token | None:
    """The default token, from the first source that has one (its value joins the run's `secrets`).

    Order: `--token-file`, `HF_TOKEN` (or the legacy `HUGGING_FACE_HUB_TOKEN`), `HF_TOKEN_PATH`,
    `$HF_HOME/token`, `/run/secrets/hf_token` (where a BuildKit `--mount=type=secret,id=hf_token`
    puts it). A blank source is skipped; a
    malformed token is a usage error (exit 2) naming the source.
    """
    from_env = settings.env_token(env)
    if from_env:
        secrets.add(from_env[1])  # even when --token-file wins, its value must never be printed
    if token_file is not None:
        source = f"--token-file {token_file}"
        value = _read_token_file(token_file)
        if value is None:
            raise UsageError(f"{source}: no token there (missing, unreadable or empty)")
        return Token(_checked(value, source, secrets), source, path=token_file)
    if from_env:
        name, value = from_env
        return Token(_checked(value, name, secrets), name, env_var=name)
    candidates: list[tuple[Path, str]] = []
    if settings.token_path_is_set(env):
        path = settings.token_path(env)
        candidates.append((path, f"HF_TOKEN_PATH ({path})"))
    home_token = default_token_path(env)
    candidates += [(home_token, str(home_token)), (DOCKER_SECRET_PATH, str(DOCKER_SECRET_PATH))]
    for path, source in candidates:
        value = _read_token_file(path)
        if value is not None:
            return Token(_checked(value, source, secrets), source, path=path)
    return None


def entry_token(
    token_env: str | None, default: Token | None, secrets: Secrets, env: Mapping[str, str] | None = None
) -> Token | None:
    """The token an entry uses: its own `token_env` variable when it names one, else the default.

    An entry naming a variable that is unset gets no token (not the default one: that would send
    another account's token where the manifest asked for a specific one).
    """
    if token_env is None:
        return default
    value = settings.token_env_value(token_env, env)
    return Token(_checked(value, token_env, secrets), token_env, env_var=token_env) if value else None


Credential = Token | Authorizer  # a Hub token goes to the endpoint's origin only; an Authorizer decides
