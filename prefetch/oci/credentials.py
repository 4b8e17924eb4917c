"""Registry logins where docker, podman and skopeo users already keep them, read in skopeo's order
(containers/image `pkg/docker/config`, containers-auth.json(5)):

1. `REGISTRY_AUTH_FILE` when set (skopeo's `--authfile` default): that file alone;
2. otherwise `${XDG_RUNTIME_DIR}/containers/auth.json` (`/run/containers/$UID/auth.json` without
   XDG_RUNTIME_DIR: podman login's file), `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`,
   `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`), `~/.dockercfg` (legacy: `auths` at the
   top), and for root `/etc/containers/auth.json` (ignored when group or others may read it).

The first file with a login for the repository wins. In a file: a `credHelpers` entry for the
registry (`docker-credential-<name> get`), then the `auths` keys from the most specific
(`host/ns/repo`, a containers extension) to the registry, then keys written as URLs
(`https://host/v1/`); where `auths` has none, a `credsStore` (Docker's default helper). An entry is
`auth` (base64 `user:password`), `username`/`password`, or `identitytoken` (an OAuth2 refresh token).

Secrets never reach an output: `RegistryLogin`'s repr hides them, every one is registered with
the run's `prefetch.auth.Secrets`, and messages name the file they came from, not its content.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prefetch import settings
from prefetch.errors import AccessError, UsageError
from prefetch.terminal import printable

MAX_AUTH_FILE = 1024 * 1024  # bytes of an auth file read
HELPER_TIMEOUT = 30.0  # seconds a credential helper may take
MAX_HELPER_OUTPUT = 64 * 1024  # bytes of a helper's answer read
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")  # no line breaks or controls in anything that builds a header


@dataclass(frozen=True)
class RegistryLogin:
    """A login for one registry and where it came from; `repr`/`str` never show the secrets."""

    username: str = field(repr=False)
    password: str = field(repr=False)
    source: str  # what messages name: a file, or a helper and the file that named it
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token

    @property
    def secret_values(self) -> tuple[str, ...]:
        """What the run's outputs must redact (`Secrets.add` each): the password, the identity token and
        the Basic credentials built from them."""
        return (self.password, self.identity_token or "", self.basic_value)

    @property
    def basic_value(self) -> str:
        """The `Authorization: Basic` credentials (one of `secret_values`)."""
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")

    def __str__(self) -> str:
        return f"registry login from {self.source}"


@dataclass(frozen=True)
class _AuthFile:
    path: Path
    legacy: bool = False  # ~/.dockercfg: the `auths` mapping is the whole file
    owner_only: bool = False  # /etc/containers/auth.json: refused when group or others may read it


def auth_files(env: Mapping[str, str] | None = None) -> list[_AuthFile]:
    """The files searched, in order (some may not exist)."""
    explicit = settings.registry_auth_file(env)
    if explicit is not None:
        return [_AuthFile(explicit)]
    runtime, config, docker, legacy = settings.registry_login_files(env)
    files = [_AuthFile(runtime), _AuthFile(config), _AuthFile(docker), _AuthFile(legacy, legacy=True)]
    if os.getuid() == 0:
        files.append(_AuthFile(Path("/etc/containers/auth.json"), owner_only=True))
    return files


def find_login(registry: str, repository: str, env: Mapping[str, str] | None = None) -> RegistryLogin | None:
    """The login for `registry/repository` from the first auth file that has one; None: anonymous.

    A file that exists but cannot be read or parsed is a UsageError naming it (never quoting it).
    """
    for auth_file in auth_files(env):
        login = _login_in_file(auth_file, registry, f"{registry}/{repository}", env)
        if login is not None:
            return login
    return None


def _read_json(auth_file: _AuthFile) -> dict[str, object] | None:
    path = auth_file.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise UsageError(f"cannot read the registry auth file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"the registry auth file {path} is not a regular file")
        if auth_file.owner_only and info.st_mode & 0o044:
            return None  # as containers/image: a system-wide file others can read is not trusted
        data = f.read(MAX_AUTH_FILE + 1)
    if len(data) > MAX_AUTH_FILE:
        raise UsageError(f"the registry auth file {path} is larger than {MAX_AUTH_FILE} bytes")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise UsageError(f"the registry auth file {path} is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"the registry auth file {path} is not a JSON object")
    return {"auths": parsed} if auth_file.legacy else parsed


def _login_in_file(
    auth_file: _AuthFile, registry: str, key: str, env: Mapping[str, str] | None
) -> RegistryLogin | None:
    data = _read_json(auth_file)
    if data is None:
        return None
    path = auth_file.path
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict) and isinstance(helpers.get(registry), str):
        return helper_login(helpers[registry], registry, f"credHelpers of {path}", env)
    auths = data.get("auths")
    auths = auths if isinstance(auths, dict) else {}
    keys = [key]
    while "/" in keys[-1] and not auth_file.legacy:
        keys.append(keys[-1].rsplit("/", 1)[0])
    if auth_file.legacy:
        keys = [registry]
    for candidate in keys:
        login = _entry_login(auths.get(candidate), path, candidate)
        if login is not None:
            return login
    for name, entry in sorted(auths.items()):
        if isinstance(name, str) and _normalized_key(name, auth_file.legacy) == _normalized_registry(
            registry
        ):
            login = _entry_login(entry, path, name)
            if login is not None:
                return login
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return helper_login(store, registry, f"credsStore of {path}", env)
    return None


def _entry_login(entry: object, path: Path, key: str) -> RegistryLogin | None:
    """The login of one `auths` entry; None for an empty one (Docker writes `{}` beside a helper)."""
    if not isinstance(entry, dict):
        return None
    where = f"{path} (entry {printable(key[:100])!r})"
    token = entry.get("identitytoken")
    token = token if isinstance(token, str) and token else None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise UsageError(
                f"the registry auth file {where}: `auth` is not base64 of user:password"
            ) from None
        user, colon, password = decoded.partition(":")
        if not colon:
            return None  # as docker and containers/image: skipped
        return _checked(user, password.strip("\x00"), where, token)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and (name or secret):
        return _checked(name, secret, where, token)
    if token is not None:
        return _checked("", "", where, token)
    return None


def _checked(user: str, password: str, where: str, token: str | None) -> RegistryLogin:
    if not all(_HEADER_SAFE.fullmatch(v) for v in (user, password, token or "")):
        raise UsageError(f"the registry login in {where} contains line breaks or control characters")
    return RegistryLogin(user, password, where, token)


def _normalized_registry(registry: str) -> str:
    return "index.docker.io" if registry in ("registry-1.docker.io", "docker.io") else registry


def _normalized_key(key: str, legacy: bool) -> str:
    """An `auths` key written as a URL (`https://host/v1/`), as a registry name."""
    stripped = key.removeprefix("http://").removeprefix("https://")
    if legacy or stripped != key:
        stripped = stripped.split("/", 1)[0]
    return _normalized_registry(stripped)


def helper_login(
    name: str, registry: str, named_by: str, env: Mapping[str, str] | None = None
) -> RegistryLogin | None:
    """`docker-credential-<name> get` for `registry` (stdin: the registry; stdout: JSON `Username`,
    `Secret`), bounded in time and output. Not found: None. A helper that fails otherwise is an
    AccessError naming it (its output is not quoted: it may hold a secret)."""
    if not _HELPER_NAME.fullmatch(name):
        raise UsageError(f"invalid credential helper name in {named_by}: {printable(name[:64])!r}")
    program = f"docker-credential-{name}"
    source = f"{program} (named by {named_by})"
    try:
        proc = subprocess.Popen(
            [program, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError:
        raise AccessError(f"the credential helper {source} is not installed (not on PATH)") from None
    except OSError as exc:
        raise AccessError(f"cannot run the credential helper {source}: {exc.strerror or exc}") from None
    try:
        out, _ = proc.communicate(registry.encode(), timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AccessError(
            f"the credential helper {source} did not answer within {HELPER_TIMEOUT:.0f}s"
        ) from None
    if proc.returncode != 0:
        if b"credentials not found" in out.lower():
            return None
        raise AccessError(f"the credential helper {source} failed (exit {proc.returncode})")
    if len(out) > MAX_HELPER_OUTPUT:
        raise AccessError(f"the credential helper {source} answered more than {MAX_HELPER_OUTPUT} bytes")
    try:
        answer = json.loads(out)
    except ValueError:
        raise AccessError(f"the credential helper {source} did not answer JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("Secret"), str):
        raise AccessError(f"the credential helper {source} answered without a Secret")
    user = str(answer.get("Username") or "")
    secret = str(answer["Secret"])
    if user == "<token>":  # docker-credential-helpers' way of returning an identity token
        return _checked("", "", source, secret)
    return _checked(user, secret, source, None)
