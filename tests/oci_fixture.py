"""Fixtures for the OCI tests: the Distribution registry (Debian's `docker-registry`, started on
127.0.0.1 with its storage in the test's tmp folder, with or without htpasswd basic auth), a small
recording reverse proxy in front of it (counts requests, and can break or stall a chunk upload), and
a Hugging Face cache + lock written with prefetch's own cache and lockfile code.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prefetch.cache import RepoCache
from prefetch.hashing import blob_hasher
from prefetch.lockfile import Lock, LockedEntry, LockedFile, write_lock

REGISTRY_USER = "pusher"
# The password every auth test uses; it must never appear in any output, message or file written.
REGISTRY_CANARY = "CANARYregistryPassw0rd-7Tq2Lm9Xz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RegistryServer:
    """A running `docker-registry serve` on 127.0.0.1."""

    port: int
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_registry(folder: Path, htpasswd: str | None = None, auth_config: str = "") -> RegistryServer:
    """Start the Distribution registry with its storage under `folder`; `htpasswd`: a bcrypt line for
    basic auth; `auth_config`: another `auth:` section. Waits (bounded) until `/v2/` answers."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is not installed (.ci/run installs it)")
        pytest.skip("docker-registry (Debian package docker-registry) is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = auth_config
    if htpasswd is not None:
        (folder / "htpasswd").write_text(htpasswd + "\n")
        auth = f"auth:\n  htpasswd:\n    realm: prefetch-test\n    path: {folder / 'htpasswd'}\n"
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: prefetch-test-upload-state-secret\n" + auth
    )
    log = folder / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    server = RegistryServer(port, folder, process, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            conn.close()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    pytest.fail("docker-registry did not answer within 20 s")


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line, from apache2-utils' `htpasswd` (the registry accepts bcrypt only)."""
    binary = shutil.which("htpasswd")
    if binary is None:
        pytest.skip("htpasswd (Debian package apache2-utils) is not installed")
    proc = subprocess.run(
        [binary, "-nbB", user, password], capture_output=True, text=True, timeout=30, check=True
    )
    return proc.stdout.strip()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path / "registry")
    yield server
    server.stop()


@pytest.fixture
def second_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path / "registry-b")
    yield server
    server.stop()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path / "registry-auth", htpasswd_line(REGISTRY_USER, REGISTRY_CANARY))
    yield server
    server.stop()


# ------------------------------------------------------------------------------ the recording proxy
@dataclass
class Recorded:
    method: str
    path: str
    length: int  # request body bytes
    range: str = ""  # the Range header asked, if any


@dataclass
class ProxyRules:
    """What the proxy does to chunk uploads: break the connection on the Nth PATCH (1-based) before
    forwarding a byte of it, or hold the Nth PATCH unanswered until `release` is set."""

    break_patch: set[int] = field(default_factory=set)
    stall_patch: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)


class RecordingProxy:
    """A reverse proxy on 127.0.0.1 in front of a registry: forwards every request (the Host header
    as sent, so the registry's Location URLs lead back here) and records method, path, body size."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[Recorded] = []
        self.rules = ProxyRules()
        self._lock = threading.Lock()
        self._patches = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                with proxy._lock:
                    proxy.requests.append(
                        Recorded(self.command, self.path, length, self.headers.get("range") or "")
                    )
                    if self.command == "PATCH":
                        proxy._patches += 1
                        number = proxy._patches
                    else:
                        number = 0
                if number and number in proxy.rules.break_patch:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if number and number == proxy.rules.stall_patch:
                    proxy.rules.stalled.set()
                    proxy.rules.release.wait(60)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    upstream.putheader(k, v)
                upstream.endheaders()
                left = length
                while left:
                    block = self.rfile.read(min(left, 1 << 20))
                    if not block:
                        break
                    upstream.send(block)
                    left -= len(block)
                answer = upstream.getresponse()
                body = answer.read()
                self.send_response_only(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                upstream.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, method: str, fragment: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and fragment in r.path)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._patches = 0

    def stop(self) -> None:
        self.rules.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_proxy(registry: RegistryServer) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(registry.port)
    yield proxy
    proxy.stop()


# ---------------------------------------------------------------------------------- cache and lock
def git_sha1(data: bytes) -> str:
    h = blob_hasher(False, len(data))
    h.update(data)
    return str(h.hexdigest())


def write_entry(
    root: Path,
    repo: str,
    revision: str,
    commit: str,
    files: dict[str, bytes],
    lfs: set[str],
    repo_type: str = "model",
) -> LockedEntry:
    """Put `files` in the cache as a sync would (blobs, snapshot links, ref) and return their lock entry."""
    cache = RepoCache(root, repo, repo_type)
    cache.blobs.mkdir(parents=True, exist_ok=True)
    locked = []
    for path, data in sorted(files.items()):
        if path in lfs:
            item = LockedFile(path, len(data), sha256=hashlib.sha256(data).hexdigest())
        else:
            item = LockedFile(path, len(data), git_sha1=git_sha1(data))
        (cache.blobs / item.etag).write_bytes(data)
        locked.append(item)
    cache.link_all(commit, [(f.path, f.etag) for f in locked])
    cache.write_ref(revision, commit)
    digest = "sha256:" + hashlib.sha256(f"{repo}@{revision}".encode()).hexdigest()
    return LockedEntry(repo, repo_type, revision, commit, None, (), digest, tuple(locked))


def write_lock_file(path: Path, entries: list[LockedEntry], cache_dir: str = "cache") -> Lock:
    """A lock of `entries` whose cache is `cache_dir` (relative: beside the lock)."""
    lock = Lock(
        manifest_digest="sha256:" + "ab" * 32,
        tool_version="test",
        entries=tuple(entries),
        endpoint="https://huggingface.co",
        cache_dir=cache_dir,
    )
    write_lock(lock, path)
    return lock


# ------------------------------------------------------------------------- a Bearer token service
class TokenService:
    """The token realm of a registry set up for Bearer auth (distribution's `auth: token:`): it grants
    the scopes asked for to the right Basic login (anonymous callers get pull only) and signs JWTs
    (ES256, the certificate in `x5c`) that the registry verifies against `cert`. Records each request's
    Authorization header, to prove where credentials went."""

    SERVICE = "prefetch-test-registry"
    ISSUER = "prefetch-test-issuer"

    def __init__(self, folder: Path) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prefetch-test-token-signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert = folder / "token-signer.pem"
        folder.mkdir(parents=True, exist_ok=True)
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.authorizations: list[str | None] = []
        self.scopes: list[list[str]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("authorization")
                service.authorizations.append(auth)
                scopes = query.get("scope", [])
                service.scopes.append(scopes)
                expected = "Basic " + base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_CANARY}".encode()).decode()
                if auth is not None and auth != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(
                    {"token": service.token(scopes, full=auth is not None), "expires_in": 300}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, scopes: list[str], full: bool) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64url(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = actions.split(",") if full else [a for a in actions.split(",") if a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": self.ISSUER, "sub": REGISTRY_USER if full else "", "aud": self.SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}  # fmt: skip
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def config(self) -> str:
        return (
            f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.SERVICE}\n"
            f"    issuer: {self.ISSUER}\n    rootcertbundle: {self.cert}\n"
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[tuple[RegistryServer, TokenService]]:
    service = TokenService(tmp_path / "token-service")
    server = start_registry(tmp_path / "registry-token", auth_config=service.config())
    yield server, service
    server.stop()
    service.stop()
