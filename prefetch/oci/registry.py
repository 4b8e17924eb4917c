"""A client of one OCI registry (the OCI distribution spec) over prefetch's HTTP layer: the auth
challenge (`WWW-Authenticate: Basic` or `Bearer realm=,service=,scope=`), blob HEAD, cross-repository
mount, manifests; blob uploads are `prefetch.oci.upload`'s (monolithic for small blobs; chunked and
resumable for the others).

Credentials go only where they belong (`RegistryAuth.credential`, an `Authorizer`): the login as
`Basic` or the token as `Bearer` to the registry's origin; the login to the token realm's origin for
the token request alone; nothing to any other origin, such as the storage a blob GET is redirected
to. Over plain http, the net layer refuses to send any of it to a host off this machine.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from prefetch import settings
from prefetch.auth import Secrets
from prefetch.cancel import CancelToken
from prefetch.errors import (
    AccessError,
    HubHttpError,
    NetworkError,
    TransportError,
    UnusableAnswer,
)
from prefetch.net.connection import FileBody, Response
from prefetch.net.retry import RetryPolicy, is_retryable
from prefetch.net.session import Http, http_status_error
from prefetch.oci.credentials import RegistryLogin
from prefetch.oci.reference import RegistryRef
from prefetch.settings import RetrySettings
from prefetch.terminal import printable
from prefetch.urls import same_origin

MAX_MANIFEST = 4 * 1024 * 1024  # bytes of a manifest or index read (distribution's own limit is 4 MiB)
MAX_TOKEN_ANSWER = 1024 * 1024
MAX_CHALLENGE = 8192
DEFAULT_CHUNK = 64 * 1024 * 1024  # bytes per PATCH: what a broken connection costs at most
TOKEN_MARGIN = 10.0  # seconds before a token's expiry when a new one is asked for
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')
UPLOAD_RANGE = re.compile(r"(?:bytes=)?0-([0-9]{1,19})")  # where an upload stands (its `Range`)
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]{1,16384}")


def registry_error(url: str, response: Response, what: str) -> HubHttpError:
    """Read (bounded) and close an error answer, through the one translator of HTTP answers (its class
    decides the exit code: 401/403/404 access, 408/429/5xx retried), with the distribution spec's
    `errors[0].code` (`BLOB_UNKNOWN`...) as its error code."""
    return http_status_error(url, response, _distribution_error_code).in_context(what)


def _distribution_error_code(body: bytes) -> str | None:
    with contextlib.suppress(ValueError, RecursionError, AttributeError, IndexError, TypeError, KeyError):
        return str(json.loads(body)["errors"][0].get("code"))[:64] or None
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...}); bounded, unknown -> ("", {})."""
    header = header[:MAX_CHALLENGE].strip()
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class RegistryAuth:
    """What one registry asked for, and the tokens it gave (per set of scopes), shared by threads."""

    def __init__(self, base: str, login: RegistryLogin | None, http: Http, secrets: Secrets) -> None:
        self.base = base
        self.login = login
        self.http = http
        self.secrets = secrets  # the run's: the tokens the realm gives join it
        self.scheme = ""  # "", "basic" or "bearer": learnt from the registry's first 401
        self.realm = ""
        self.service = ""
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def learn(self, challenge: str) -> bool:
        """Take a 401's challenge; whether sending the request again with what it asks can help."""
        scheme, params = parse_challenge(challenge)
        with self._lock:
            if scheme == "basic":
                self.scheme = "basic"
                return self.login is not None and bool(self.login.username or self.login.password)
            if scheme == "bearer" and params.get("realm"):
                realm = params["realm"]
                if urlsplit(realm).scheme not in ("http", "https") or len(realm) > 2048:
                    raise UnusableAnswer(f"{self.base}: the registry named an unusable token realm")
                self.scheme, self.realm, self.service = "bearer", realm, params.get("service", "")
                self._tokens.clear()  # refused or expired: ask again
                return True
        return False

    def header(self, scopes: tuple[str, ...]) -> str | None:
        """The Authorization value for a request needing `scopes`; a Bearer token is asked for (and
        kept until shortly before it expires) here."""
        if self.scheme == "basic" and self.login is not None and (self.login.username or self.login.password):
            return f"Basic {self.login.basic_value}"
        if self.scheme != "bearer":
            return None
        key = tuple(sorted(set(scopes)))
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            token, lifetime = self._fetch_token(key)
            self._tokens[key] = (token, time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN))
            return f"Bearer {token}"

    def _fetch_token(self, scopes: tuple[str, ...]) -> tuple[str, float]:
        """A token from the realm: GET with the login as Basic (or none: anonymous), or, for an identity
        token, the OAuth2 refresh-token POST. Raises AccessError when the realm refuses."""
        realm = self.realm
        login = self.login
        realm_login = _RealmLogin(realm, login)
        query = [("service", self.service)] if self.service else []
        query += [("scope", s) for s in scopes]
        if login is not None and login.identity_token:
            grant = [("grant_type", "refresh_token"), ("refresh_token", login.identity_token)]
            fields = [*grant, ("client_id", "prefetch"), *query[:1], ("scope", " ".join(scopes))]
            form = urlencode(fields).encode()
            headers = {"content-type": "application/x-www-form-urlencoded"}
            response = self.http.request("POST", realm, None, headers, form)
        else:
            sep = "&" if urlsplit(realm).query else "?"
            try:
                response = self.http.open(realm + (sep + urlencode(query) if query else ""), realm_login)
            except HubHttpError as exc:
                if exc.status in (401, 403):
                    raise AccessError(f"{self.refused()} (its token realm answered {exc.status})") from None
                raise
        try:
            if response.status_code >= 400:
                raise registry_error(realm, response, "token request")
            answer = response.json() if response.status_code == 200 else None
        finally:
            response.close()
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not _TOKEN_CHARS.fullmatch(token):
            raise AccessError(f"{self.base}: the token realm answered without a usable token")
        self.secrets.add(token)
        lifetime = answer.get("expires_in") if isinstance(answer, dict) else None
        return token, float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 60.0

    def credential(self, scopes: tuple[str, ...]) -> ScopedCredential:
        return ScopedCredential(self, scopes)

    def refused(self) -> str:
        """Why the registry said 401, for a message that names the login's source, never the login."""
        if self.login is None:
            where = "REGISTRY_AUTH_FILE, podman's or docker's auth files"
            return f"{self.base} asks for credentials and none were found ({where})"
        return f"{self.base} refused the {self.login}"


@dataclass(frozen=True)
class ScopedCredential:
    """The registry's credentials for requests needing `scopes`: to the registry's origin only."""

    auth: RegistryAuth
    scopes: tuple[str, ...]

    def authorization(self, url: str) -> str | None:
        if not same_origin(url, self.auth.base):
            return None  # a redirect to storage, another host: nothing
        return self.auth.header(self.scopes)


@dataclass(frozen=True)
class _RealmLogin:
    """The login, as Basic, for the token realm's origin only (the token request itself)."""

    realm: str
    login: RegistryLogin | None

    def authorization(self, url: str) -> str | None:
        if self.login is None or not (self.login.username or self.login.password):
            return None
        return f"Basic {self.login.basic_value}" if same_origin(url, self.realm) else None


class Registry:
    """One registry, its auth, and the requests of the distribution spec prefetch makes."""

    def __init__(
        self,
        ref: RegistryRef,
        login: RegistryLogin | None,
        *,
        plain_http: bool | None = None,
        retry: RetrySettings | None = None,
        cancel: CancelToken | None = None,
        env: Mapping[str, str] | None = None,
        pool_size: int = 8,
        secrets: Secrets | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """`plain_http` None: https, except to a loopback host (as Docker treats 127.0.0.0/8 as an
        insecure registry): traffic that never leaves the machine. `secrets`: the run's, which the
        login's values and the realm's tokens join. `on_retry`: told of each request tried again (the
        run's display)."""
        use_http = plain_http if plain_http is not None else ref.is_loopback
        self.ref = ref
        self.base = f"{'http' if use_http else 'https'}://{ref.registry}"
        proxies, no_proxy = settings.proxies(env)
        self.cancel = cancel or CancelToken()
        self.http = Http(
            self.base,
            proxies,
            RetryPolicy(retry or RetrySettings(), on_retry=on_retry, cancel=self.cancel),
            no_proxy=no_proxy,
            pool_size=pool_size,
        )
        self.secrets = secrets or Secrets()
        for value in login.secret_values if login else ():
            self.secrets.add(value)
        self.auth = RegistryAuth(self.base, login, self.http, self.secrets)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- plumbing
    def url(self, repository: str, kind: str, reference: str = "") -> str:
        return f"{self.base}/v2/{repository}/{kind}/{quote(reference, safe=':')}"

    def send(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        body: bytes | FileBody | None = None,
    ) -> Response:
        """One request with the registry's credentials; after a 401, once more with what its challenge
        asks (a login as Basic, a new token). A second 401 is an AccessError naming the login's source."""
        for attempt in (1, 2):
            response = self.http.request(method, url, self.auth.credential(scopes), headers, body)
            if response.status_code != 401:
                return response
            challenge = response.headers.get("www-authenticate", "")
            error = registry_error(url, response, f"{method} {urlsplit(url).path}")
            if attempt == 2 or not self.auth.learn(challenge):
                raise AccessError(f"{self.auth.refused()} ({error.status} {error.message})")
        raise AssertionError("unreachable")

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return self.http.retry.call(fn, what)
        except (TransportError, HubHttpError) as exc:
            if isinstance(exc, HubHttpError) and exc.status in (401, 403, 404):
                raise
            if is_retryable(exc) or isinstance(exc, TransportError):
                raise NetworkError(f"{self.base}: {what}: {printable(str(exc))}") from exc
            raise

    # ---------------------------------------------------------------------------------------- requests
    def ping(self, repository: str) -> None:
        """`GET /v2/`: is it a registry, and which auth does it ask for (learnt, and a token fetched)."""

        def attempt() -> None:
            response = self.send("GET", f"{self.base}/v2/", (pull_scope(repository),))
            if response.status_code != 200:
                raise registry_error(response.url, response, "GET /v2/ (is it an OCI registry?)")
            response.close()

        self.call("GET /v2/", attempt)

    def blob_size(self, repository: str, digest: str, push: bool = False) -> int | None:
        """The size of a blob the repository has (HEAD), None when it has not."""
        url = self.url(repository, "blobs", digest)
        scopes = (push_scope(repository) if push else pull_scope(repository),)

        def attempt() -> int | None:
            response = self.send("HEAD", url, scopes)
            response.close()
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise registry_error(url, response, f"HEAD blob {digest}")
            length = response.headers.get("content-length", "")
            return int(length) if length.isdigit() else -1

        result: int | None = self.call(f"HEAD blob {digest}", attempt)
        return result

    def mount(self, repository: str, digest: str, source: str) -> bool:
        """Cross-repository mount (201: done); a registry that declines (202) gets its upload cancelled."""
        url = f"{self.base}/v2/{repository}/blobs/uploads/?{urlencode({'mount': digest, 'from': source})}"
        scopes = (push_scope(repository), pull_scope(source))

        def attempt() -> bool:
            response = self.send("POST", url, scopes, body=b"")
            if response.status_code == 201:
                response.close()
                return True
            if response.status_code == 202:
                location = urljoin(url, response.headers.get("location", ""))
                response.close()
                with contextlib.suppress(TransportError, HubHttpError, AccessError):
                    self.send("DELETE", location, scopes).close()
                return False
            raise registry_error(url, response, f"mount {digest} from {source}")

        mounted: bool = self.call(f"mount {digest}", attempt)
        return mounted

    def put_manifest(self, repository: str, reference: str, media_type: str, data: bytes) -> None:
        url = self.url(repository, "manifests", reference)

        def attempt() -> None:
            response = self.send("PUT", url, (push_scope(repository),), {"content-type": media_type}, data)
            if response.status_code not in (200, 201):
                raise registry_error(url, response, f"PUT manifest {reference}")
            response.close()

        self.call(f"PUT manifest {reference}", attempt)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest of the manifest `reference` (a tag or digest) names (HEAD: `Docker-Content-Digest`);
        None when there is none, or the registry does not say."""
        url = self.url(repository, "manifests", reference)

        def attempt() -> str | None:
            response = self.send("HEAD", url, (push_scope(repository),), {"accept": MANIFEST_ACCEPT})
            response.close()
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise registry_error(url, response, f"HEAD manifest {reference}")
            return response.headers.get("docker-content-digest")

        found: str | None = self.call(f"HEAD manifest {reference}", attempt)
        return found

    def get_manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        """(media type, bytes) of a manifest or index, at most MAX_MANIFEST bytes."""
        url = self.url(repository, "manifests", reference)

        def attempt() -> tuple[str, bytes]:
            response = self.send("GET", url, (pull_scope(repository),), {"accept": MANIFEST_ACCEPT})
            if response.status_code != 200:
                raise registry_error(url, response, f"GET manifest {reference}")
            try:
                data = response.read(MAX_MANIFEST)
            finally:
                response.close()
            return response.headers.get("content-type", "").split(";")[0].strip(), data

        got: tuple[str, bytes] = self.call(f"GET manifest {reference}", attempt)
        return got

    def credential(self, repository: str) -> ScopedCredential:
        """The credential a blob download from `repository` uses (pull scope; the registry's origin only)."""
        return self.auth.credential((pull_scope(repository),))
