"""Local Hugging Face Hub emulator: API + /resolve server and a separate CDN origin for LFS bytes.

Why: prefetch's tests and benchmarks must run without internet, yet exercise the exact protocol the real Hub
speaks (see /work/shared/hub-notes.md): JSON shapes, X-Error-Code headers, 302 to a different origin for LFS
files, Range requests, pagination via Link headers, gating and private repos. Faults (status codes, resets,
corruption, throttling, ignored ranges) are injectable per request.

`HubEmulator(profile="mirror")` answers like a typical Hub mirror (olah and the like) instead: the routes in
`hub.missing_routes` fall through to a catch-all 404 carrying `X-Error-Code: RepoNotFound`, listings carry no
`lfs` object (an LFS file's `oid` is its pointer's git sha1), the root listing `tree/{rev}` is a 307 to
`tree/{rev}/`, /resolve serves LFS bytes itself (ETag: the pointer's git sha1) with neither `X-Linked-Etag`
nor a redirect, and its GET bodies are chunked (no Content-Length) and ignore Range. With
`publishes_hashes = False` (and "tree" in `missing_routes`) it publishes no hash at all.

`HubEmulator(tls=True)` serves both origins over HTTPS with a certificate for 127.0.0.1 and localhost, issued
by a throwaway CA (`trustme`, imported only then); `hub.ca_file` is that CA's PEM, for SSL_CERT_FILE.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import mimetypes
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

from ._httpbase import FastHandler, HandshakeRecord, LoopbackServer, ServerRunner, SharedLink, http_date
from .ratelimit import RateLimiter, Verdict
from .store import LFS_SUFFIXES, Commit, Repo
from .xet import TOKEN_ROUTE, XET_ORIGINS, XetService

FAULT_KINDS = ("status", "reset", "truncate", "corrupt", "slow", "ignore_range")
ROLES = ("read", "write", "fineGrained")
_TYPE_PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_SUBRESOURCES = {"revision", "tree", "refs", "auth-check", "paths-info", "commits", "resolve"}
# Served at /api/agent-harnesses: huggingface_hub calls `.get()` on it, so it must be this dict, not a list.
AGENT_HARNESSES: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
PROFILES = ("hub", "mirror")
DATA_ORIGINS = ("cdn", "bridge", "transfer")  # hosts serving file bytes after a redirect or a presigned URL
# API routes a mirror may lack (olah 0.5.4 serving local repos lacks auth-check and whoami; artifact managers
# serve little beyond what `hf download` needs: revision info, the tree listing, /resolve). On a mirror they
# reach the catch-all 404 below.
MIRROR_MISSING_ROUTES = frozenset({"whoami-v2", "auth-check", "paths-info", "refs", "commits"})
MIRROR_CATCH_ALL = "Sorry, we can't find the page you are looking for."
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass
class Fault:
    """A fault-injection rule. `times=None` means forever; `fired` counts how often it was applied.

    kinds: "status" (answer `status` + `headers`, and `body` if given, instead of routing), "reset" (headers +
    `after_bytes` of body, then TCP RST), "truncate" (same but a clean FIN: clients see an incomplete body, not
    a reset), "corrupt" (flip the middle byte of the body), "slow" (throttle the body to `bytes_per_sec`),
    "ignore_range" (answer 200 + full body to a Range request). Body faults are only used up by responses they
    can affect.
    """

    kind: str
    times: int | None = 1
    match: str | None = None  # regex searched in the raw request path
    origin: str | None = None  # "api" | "cdn" | a Xet origin ("cas", "bridge", "transfer") | None (all)
    method: str | None = None
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    after_bytes: int = 0
    bytes_per_sec: float = 0.0
    body: bytes | None = None  # a "status" fault's body (default: a JSON error naming the fault)
    fired: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault.kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.origin not in (None, "api", "cdn", *XET_ORIGINS):
            raise ValueError(
                f"Fault.origin must be 'api', 'cdn', one of {XET_ORIGINS} or None, got {self.origin!r}"
            )
        if self.kind == "slow" and self.bytes_per_sec <= 0:
            raise ValueError("a 'slow' fault needs bytes_per_sec > 0")

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass
class RequestRecord:
    """One request as seen by the emulator (status is the one actually sent, faults included)."""

    origin: str
    method: str
    path: str  # raw (still percent-encoded) path, without the query string
    query: dict[str, str]  # decoded; a repeated key keeps its last value (`query_string` has them all)
    status: int
    headers: dict[str, str]  # lower-case keys
    body_bytes: int
    range: str | None
    client_port: int
    time: float = 0.0  # arrival (time.time())
    sent: float = 0.0  # when the answer was all sent (time.time(); 0: not yet, or cut)
    query_string: str = ""  # raw

    @property
    def kind(self) -> str:
        """ "file" (GET/HEAD on /resolve/, or any CDN, CAS bridge or Xet transfer request), "meta" (/api/...,
        and the Xet CAS's reconstruction API) or "other"."""
        if self.origin in DATA_ORIGINS or (self.method in ("GET", "HEAD") and "/resolve/" in self.path):
            return "file"
        if self.origin == "cas":
            return "meta"
        return "meta" if self.path.startswith("/api/") else "other"


@dataclass
class _Token:
    user: str
    role: str
    can_read_gated: bool
    display_name: str = "t"
    revoked: bool = False


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | memoryview = b""
    ranged: bool = False  # honour Range / If-Range on this body
    chunked: bool = False  # send the body with Transfer-Encoding: chunked (no Content-Length)


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    h = {"Content-Type": "application/json; charset=utf-8"}
    if headers:
        h.update(headers)
    return _Response(status, h, body)


def _error(status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> _Response:
    """The Hub's error shape: X-Error-Code / X-Error-Message headers and a JSON {"error": msg} body."""
    h = {"X-Error-Message": message}
    if code:
        h["X-Error-Code"] = code
    if headers:
        h.update(headers)
    return _json(status, {"error": message}, h)


def _chunk_encode(body: memoryview, corrupt: bool) -> bytes:
    """`body` in HTTP/1.1 chunked framing (1 MiB chunks); `corrupt` flips the payload's middle byte first."""
    payload = bytearray(body)
    if corrupt:
        payload[len(payload) // 2] ^= 0xFF
    step = 1024 * 1024
    out = bytearray()
    for start in range(0, len(payload), step):
        chunk = payload[start : start + step]
        out += b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """Single `bytes=` range -> (start, end_inclusive); None = ignore header; "416" = unsatisfiable."""
    m = _RANGE_RE.match(value)
    if not m:
        return None  # multi-range or garbage: serve the whole body like S3/CloudFront do
    a, b = m.groups()
    if not a and not b:
        return None
    if not a:  # suffix range: last N bytes
        n = int(b)
        if n == 0:
            return "416"
        return (max(size - n, 0), size - 1) if size else "416"
    start = int(a)
    end = min(int(b), size - 1) if b else size - 1
    if start >= size or (b and int(b) < start):
        return "416"
    return start, end


class _HubHandler(FastHandler):
    """Serves both origins; `server.origin` says which one ("api" or "cdn")."""

    server: LoopbackServer

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _serve(self) -> None:
        hub: HubEmulator = self.server.owner
        origin = self.server.origin
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = self.read_request_body()
        rec = RequestRecord(
            origin=origin,
            method=self.command,
            path=split.path or "/",
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            status=0,
            headers=headers,
            body_bytes=0,
            range=headers.get("range"),
            client_port=int(self.client_address[1]),
            time=time.time(),
            query_string=split.query,
        )
        verdict = hub._rate_verdict(rec, self.client_address[0])
        fault = None if verdict and verdict.rejected else hub._take_fault(rec, "status")
        if verdict is not None and verdict.rejected:
            resp = _error(429, None, verdict.message)
        elif fault is not None and fault.body is not None:
            resp = _Response(fault.status, dict(fault.headers), fault.body)
        elif fault is not None:
            resp = _json(fault.status, {"error": f"Injected fault: HTTP {fault.status}"}, dict(fault.headers))
        else:
            try:
                resp = hub._route(rec, body)
            except Exception as exc:  # a bug in the emulator must still produce an HTTP answer
                resp = _error(500, None, f"hubemu internal error: {exc!r}")
        if verdict is not None:
            resp.headers.update(verdict.headers)
        self._send(hub, rec, resp)

    def _send(self, hub: HubEmulator, rec: RequestRecord, resp: _Response) -> None:
        body = memoryview(resp.body)
        status = resp.status
        headers = dict(resp.headers)
        if resp.ranged:
            headers["Accept-Ranges"] = "bytes"
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            range_applies = rng and (if_range is None or if_range == headers.get("ETag"))
            if range_applies and hub._take_fault(rec, "ignore_range") is None:
                parsed = _parse_range(rng or "", len(body))
                if parsed == "416":
                    status, body = 416, memoryview(b"")
                    headers["Content-Range"] = f"bytes */{len(resp.body)}"
                elif isinstance(parsed, tuple):
                    start, end = parsed
                    status, body = 206, body[start : end + 1]
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(resp.body)}"
        send_body = self.command != "HEAD" and status not in (204, 304) and not 100 <= status < 200
        out: list[tuple[str, str]] = [("Date", http_date()), ("X-Request-Id", str(uuid.uuid4()))]
        out.extend((k, str(v)) for k, v in headers.items() if k.lower() != "content-length")
        chunked = resp.chunked and send_body
        if not chunked:
            out.append(("Content-Length", str(len(body))))
        if self.close_connection:
            out.append(("Connection", "close"))
        rec.status = status
        reset = hub._take_fault(rec, "reset")
        truncate = None if reset else hub._take_fault(rec, "truncate")
        cut = reset or truncate
        has_body = send_body and len(body) > 0
        corrupt = has_body and hub._take_fault(rec, "corrupt") is not None
        if chunked:  # corruption hits the payload, never the chunk framing
            out.append(("Transfer-Encoding", "chunked"))
            body, corrupt = memoryview(_chunk_encode(body, corrupt)), False
        slow = hub._take_fault(rec, "slow") if has_body else None
        rates = [
            r
            for r in (
                slow.bytes_per_sec if slow else None,
                hub.bandwidth_per_connection if rec.origin in DATA_ORIGINS else None,
            )
            if r
        ]
        hub._record(rec)

        def progress(n: int) -> None:
            rec.body_bytes += n

        try:
            self.write_response(
                status,
                out,
                body,
                send_body=send_body,
                rate=min(rates) if rates else None,
                corrupt=corrupt,
                link=hub.link,
                limit=cut.after_bytes if cut else None,
                on_progress=progress,
            )
        except OSError:
            self.close_connection = True
            return
        rec.sent = time.time()
        if reset is not None:
            self.abort_connection()
        elif truncate is not None:
            self.close_connection = True  # the stock finish() then closes the socket normally (FIN)


class HubEmulator:
    """A local, loopback-only Hugging Face Hub (API/resolve on `url`, LFS bytes on `cdn_url`).

    `tls=True`: both origins speak HTTPS (certificate for 127.0.0.1 and localhost from a per-emulator CA whose
    PEM is at `ca_file` while the emulator runs); `url`, `cdn_url` and every URL the Hub hands out are https://.

    `hub.xet` serves the repos' Xet-backed files (`create_repo(..., xet=True)`): its CAS, CAS bridge and
    transfer hosts start on first use, over TLS too when `tls=True` (tests/hubemu/xet.py).
    """

    def __init__(
        self,
        page_size: int = 1000,
        lfs_threshold: int = 10 * 1024 * 1024,
        max_lifetime: float = 900.0,
        *,
        port: int = 0,
        cdn_port: int = 0,
        tls: bool = False,
        profile: str = "hub",
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        self.profile = profile
        # Routes answered by the catch-all 404 (tests may change the set, e.g. to serve a lfs-less listing).
        self.missing_routes: set[str] = set(MIRROR_MISSING_ROUTES) if profile == "mirror" else set()
        # A mirror that publishes no hash at all (tests set it, with "tree" in `missing_routes`): revision
        # info lists bare `siblings` (`?blobs=true` ignored) and /resolve's ETag is an MD5, no git id.
        self.publishes_hashes = True
        self.tls = tls
        self._tls_context: ssl.SSLContext | None = None  # shared by every origin, Xet ones included
        self._tls_dir: str | None = None
        self._ca_file: str | None = None
        self.page_size = page_size
        self.lfs_threshold = lfs_threshold
        self.max_lifetime = max_lifetime
        self.bandwidth_per_connection: float | None = None
        self.link: SharedLink | None = None  # an uplink every connection shares (`SharedLink(rate)`)
        self.cdn_url_ttl = 3600.0  # lifetime of the signed CDN URLs handed out in 302s
        self.rate_limiter: RateLimiter | None = None  # the Hub's rate limits (ratelimit.py); None: off
        self._ports = (port, cdn_port)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._tokens: dict[str, _Token] = {}
        self._users: dict[str, str] = {}  # name -> fullname
        self._lfs_blobs: dict[str, bytes] = {}
        self._tree_listings: dict[tuple[str, str, bool], list[str]] = {}  # see _tree_paths
        self._records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._secret = secrets.token_bytes(16)
        self._api: ServerRunner | None = None
        self._cdn: ServerRunner | None = None
        self.xet = XetService(self)
        self._stopped = False

    # --------------------------------------------------------------------------------------- lifecycle
    def start(self) -> HubEmulator:
        """Bind both servers on 127.0.0.1 and serve in daemon threads (idempotent)."""
        if self._api is not None:
            return self
        context = self._tls_context = self._make_tls() if self.tls else None
        api = LoopbackServer(_HubHandler, self._ports[0], owner=self, origin="api", ssl_context=context)
        cdn = LoopbackServer(_HubHandler, self._ports[1], owner=self, origin="cdn", ssl_context=context)
        self._api = ServerRunner(api, self.max_lifetime, "hubemu-api")
        self._cdn = ServerRunner(cdn, 0, "hubemu-cdn")
        self._cdn.start()
        self._api.start(on_expire=self.stop)
        return self

    def stop(self) -> None:
        """Stop both servers and cut their open connections (idempotent)."""
        self._stopped = True
        for runner in (self._api, self._cdn):
            if runner is not None:
                runner.stop()
        self.xet.stop()
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)

    def _make_tls(self) -> ssl.SSLContext:
        """A fresh CA (PEM written to a private temp dir) and a server context with its leaf certificate."""
        import trustme  # only TLS needs it; the plain emulator stays standard library only

        ca = trustme.CA(organization_name="hubemu test CA")
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self._tls_dir = tempfile.mkdtemp(prefix="hubemu-tls-")
        self._ca_file = f"{self._tls_dir}/ca.pem"
        ca.cert_pem.write_to_path(self._ca_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(["http/1.1"])
        leaf.configure_cert(context)
        return context

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        if self._api is None:
            raise RuntimeError("HubEmulator not started")
        return f"{self.scheme}://127.0.0.1:{self._api.port}"

    @property
    def cdn_url(self) -> str:
        if self._cdn is None:
            raise RuntimeError("HubEmulator not started")
        return f"{self.scheme}://127.0.0.1:{self._cdn.port}"

    @property
    def ca_file(self) -> str:
        """Path of the CA certificate (PEM) that signed both origins' certificate (tls=True, started only).

        Point SSL_CERT_FILE at it, or `ssl.create_default_context(cafile=hub.ca_file)`. Removed by `stop()`.
        """
        if not self.tls:
            raise RuntimeError("HubEmulator was created without tls=True: it has no CA file")
        if self._ca_file is None:
            raise RuntimeError("HubEmulator not started")
        return self._ca_file

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts this emulator's CA (and nothing else)."""
        return ssl.create_default_context(cafile=self.ca_file)

    @property
    def tls_handshakes(self) -> list[HandshakeRecord]:
        """Every TLS handshake attempt on any origin, oldest first (`record.ok`, `record.error`)."""
        records: list[HandshakeRecord] = []
        for server in self._servers():
            records.extend(server.handshakes)
        return sorted(records, key=lambda r: r.time)

    # ------------------------------------------------------------------------------------ repos & users
    def create_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        gated: bool | str = False,
        private: bool = False,
        owner: str | None = None,
        xet: bool = False,
    ) -> Repo:
        """Create an empty repo (no commits). `owner` defaults to the namespace of `repo_id`.

        `xet=True`: a Xet-enabled repo, whose LFS files are stored in Xet (`Repo.commit`'s `xet=` decides per
        file)."""
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id!r} already exists")
            repo = Repo(self, repo_id, repo_type, gated, private, owner or repo_id.split("/")[0], xet=xet)
            self._repos[key] = repo
            return repo

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            return self._repos[(repo_type, repo_id)]

    def delete_repo(self, repo_id: str, repo_type: str = "model") -> None:
        with self._lock:
            del self._repos[(repo_type, repo_id)]

    def add_user(
        self,
        name: str,
        token: str,
        role: str = "read",
        can_read_gated: bool = True,
        fullname: str | None = None,
    ) -> None:
        """Register a user and one of its tokens (call again to give a user more tokens)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        with self._lock:
            self._users[name] = fullname or name.capitalize()
            self._tokens[token] = _Token(name, role, can_read_gated)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            if token in self._tokens:
                self._tokens[token].revoked = True

    def _repos_named(self, repo_id: str, repo_type: str | None) -> list[Repo]:
        with self._lock:
            found = [r for (t, i), r in self._repos.items() if i == repo_id and repo_type in (None, t)]
        if not found:
            raise KeyError(f"no repo {repo_id!r}" + (f" of type {repo_type}" if repo_type else ""))
        return found

    def grant_gated(
        self, repo_id: str, user: str, status: str = "accepted", repo_type: str | None = None
    ) -> None:
        """Record a gated-access decision ("accepted", "pending"; "rejected"/None removes it)."""
        for repo in self._repos_named(repo_id, repo_type):
            with self._lock:
                if status in ("accepted", "pending"):
                    repo.grants[user] = status
                else:
                    repo.grants.pop(user, None)

    def add_member(self, repo_id: str, user: str, repo_type: str | None = None) -> None:
        """Let `user` see a private repo (and bypass gating), like an org member."""
        for repo in self._repos_named(repo_id, repo_type):
            with self._lock:
                repo.members.add(user)

    def _auto_lfs(self, path: str, size: int) -> bool:
        dot = path.rfind(".")
        return size >= self.lfs_threshold or (dot > path.rfind("/") and path[dot:].lower() in LFS_SUFFIXES)

    # --------------------------------------------------------------------------------------- counters
    @property
    def requests(self) -> list[RequestRecord]:
        with self._records_lock:
            return [copy.copy(r) for r in self._records]

    def count(
        self,
        origin: str | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        kind: str | None = None,
    ) -> int:
        """Number of recorded requests matching every given filter."""
        return sum(
            1
            for r in self.requests
            if (origin is None or r.origin == origin)
            and (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path)
            and (kind is None or r.kind == kind)
        )

    def bytes_served(self, path_contains: str | None = None) -> int:
        """Body bytes sent for file GETs (API /resolve and CDN)."""
        return sum(
            r.body_bytes
            for r in self.requests
            if r.method == "GET" and r.kind == "file" and (path_contains is None or path_contains in r.path)
        )

    def reset_counters(self) -> None:
        with self._records_lock:
            self._records.clear()
        for server in self._servers():
            server.handshakes.clear()

    def _servers(self) -> list[LoopbackServer]:
        return [r.server for r in (self._api, self._cdn) if r is not None] + self.xet.servers()

    def _record(self, rec: RequestRecord) -> None:
        with self._records_lock:
            self._records.append(rec)

    # ---------------------------------------------------------------------------------------- faults
    def inject(self, fault: Fault) -> Fault:
        """Append a fault rule (checked in insertion order); returned so tests can read `fired`."""
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def _take_fault(self, rec: RequestRecord, kind: str) -> Fault | None:
        with self._faults_lock:
            for f in self._faults:
                if f.kind != kind or f.exhausted:
                    continue
                if f.origin is not None and f.origin != rec.origin:
                    continue
                if f.method is not None and f.method.upper() != rec.method:
                    continue
                if f.match is not None and not re.search(f.match, rec.path):
                    continue
                f.fired += 1
                return f
        return None

    # --------------------------------------------------------------------------------------- routing
    def _route(self, rec: RequestRecord, body: bytes) -> _Response:
        if rec.origin == "cdn":
            return self._route_cdn(rec)
        if rec.origin in XET_ORIGINS:
            return self.xet.route(rec, body)
        token = self._token_of(rec)
        if "authorization" in rec.headers and (token is None or token.revoked):
            return _error(401, None, INVALID_CREDENTIALS)
        segs = rec.path.split("/")[1:]
        if segs and segs[0] == "api":
            return self._route_api(rec, segs[1:], token, body)
        return self._route_resolve(rec, segs, token)

    def _token_of(self, rec: RequestRecord) -> _Token | None:
        """The registered token the request's `Authorization: Bearer` carries (revoked ones too), else None."""
        scheme, _, value = rec.headers.get("authorization", "").strip().partition(" ")
        with self._lock:
            return self._tokens.get(value.strip()) if scheme.lower() == "bearer" else None

    def _rate_verdict(self, rec: RequestRecord, client_ip: str) -> Verdict | None:
        """Count the request in the rate limiter, if on: a live token counts for its user, else for the IP."""
        limiter = self.rate_limiter
        if limiter is None:
            return None
        token = self._token_of(rec)
        user = token.user if token is not None and not token.revoked else None
        return limiter.admit(rec.origin, rec.path, user, client_ip)

    def _find_repo(self, repo_type: str, segs: list[str]) -> tuple[Repo | None, str, list[str]]:
        """Split `org/name/rest...` (or a legacy one-segment id) into (repo, repo_id, rest)."""
        with self._lock:
            if len(segs) >= 2:
                rid = f"{unquote(segs[0])}/{unquote(segs[1])}"
                if (repo_type, rid) in self._repos:
                    return self._repos[(repo_type, rid)], rid, segs[2:]
            if segs:
                rid1 = unquote(segs[0])
                if (repo_type, rid1) in self._repos:
                    return self._repos[(repo_type, rid1)], rid1, segs[1:]
        if len(segs) >= 2 and segs[1] not in _API_SUBRESOURCES:
            return None, f"{unquote(segs[0])}/{unquote(segs[1])}", segs[2:]
        return None, unquote(segs[0]) if segs else "", segs[1:]

    @staticmethod
    def _split_rev(repo: Repo, segs: list[str]) -> tuple[str, list[str]]:
        """First segment is the (percent-encoded) revision; also accept unencoded revisions containing '/'."""
        if not segs:
            return "main", []
        first = unquote(segs[0])
        if repo.resolve(first) is None:
            for k in range(2, len(segs) + 1):
                candidate = unquote("/".join(segs[:k]))
                if repo.resolve(candidate) is not None:
                    return candidate, segs[k:]
        return first, segs[1:]

    def _web_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"

    def _check_access(
        self, repo: Repo | None, repo_type: str, repo_id: str, token: _Token | None, gate: bool
    ) -> _Response | None:
        """Visibility (private/unknown) always; gating only when `gate` (auth-check and /resolve)."""
        user = token.user if token else None
        with self._lock:
            visible = repo is not None and (not repo.private or user == repo.owner or user in repo.members)
            if not visible or repo is None:
                return _error(401 if token is None else 404, "RepoNotFound", "Repository not found")
            if not gate or not repo.gated or user == repo.owner or user in repo.members:
                return None
            grant = repo.grants.get(user) if user else None
        kind = repo_type
        if token is None:
            return _error(
                401,
                "GatedRepo",
                f"Access to {kind} {repo_id} is restricted. You must have access "
                "to it and be authenticated to access it. Please log in.",
            )
        if token.role == "fineGrained" and not token.can_read_gated:
            return _error(
                403,
                None,
                "Please enable access to public gated repositories in your fine-grained "
                "token settings to view this repository.",
            )
        if grant == "accepted":
            return None
        if grant == "pending":
            return _error(
                403,
                "GatedRepo",
                f"Your request to access {kind} {repo_id} is awaiting a review from the repo authors.",
            )
        return _error(
            403,
            "GatedRepo",
            f"Access to {kind} {repo_id} is restricted and you are not in the "
            f"authorized list. Visit {self._web_url(repo_type, repo_id)} to ask for access.",
        )

    # ------------------------------------------------------------------------------------------- /api
    @property
    def is_mirror(self) -> bool:
        return self.profile == "mirror"

    def _route_api(self, rec: RequestRecord, segs: list[str], token: _Token | None, body: bytes) -> _Response:
        method = rec.method
        if segs[:1] == ["whoami-v2"] and "whoami-v2" in self.missing_routes:
            return _error(404, "RepoNotFound", MIRROR_CATCH_ALL)
        if segs == ["whoami-v2"] and method in ("GET", "HEAD"):
            return self._whoami(token)
        if segs == ["agent-harnesses"] and method in ("GET", "HEAD"):
            return _json(200, AGENT_HARNESSES)
        if not segs or segs[0] not in _TYPE_PLURALS:
            return _error(404, None, "Not Found")
        repo_type = _TYPE_PLURALS[segs[0]]
        repo, repo_id, rest = self._find_repo(repo_type, segs[1:])
        if not repo_id:
            return _error(404, None, "Not Found")
        sub = rest[0] if rest else ""
        if sub in self.missing_routes:
            return _error(404, "RepoNotFound", MIRROR_CATCH_ALL)
        if (sub, method) not in {
            ("", "GET"),
            ("", "HEAD"),
            ("revision", "GET"),
            ("revision", "HEAD"),
            ("tree", "GET"),
            ("refs", "GET"),
            ("auth-check", "GET"),
            ("paths-info", "POST"),
            ("commits", "GET"),
            (TOKEN_ROUTE, "GET"),
        }:
            return _error(404, None, "Not Found")
        gate = sub in ("auth-check", TOKEN_ROUTE)  # the token route reads files: gated like /resolve
        denied = self._check_access(repo, repo_type, repo_id, token, gate=gate)
        if denied is not None or repo is None:
            return denied or _error(404, "RepoNotFound", "Repository not found")
        if sub == "auth-check":
            if rest[1:2] == ["write"] and not (
                token
                and token.role in ("write", "fineGrained")
                and (token.user == repo.owner or token.user in repo.members)
            ):
                return _error(403, None, "You don't have write access to this repository.")
            return _json(200, {})
        if sub == "refs":
            return self._refs(repo, rec.query)
        rev, tail = self._split_rev(repo, rest[1:]) if sub else ("main", [])
        commit = repo.get_commit(rev)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if sub in ("", "revision"):
            return self._repo_info(repo, commit, rec.query)
        if sub == "tree" and self.is_mirror and len(rest) == 2 and not rec.path.endswith("/"):
            # Like olah: the listing of the root lives at `tree/{rev}/`, a 307 away.
            location = f"{self.url}{rec.path}/" + (f"?{urlencode(rec.query)}" if rec.query else "")
            return _Response(307, {"Location": location})
        if sub == "tree":
            return self._tree(rec, repo, commit, rev, unquote("/".join(tail)).strip("/"))
        if sub == "paths-info":
            return self._paths_info(rec, commit, body)
        if sub == TOKEN_ROUTE:
            return self.xet.read_token(repo)
        return self._commits(rec, repo, commit)

    def _whoami(self, token: _Token | None) -> _Response:
        if token is None:
            return _error(401, None, INVALID_CREDENTIALS)
        access: dict[str, Any] = {
            "displayName": token.display_name,
            "role": token.role,
            "createdAt": "2024-01-01T00:00:00.000Z",
        }
        if token.role == "fineGrained":
            access["fineGrained"] = {"canReadGatedRepos": token.can_read_gated, "scoped": [], "global": []}
        with self._lock:
            fullname = self._users.get(token.user, token.user)
        return _json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(token.user.encode()).hexdigest()[:24],
                "name": token.user,
                "fullname": fullname,
                "email": f"{token.user}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "avatarUrl": "",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": access},
            },
        )

    def _repo_info(self, repo: Repo, commit: Commit, query: dict[str, str]) -> _Response:
        blobs = query.get("blobs", "").lower() in ("1", "true") and self.publishes_hashes
        siblings = []
        for path in sorted(commit.files):
            entry: dict[str, Any] = {"rfilename": path}
            if blobs:
                f = commit.files[path]
                entry["size"] = f.size
                entry["blobId"] = f.oid
                if f.lfs and not self.is_mirror:
                    entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(entry)
        info: dict[str, Any] = {"_id": repo.object_id, "id": repo.repo_id}
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        info.update(
            {
                "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else repo.owner,
                "sha": commit.sha,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.created),
                "private": repo.private,
                "gated": repo.gated,
                "disabled": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
                "usedStorage": sum(f.size for f in commit.files.values()),
            }
        )
        if repo.repo_type == "space":
            info.update({"sdk": "static", "subdomain": repo.repo_id.replace("/", "-").lower()})
        return _json(200, info)

    def _entry(self, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        f = commit.files.get(path)
        if f is None:
            out: dict[str, Any] = {"type": "directory", "oid": commit.dir_oids[path], "size": 0, "path": path}
        else:
            out = {"type": "file", "oid": f.oid, "size": f.size, "path": path}
            if f.lfs and not self.is_mirror:  # a mirror's listing: `oid` is the pointer's git sha1, no more
                out["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            if f.xet_hash and not self.is_mirror:
                out["xetHash"] = f.xet_hash
        if expand:
            out["lastCommit"] = {
                "id": commit.last_changed.get(path, commit.sha),
                "title": commit.title,
                "date": _iso(commit.date),
            }
            if f is not None:
                out["securityFileStatus"] = {
                    "status": "safe",
                    "pickleImportScan": None,
                    "avScan": {"virusFound": False, "virusNames": None},
                }
        return out

    def _paginate(
        self, rec: RequestRecord, items: Sequence[Any], render: Callable[[Any], Any] | None = None
    ) -> _Response:
        """Cursor pagination with a GitHub-style `Link: <...>; rel="next"` header, like the Hub.

        `render`: applied to the items of the page only, so a page costs its own size, not the listing's.
        """
        start = 0
        cursor = rec.query.get("cursor")
        if cursor:
            try:
                start = int(base64.urlsafe_b64decode(cursor.encode() + b"==").decode())
            except ValueError:
                return _error(400, None, "Invalid cursor")
        size = max(1, int(self.page_size))
        page = items[start : start + size]
        if render:
            page = [render(item) for item in page]
        headers: dict[str, str] = {}
        if start + size < len(items):
            nxt = base64.urlsafe_b64encode(str(start + size).encode()).decode().rstrip("=")
            params = {k: v for k, v in rec.query.items() if k != "cursor"}
            params["cursor"] = nxt
            headers["Link"] = f'<{self.url}{rec.path}?{urlencode(params)}>; rel="next"'
        return _json(200, page, headers)

    def _tree(self, rec: RequestRecord, repo: Repo, commit: Commit, rev: str, subpath: str) -> _Response:
        recursive = rec.query.get("recursive", "").lower() in ("1", "true")
        expand = rec.query.get("expand", "").lower() in ("1", "true")
        if subpath and subpath not in commit.dir_oids:
            return _error(404, "EntryNotFound", f'{subpath} does not exist on "{rev}"')
        return self._paginate(
            rec, self._tree_paths(commit, subpath, recursive), lambda p: self._entry(commit, p, expand)
        )

    def _tree_paths(self, commit: Commit, subpath: str, recursive: bool) -> list[str]:
        """The sorted paths a tree listing returns, built once per tree rather than for every page.

        Rebuilding them per page made listing N files cost O(N²/page_size). Keyed by the tree oid,
        which fixes the set of paths (commits are immutable).
        """
        key = (commit.tree_oid, subpath, recursive)
        with self._lock:
            paths = self._tree_listings.get(key)
        if paths is None:
            prefix = f"{subpath}/" if subpath else ""
            paths = [
                p for p in list(commit.files) + [d for d in commit.dir_oids if d] if p.startswith(prefix)
            ]
            if not recursive:
                paths = [p for p in paths if "/" not in p[len(prefix) :]]
            paths.sort()
            with self._lock:
                if len(self._tree_listings) >= 64:  # bounded: drop the oldest
                    self._tree_listings.pop(next(iter(self._tree_listings)))
                self._tree_listings[key] = paths
        return paths

    def _paths_info(self, rec: RequestRecord, commit: Commit, body: bytes) -> _Response:
        ctype = rec.headers.get("content-type", "")
        if "json" in ctype:
            data = json.loads(body or b"{}")
            paths, expand = list(data.get("paths", [])), bool(data.get("expand", False))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[-1].lower() in ("1", "true")
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files or (p and p in commit.dir_oids):
                out.append(self._entry(commit, p, expand))
        return _json(200, out)

    def _refs(self, repo: Repo, query: dict[str, str]) -> _Response:
        def ref(name: str, full: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": sha}

        branches = repo.branches
        data: dict[str, Any] = {
            "branches": [
                ref(n, f"refs/heads/{n}", s)
                for n, s in sorted(branches.items())
                if not n.startswith("refs/pr/")
            ],
            "converts": [],
            "tags": [ref(n, f"refs/tags/{n}", s) for n, s in sorted(repo.tags.items())],
        }
        if query.get("include_prs", "").lower() in ("1", "true"):
            data["pullRequests"] = [
                ref(n, n, s) for n, s in sorted(branches.items()) if n.startswith("refs/pr/")
            ]
        return _json(200, data)

    def _commits(self, rec: RequestRecord, repo: Repo, commit: Commit) -> _Response:
        items = [
            {
                "id": c.sha,
                "title": c.title,
                "message": "",
                "date": _iso(c.date),
                "authors": [{"user": repo.owner, "avatar": ""}],
            }
            for c in repo.history(commit.sha)
        ]
        return self._paginate(rec, items)

    # --------------------------------------------------------------------------------------- /resolve
    def _route_resolve(self, rec: RequestRecord, segs: list[str], token: _Token | None) -> _Response:
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces") and "resolve" in segs[2:4]:
            repo_type, segs = _TYPE_PLURALS[segs[0]], segs[1:]
        if "resolve" not in segs[1:3] or rec.method not in ("GET", "HEAD"):
            return _error(404, None, "Not Found")
        idx = segs.index("resolve", 1)
        repo, repo_id, _ = self._find_repo(repo_type, segs[:idx])
        denied = self._check_access(repo, repo_type, repo_id, token, gate=True)
        if denied is not None or repo is None:
            return denied or _error(404, "RepoNotFound", "Repository not found")
        rev, tail = self._split_rev(repo, segs[idx + 1 :])
        commit = repo.get_commit(rev)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        path = unquote("/".join(tail))
        f = commit.files.get(path)
        if f is None:
            return _error(
                404, "EntryNotFound", f'{path} does not exist on "{rev}"', {"X-Repo-Commit": commit.sha}
            )
        name = path.rsplit("/", 1)[-1]
        disposition = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        if f.xet_hash and not self.is_mirror:  # to the CAS bridge, with what a Xet client needs instead
            xet_headers = self.xet.resolve_redirect(repo, commit, f)
            return _Response(
                302,
                {
                    **xet_headers,
                    "X-Repo-Commit": commit.sha,
                    "ETag": f'"{f.oid}"',
                    "Content-Disposition": disposition,
                    "Vary": "Origin, Accept-Encoding",
                },
            )
        if f.lfs and f.sha256 and not self.is_mirror:
            return _Response(
                302,
                {
                    "Location": self._signed_cdn_url(f.sha256),
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "X-Repo-Commit": commit.sha,
                    "ETag": f'"{f.oid}"',
                    "Content-Disposition": disposition,
                    "Vary": "Origin, Accept-Encoding",
                },
            )
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        etag = f.oid if self.publishes_hashes else hashlib.md5(f.data, usedforsecurity=False).hexdigest()
        return _Response(
            200,
            {
                "ETag": f'"{etag}"',
                "X-Repo-Commit": commit.sha,
                "Content-Type": ctype,
                "Content-Disposition": disposition,
                "Vary": "Origin, Accept-Encoding",
            },
            f.data,
            ranged=not self.is_mirror,
            chunked=self.is_mirror,
        )

    # -------------------------------------------------------------------------------------------- CDN
    def _signature(self, sha256: str, expires: str) -> str:
        return hmac.new(self._secret, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _signed_cdn_url(self, sha256: str) -> str:
        expires = str(int(time.time() + self.cdn_url_ttl))
        return f"{self.cdn_url}/lfs/{sha256}?expires={expires}&signature={self._signature(sha256, expires)}"

    def _route_cdn(self, rec: RequestRecord) -> _Response:
        segs = rec.path.split("/")[1:]
        if len(segs) != 2 or segs[0] != "lfs" or rec.method not in ("GET", "HEAD"):
            return _Response(404, {"Content-Type": "text/plain"}, b"Not Found")
        sha256 = segs[1]
        expires, sig = rec.query.get("expires", ""), rec.query.get("signature", "")
        if not expires.isdigit() or not hmac.compare_digest(sig, self._signature(sha256, expires)):
            return _Response(403, {"Content-Type": "text/plain"}, b"AccessDenied: bad signature")
        if int(expires) < time.time():
            return _Response(403, {"Content-Type": "text/plain"}, b"AccessDenied: Request has expired")
        with self._lock:
            data = self._lfs_blobs.get(sha256)
        if data is None:
            return _Response(404, {"Content-Type": "text/plain"}, b"NoSuchKey")
        return _Response(
            200,
            {
                "ETag": f'"{sha256}"',
                "Content-Type": "application/octet-stream",
                "Cache-Control": "public, max-age=604800, immutable",
            },
            data,
            ranged=True,
        )

    # --------------------------------------------------------------------------------------- helpers
    def file_url(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> str:
        """The /resolve URL huggingface_hub would request for a file (revision percent-encoded)."""
        rev = quote(revision, safe="")
        return f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}/resolve/{rev}/{quote(path)}"

    def cdn_file_url(self, sha256: str) -> str:
        """A freshly signed CDN URL for an LFS blob (what the 302 Location would contain)."""
        return self._signed_cdn_url(sha256)
