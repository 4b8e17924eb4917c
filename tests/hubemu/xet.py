"""Xet storage on the test Hub: the CAS, its transfer host, the CAS bridge and the Hub's token route.

Why: on the Hub, the LFS files of a Xet-enabled repo are served through Xet (hub-docs `docs/xet/*.md`) and
huggingface_hub + hf_xet download them that way, never touching the CDN. The test Hub answers like it:

- the tree listing gives such a file a `xetHash`; `/resolve` answers 302 to the **CAS bridge** (another
  host, serving the whole file with Range: what a client without Xet gets) with `X-Xet-Hash` and a `Link`
  header naming the token route (`rel="xet-auth"`) and the CAS reconstruction (`rel="xet-reconstruction-info"`);
- `GET /api/{type}s/{repo}/xet-read-token/{rev}` (same access rules as the repo's files) answers
  `{accessToken, exp, casUrl}` in JSON (what hf_xet reads when it refreshes) and in the headers
  `X-Xet-Access-Token`, `X-Xet-Token-Expiration`, `X-Xet-Cas-Url` (what huggingface_hub reads);
- the **CAS** (bearer token, expiring: an unknown or expired one gets 401) answers
  `GET /v1/reconstructions/{file_id}` (terms + `fetch_info`) and `GET /v2/reconstructions/{file_id}` (terms +
  `xorbs`, the multi-range form hf_xet 1.8 asks first), both with an optional `Range` (file bytes; a
  reconstruction may start mid-chunk: `offset_into_first_range`), the batch form, and `HEAD /v1/files/{id}`,
  `HEAD /v1/xorbs/default/{hash}`;
- the **transfer host** serves xorb bytes at presigned URLs (HMAC-signed, expiring after `url_ttl`) that
  refuse (403, as a CDN refuses a bad signature) a request without `Range`, or naming a range that is not
  exactly one of the URL's signed ranges (`url_range` in v1, the `bytes` of a v2 entry); several ranges in
  one request come back as `multipart/byteranges`.

Request records carry the origins "cas", "bridge" and "transfer" (`hub.xet.counts()` sums them up); faults
apply to them as to the CDN (`Fault(origin="transfer", ...)`).

Where the specification and the real client (hf_xet 1.8 / xet-core, huggingface_hub 2.5) differ, the test
Hub does what the client needs (see also tests/hubemu/xetformat.py for the format):

- **Token response**: auth.md specifies a JSON body; huggingface_hub 2.5 reads only the headers
  `X-Xet-Cas-Url`, `X-Xet-Access-Token`, `X-Xet-Token-Expiration` and fails without them, while hf_xet reads
  the JSON body when it refreshes a token itself: both are sent.
- **Token lifetime**: huggingface_hub treats a token as expired 60 s before `exp`, hf_xet 30 s before; a
  token shorter-lived than that is fetched again for every download (huggingface_hub) and refreshed before
  each CAS call (hf_xet), which is how a test sees refreshes without waiting minutes.
- **Batch reconstruction**: api.md specifies `POST /v1/reconstructions` with a JSON array of
  `{prefix, hash}`; xet-core sends `GET /v1/reconstructions?file_id=..&file_id=..`. Both are answered.
- **Multi-range URLs**: api.md has clients send all the ranges of a v2 entry in one request (answered
  `multipart/byteranges`) and refuses only bytes outside the signed set; hf_xet 1.8 asks for each range of
  an entry in a request of its own. Both are served; a range that is not exactly a signed one (a part of
  one, or two merged) is refused, which is stricter than api.md's wording and what v1's `url_range` requires.
- **Presigned URL refusal**: a transfer URL answered 403 makes hf_xet ask the CAS for new URLs (it retries
  on 403), so a refused or expired URL costs a client a reconstruction call, not the download.

Not emulated: uploads (xorb/shard POST, hf_xet 1.8's `/v1/xorb-grants/...`, write tokens), global dedup
queries (`/v1/chunks/...` is a 404), gzip/zstd on the JSON, xorbs shared by several files (each file's new
chunks go to xorbs of its own).
Assumed (not observable here): a CAS token only reads files of the repo it was issued for (others: 404);
the bridge's ETag is the file's sha256, like the CDN's.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from . import hub as hubmod
from ._httpbase import LoopbackServer, ServerRunner
from .xetformat import (
    COMPRESSION_POLICIES,
    MAX_XORB_BYTES,
    MAX_XORB_CHUNKS,
    ChunkedContent,
    Xorb,
    build_xorb,
    chunked,
    file_hash,
    hash_from_string,
    hash_string,
    serialize_chunk,
    trim_cache,
)

if TYPE_CHECKING:
    from .hub import HubEmulator, RequestRecord, _Response
    from .store import Commit, Repo, StoredFile

XET_ORIGINS = ("cas", "bridge", "transfer")
TOKEN_ROUTE = "xet-read-token"
_RANGES_RE = re.compile(r"^bytes=(\d+-\d+(?:,\d+-\d+)*)$")
_FILE_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d+)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_MAX_BATCH = 1000  # file ids in one batch reconstruction request


@dataclass(frozen=True)
class Term:
    """Chunks [start, end) of one xorb (raw hash): a piece of a file's reconstruction."""

    xorb: bytes
    start: int
    end: int


@dataclass(frozen=True)
class XetFile:
    """A Xet-backed file: its hash, its bytes (for the bridge) and its reconstruction."""

    hash: bytes
    sha256: str
    data: bytes
    terms: tuple[Term, ...]
    term_starts: tuple[int, ...]  # file offset where each term starts, then the file size

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def hash_string(self) -> str:
        return hash_string(self.hash)

    @property
    def xorbs(self) -> list[str]:
        """The xorbs this file reads from (hash strings), in order of first use."""
        return list(dict.fromkeys(hash_string(t.xorb) for t in self.terms))


@dataclass
class _CasToken:
    repo: tuple[str, str]  # (repo_type, repo_id)
    expires: float


def _ranges(value: str) -> list[tuple[int, int]]:
    """The ranges of a `bytes=a-b,c-d` value (inclusive ends, a <= b); [] when it is not one."""
    m = _RANGES_RE.match(value)
    if not m:
        return []
    pairs = [(int(a), int(b)) for a, _, b in (part.partition("-") for part in m.group(1).split(","))]
    return pairs if all(a <= b for a, b in pairs) else []


def _sign(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()[:32]


def _text(status: int, message: str) -> _Response:
    return hubmod._Response(status, {"Content-Type": "text/plain; charset=utf-8"}, message.encode())


class XetService:
    """The Xet side of one HubEmulator (`hub.xet`): stored xorbs and files, tokens, and three origins.

    Settings tests may change: `token_ttl` and `url_ttl` (seconds), `compression` (one of
    COMPRESSION_POLICIES, for files stored afterwards), `max_xorb_bytes`/`max_xorb_chunks` (small values make
    small files span several xorbs), `max_ranges_per_url` (v2 splits a xorb's ranges over several URLs past it).
    """

    def __init__(self, hub: HubEmulator) -> None:
        self._hub = hub
        self.token_ttl = 3600.0
        self.url_ttl = 3600.0
        self.compression = "auto"
        self.max_xorb_bytes = MAX_XORB_BYTES
        self.max_xorb_chunks = MAX_XORB_CHUNKS
        self.max_ranges_per_url = 256
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()  # one file built at a time: dedup sees every chunk stored before
        self._xorbs: dict[bytes, Xorb] = {}
        self._files: dict[bytes, XetFile] = {}
        self._chunks: dict[bytes, tuple[bytes, int]] = {}  # chunk hash -> (xorb, index): what dedup finds
        self._repo_files: dict[tuple[str, str], set[bytes]] = {}
        self._tokens: dict[str, _CasToken] = {}
        self._secret = secrets.token_bytes(16)
        self._runners: dict[str, ServerRunner] = {}

    # ------------------------------------------------------------------------------------ servers
    def _runner(self, origin: str) -> ServerRunner:
        """The server of `origin`, started with the others on first use (plain tests never start them)."""
        with self._lock:
            if not self._runners:
                if self._hub._api is None or self._hub._stopped:
                    raise RuntimeError("HubEmulator not started")
                for name in XET_ORIGINS:
                    server = LoopbackServer(
                        hubmod._HubHandler,
                        0,
                        owner=self._hub,
                        origin=name,
                        ssl_context=self._hub._tls_context,
                    )
                    runner = ServerRunner(server, 0, f"hubemu-xet-{name}")
                    runner.start()
                    self._runners[name] = runner
            return self._runners[origin]

    def _url(self, origin: str) -> str:
        return f"{self._hub.scheme}://127.0.0.1:{self._runner(origin).port}"

    @property
    def cas_url(self) -> str:
        return self._url("cas")

    @property
    def bridge_url(self) -> str:
        return self._url("bridge")

    @property
    def transfer_url(self) -> str:
        return self._url("transfer")

    def servers(self) -> list[LoopbackServer]:
        with self._lock:
            return [r.server for r in self._runners.values()]

    def stop(self) -> None:
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.stop()

    # ------------------------------------------------------------------------------------ storage
    def store(self, stored: StoredFile, repo: Repo) -> StoredFile:
        """Store an LFS file of `repo` in Xet; the same file with its `xet_hash`."""
        if stored.sha256 is None:
            raise ValueError("only LFS files are stored in Xet")
        xet_file = self.add_file(stored.data, stored.sha256)
        with self._lock:
            self._repo_files.setdefault((repo.repo_type, repo.repo_id), set()).add(xet_file.hash)
        return replace(stored, xet_hash=xet_file.hash_string)

    def add_file(self, data: bytes, sha256: str) -> XetFile:
        """Chunk `data`, deduplicate its chunks against every xorb stored so far, pack the new ones into new
        xorbs (at most `max_xorb_bytes`/`max_xorb_chunks` each) and record the file's reconstruction."""
        if self.compression not in COMPRESSION_POLICIES:
            raise ValueError(f"compression must be one of {COMPRESSION_POLICIES}, got {self.compression!r}")
        content = chunked(data, sha256)
        fhash = file_hash(list(zip(content.hashes, content.sizes, strict=True)))
        with self._build_lock:
            found = self._files.get(fhash)
            if found is not None:
                return found
            plan, new_xorbs = _XorbPacker(self, content, data).pack()
            for xorb in new_xorbs:
                self._xorbs.setdefault(xorb.hash, xorb)
                for index, chunk in enumerate(xorb.chunk_hashes):
                    self._chunks.setdefault(chunk, (xorb.hash, index))
            terms: list[Term] = []
            for xorb_ref, index in plan:
                xorb_hash = new_xorbs[xorb_ref].hash if isinstance(xorb_ref, int) else xorb_ref
                last = terms[-1] if terms else None
                if last is not None and last.xorb == xorb_hash and last.end == index:
                    terms[-1] = Term(xorb_hash, last.start, index + 1)
                else:
                    terms.append(Term(xorb_hash, index, index + 1))
            starts = [0]
            for term in terms:
                starts.append(starts[-1] + self._xorbs[term.xorb].unpacked_length(term.start, term.end))
            xet_file = XetFile(fhash, sha256, data, tuple(terms), tuple(starts))
            self._files[fhash] = xet_file
        trim_cache()
        return xet_file

    def file(self, xet_hash: str) -> XetFile:
        """A stored file by its hash string (`repo.file_info(rev, path).xet_hash`)."""
        return self._files[hash_from_string(xet_hash)]

    def xorb(self, xorb_hash: str) -> Xorb:
        return self._xorbs[hash_from_string(xorb_hash)]

    # ----------------------------------------------------------------------------------- counters
    def counts(self) -> dict[str, int]:
        """Xet requests seen so far: token route calls, reconstruction calls, xorb GETs, bridge requests."""
        records = self._hub.requests
        return {
            "token": sum(1 for r in records if r.origin == "api" and f"/{TOKEN_ROUTE}/" in r.path),
            "reconstruction": sum(1 for r in records if r.origin == "cas" and "/reconstructions" in r.path),
            "xorb": sum(1 for r in records if r.origin == "transfer" and r.method == "GET"),
            "bridge": sum(1 for r in records if r.origin == "bridge"),
        }

    def expire_tokens(self) -> None:
        """Make every CAS token issued so far expired (as if their lifetime had passed)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires = 0.0

    # ---------------------------------------------------------------------------- Hub-side hooks
    def resolve_redirect(self, repo: Repo, commit: Commit, stored: StoredFile) -> dict[str, str]:
        """Headers of `/resolve`'s 302 for a Xet file (besides X-Repo-Commit, ETag...): the bridge URL,
        X-Xet-Hash and the Link header huggingface_hub reads the token route from."""
        assert stored.xet_hash is not None and stored.sha256 is not None
        plural = f"{repo.repo_type}s"
        token_url = f"{self._hub.url}/api/{plural}/{repo.repo_id}/{TOKEN_ROUTE}/{commit.sha}"
        info_url = f"{self.cas_url}/v1/reconstructions/{stored.xet_hash}"
        expires = str(int(time.time() + self.url_ttl))
        signature = _sign(self._secret, "bridge", repo.object_id, stored.xet_hash, expires)
        location = (
            f"{self.bridge_url}/xet-bridge-us/{repo.object_id}/{stored.xet_hash}"
            f"?Expires={expires}&Signature={signature}"
        )
        return {
            "Location": location,
            "X-Xet-Hash": stored.xet_hash,
            "Link": f'<{token_url}>; rel="xet-auth", <{info_url}>; rel="xet-reconstruction-info"',
            "X-Linked-Etag": f'"{stored.sha256}"',
            "X-Linked-Size": str(stored.size),
        }

    def read_token(self, repo: Repo) -> _Response:
        """The token route's answer (access already checked): a new CAS token for this repo."""
        token = "xet_" + secrets.token_urlsafe(32)
        expires = time.time() + self.token_ttl
        with self._lock:
            self._tokens[token] = _CasToken((repo.repo_type, repo.repo_id), expires)
        cas = self.cas_url
        exp = int(expires)
        headers = {"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(exp)}
        return hubmod._json(200, {"accessToken": token, "exp": exp, "casUrl": cas}, headers)

    # ------------------------------------------------------------------------------------ routing
    def route(self, rec: RequestRecord, body: bytes) -> _Response:
        if rec.origin == "cas":
            return self._route_cas(rec, body)
        if rec.origin == "transfer":
            return self._route_transfer(rec)
        return self._route_bridge(rec)

    def _authorized(self, rec: RequestRecord) -> _CasToken | None:
        scheme, _, value = rec.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            token = self._tokens.get(value.strip())
        return token if token is not None and time.time() < token.expires else None

    def _readable(self, token: _CasToken, file_id: str) -> XetFile | None:
        try:
            raw = hash_from_string(file_id)
        except ValueError:
            return None
        with self._lock:
            if raw not in self._repo_files.get(token.repo, set()):
                return None
        return self._files.get(raw)

    def _route_cas(self, rec: RequestRecord, body: bytes) -> _Response:
        token = self._authorized(rec)
        if token is None:
            return _text(401, "Unauthorized")
        segs = rec.path.split("/")[1:]
        if (
            rec.method == "GET"
            and len(segs) == 3
            and segs[0] in ("v1", "v2")
            and segs[1] == "reconstructions"
        ):
            if not re.fullmatch(r"[0-9a-fA-F]{64}", segs[2]):
                return _text(400, "Invalid file id")
            xet_file = self._readable(token, segs[2])
            if xet_file is None:
                return _text(404, "File not found")
            return self._reconstruction(xet_file, rec.range, v2=segs[0] == "v2")
        if segs == ["v1", "reconstructions"] and rec.method in ("GET", "POST"):
            return self._batch(rec, body, token)
        if rec.method == "HEAD" and len(segs) == 3 and segs[:2] == ["v1", "files"]:
            xet_file = self._readable(token, segs[2])
            if xet_file is None:
                return _text(404, "File not found")
            return hubmod._Response(200, {"Content-Length": str(xet_file.size)})
        if rec.method == "HEAD" and len(segs) == 4 and segs[:3] == ["v1", "xorbs", "default"]:
            try:
                xorb = self._xorbs.get(hash_from_string(segs[3]))
            except ValueError:
                return _text(400, "Invalid hash")
            if xorb is None:
                return _text(404, "Xorb not found")
            return hubmod._Response(200, {"Content-Length": str(xorb.size)})
        return _text(404, "Not Found")

    def _batch(self, rec: RequestRecord, body: bytes, token: _CasToken) -> _Response:
        if rec.method == "GET":
            ids = [v for k, v in parse_qsl(rec.query_string) if k == "file_id"]
        else:
            try:
                keys = json.loads(body or b"null")
                ids = [str(k["hash"]) for k in keys if k.get("prefix") == "default"]
            except (ValueError, TypeError, KeyError, AttributeError):
                return _text(400, "Malformed body")
        if not ids or len(ids) > _MAX_BATCH:
            return _text(400, f"Give 1 to {_MAX_BATCH} file ids")
        files: dict[str, Any] = {}
        pieces: list[Term] = []
        for file_id in dict.fromkeys(ids):
            xet_file = self._readable(token, file_id)
            if xet_file is None:
                return _text(404, "File not found")
            files[file_id] = [self._term_json(t) for t in xet_file.terms]
            pieces.extend(xet_file.terms)
        return hubmod._json(200, {"files": files, "fetch_info": self._fetch_info_v1(pieces)})

    def _reconstruction(self, xet_file: XetFile, range_header: str | None, v2: bool) -> _Response:
        first, last = 0, xet_file.size - 1
        if range_header is not None:
            m = _FILE_RANGE_RE.match(range_header)
            if not m:
                return _text(400, "Invalid Range")
            first = int(m.group(1))
            if m.group(2):
                last = min(last, int(m.group(2)))
            if first >= xet_file.size or first > last:
                return _text(416, "Range Not Satisfiable")
        offset, pieces = self._pieces(xet_file, first, last)
        answer: dict[str, Any] = {
            "offset_into_first_range": offset,
            "terms": [self._term_json(t) for t in pieces],
        }
        if v2:
            answer["xorbs"] = self._xorbs_v2(pieces)
        else:
            answer["fetch_info"] = self._fetch_info_v1(pieces)
        return hubmod._json(200, answer)

    def _pieces(self, xet_file: XetFile, first: int, last: int) -> tuple[int, list[Term]]:
        """The terms covering file bytes [first, last], trimmed to the chunks holding them, and how many
        bytes of the first one come before `first`."""
        starts = xet_file.term_starts
        pieces: list[Term] = []
        offset = 0
        t = bisect.bisect_right(starts, first) - 1
        while 0 <= t < len(xet_file.terms) and starts[t] <= last:
            term = xet_file.terms[t]
            unpacked = self._xorbs[term.xorb].unpacked_starts
            base = starts[t] - unpacked[term.start]  # file offset of the xorb's unpacked byte 0, in this term
            lo = max(term.start, bisect.bisect_right(unpacked, first - base) - 1)
            hi = min(term.end, bisect.bisect_right(unpacked, last - base))
            if not pieces:
                offset = first - (base + unpacked[lo])
            pieces.append(Term(term.xorb, lo, hi))
            t += 1
        return offset, pieces

    def _term_json(self, term: Term) -> dict[str, Any]:
        return {
            "hash": hash_string(term.xorb),
            "unpacked_length": self._xorbs[term.xorb].unpacked_length(term.start, term.end),
            "range": {"start": term.start, "end": term.end},
        }

    @staticmethod
    def _merged(pieces: Sequence[Term]) -> dict[bytes, list[tuple[int, int]]]:
        """Per xorb, the chunk ranges the pieces need, overlapping or adjacent ones merged, in order."""
        wanted: dict[bytes, list[tuple[int, int]]] = {}
        for piece in pieces:
            wanted.setdefault(piece.xorb, []).append((piece.start, piece.end))
        merged: dict[bytes, list[tuple[int, int]]] = {}
        for xorb, ranges in wanted.items():
            out: list[tuple[int, int]] = []
            for start, end in sorted(ranges):
                if out and start <= out[-1][1]:
                    out[-1] = (out[-1][0], max(out[-1][1], end))
                else:
                    out.append((start, end))
            merged[xorb] = out
        return merged

    def _signed_url(self, xorb_hex: str, byte_ranges: Sequence[tuple[int, int]]) -> str:
        signed = "bytes=" + ",".join(f"{a}-{b}" for a, b in byte_ranges)
        expires = str(int(time.time() + self.url_ttl))
        signature = _sign(self._secret, "xorb", xorb_hex, signed, expires)
        return (
            f"{self.transfer_url}/xorb/default/{xorb_hex}?X-Xet-Signed-Range={quote(signed, safe='')}"
            f"&Expires={expires}&Signature={signature}"
        )

    def _fetch_info_v1(self, pieces: Sequence[Term]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for xorb_raw, ranges in self._merged(pieces).items():
            xorb = self._xorbs[xorb_raw]
            entries = []
            for start, end in ranges:
                first, last = xorb.chunk_bytes(start, end)
                entries.append(
                    {
                        "range": {"start": start, "end": end},
                        "url": self._signed_url(hash_string(xorb_raw), [(first, last)]),
                        "url_range": {"start": first, "end": last},
                    }
                )
            out[hash_string(xorb_raw)] = entries
        return out

    def _xorbs_v2(self, pieces: Sequence[Term]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for xorb_raw, ranges in self._merged(pieces).items():
            xorb = self._xorbs[xorb_raw]
            entries = []
            for i in range(0, len(ranges), max(1, self.max_ranges_per_url)):
                group = ranges[i : i + max(1, self.max_ranges_per_url)]
                byte_ranges = [xorb.chunk_bytes(s, e) for s, e in group]
                entries.append(
                    {
                        "url": self._signed_url(hash_string(xorb_raw), byte_ranges),
                        "ranges": [
                            {"chunks": {"start": s, "end": e}, "bytes": {"start": a, "end": b}}
                            for (s, e), (a, b) in zip(group, byte_ranges, strict=True)
                        ],
                    }
                )
            out[hash_string(xorb_raw)] = entries
        return out

    def _route_transfer(self, rec: RequestRecord) -> _Response:
        segs = rec.path.split("/")[1:]
        if rec.method not in ("GET", "HEAD") or len(segs) != 3 or segs[:2] != ["xorb", "default"]:
            return _text(404, "Not Found")
        signed = rec.query.get("X-Xet-Signed-Range", "")
        expires = rec.query.get("Expires", "")
        good = _sign(self._secret, "xorb", segs[2], signed, expires)
        if not expires.isdigit() or not hmac.compare_digest(rec.query.get("Signature", ""), good):
            return _text(403, "AccessDenied: bad signature")
        if int(expires) < time.time():
            return _text(403, "AccessDenied: Request has expired")
        try:
            xorb = self._xorbs.get(hash_from_string(segs[2]))
        except ValueError:
            xorb = None
        if xorb is None:
            return _text(404, "NoSuchKey")
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if rec.range is not None and self._hub._take_fault(rec, "ignore_range") is not None:
            return hubmod._Response(200, headers, xorb.body)
        allowed = _ranges(signed)
        asked = _ranges((rec.range or "").replace(" ", ""))
        if not asked or not allowed or any(r not in allowed for r in asked):
            return _text(403, "AccessDenied: the Range header must name signed ranges")
        if any(b >= xorb.size for _, b in asked):
            return _text(416, "Range Not Satisfiable")
        ranges = asked
        if len(ranges) == 1:
            ((a, b),) = ranges
            headers["Content-Range"] = f"bytes {a}-{b}/{xorb.size}"
            return hubmod._Response(206, headers, xorb.object_range(a, b))
        boundary = secrets.token_hex(16)
        parts: list[bytes | memoryview] = []
        for a, b in ranges:
            head = (
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {a}-{b}/{xorb.size}\r\n\r\n"
            )
            parts += [head.encode(), xorb.object_range(a, b), b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        return hubmod._Response(206, headers, b"".join(parts))

    def _route_bridge(self, rec: RequestRecord) -> _Response:
        segs = rec.path.split("/")[1:]
        if rec.method not in ("GET", "HEAD") or len(segs) != 3 or segs[0] != "xet-bridge-us":
            return _text(404, "Not Found")
        expires = rec.query.get("Expires", "")
        good = _sign(self._secret, "bridge", segs[1], segs[2], expires)
        if not expires.isdigit() or not hmac.compare_digest(rec.query.get("Signature", ""), good):
            return _text(403, "AccessDenied: bad signature")
        if int(expires) < time.time():
            return _text(403, "AccessDenied: Request has expired")
        try:
            xet_file = self._files.get(hash_from_string(segs[2]))
        except ValueError:
            xet_file = None
        if xet_file is None:
            return _text(404, "NoSuchKey")
        headers = {"ETag": f'"{xet_file.sha256}"', "Content-Type": "application/octet-stream"}
        return hubmod._Response(200, headers, xet_file.data, ranged=True)


class _XorbPacker:
    """Packs one file's chunks: each chunk is found in a stored xorb (dedup), found earlier in this file,
    or new; new chunks go, in file order, into new xorbs of at most the service's limits."""

    def __init__(self, service: XetService, content: ChunkedContent, data: bytes) -> None:
        self._service = service
        self._content = content
        self._view = memoryview(data)
        self._policy = service.compression
        self._limits = (service.max_xorb_bytes, service.max_xorb_chunks)
        # per chunk of the file: (the hash of a stored xorb, or the number of a new one; index in that xorb)
        self.plan: list[tuple[bytes | int, int]] = []
        self.new_xorbs: list[Xorb] = []
        self._local: dict[bytes, tuple[bytes | int, int]] = {}
        self._open: list[int] = []  # chunk numbers (in the file) of the xorb being filled
        self._open_serialized: list[bytes] = []
        self._open_bytes = 0

    def _cache_key(self, first: int) -> tuple[str, int, int, int]:
        return (self._policy, *self._limits, first)

    def pack(self) -> tuple[list[tuple[bytes | int, int]], list[Xorb]]:
        hashes = self._content.hashes
        ends = self._content.ends
        i = 0
        while i < len(hashes):
            known = self._service._chunks.get(hashes[i]) or self._local.get(hashes[i])
            if known is not None:
                self.plan.append(known)
                i += 1
                continue
            if not self._open:
                cached = self._content.runs.get(self._cache_key(i))
                if cached is not None and self._all_new(i, cached):
                    self._take(cached)
                    i += cached.num_chunks
                    continue
            start = ends[i - 1] if i else 0
            serialized = serialize_chunk(self._view[start : ends[i]], self._policy)
            max_bytes, max_chunks = self._limits
            n = len(self._open) + 1
            if self._open and (self._open_bytes + len(serialized) > max_bytes or n > max_chunks):
                self._close()
            ref = (len(self.new_xorbs), len(self._open))
            self._local[hashes[i]] = ref
            self.plan.append(ref)
            self._open.append(i)
            self._open_serialized.append(serialized)
            self._open_bytes += len(serialized)
            i += 1
        self._close()
        return self.plan, self.new_xorbs

    def _all_new(self, first: int, xorb: Xorb) -> bool:
        run = self._content.hashes[first : first + xorb.num_chunks]
        return (
            tuple(run) == xorb.chunk_hashes
            and len(set(run)) == len(run)
            and not any(h in self._service._chunks or h in self._local for h in run)
        )

    def _take(self, xorb: Xorb) -> None:
        number = len(self.new_xorbs)
        for index, chunk in enumerate(xorb.chunk_hashes):
            self._local[chunk] = (number, index)
            self.plan.append((number, index))
        self.new_xorbs.append(xorb)

    def _close(self) -> None:
        if not self._open:
            return
        hashes = [self._content.hashes[i] for i in self._open]
        sizes = [self._content.sizes[i] for i in self._open]
        xorb = build_xorb(hashes, sizes, self._open_serialized)
        if self._open[-1] - self._open[0] + 1 == len(self._open):  # a run of the file: reusable next time
            self._content.runs.setdefault(self._cache_key(self._open[0]), xorb)
        self.new_xorbs.append(xorb)
        self._open, self._open_serialized, self._open_bytes = [], [], 0


def changed_revision(data: bytes, fraction: float = 0.1, seed: int = 0) -> bytes:
    """A new revision of `data` in which about `fraction` of its Xet chunks differ, the others being the same.

    8 bytes in the middle of each chosen chunk are inverted, so the chunk boundaries stay where they were (a
    boundary moves only if the gear hash matches within 71 positions of a change: about 1 chance in 900 per
    chunk). Committed to a Xet repo that holds `data`, the new file reuses the unchanged chunks from the old
    xorbs and stores the changed ones in new xorbs, as the Hub would.
    """
    content = chunked(data, hashlib.sha256(data).hexdigest())
    count = len(content.ends)
    rng = random.Random(seed)
    chosen = rng.sample(range(count), max(1, round(fraction * count))) if count else []
    out = bytearray(data)
    for i in chosen:
        start = content.ends[i - 1] if i else 0
        middle = (start + content.ends[i]) // 2
        piece = out[middle : middle + 8]
        out[middle : middle + len(piece)] = bytes(b ^ 0xFF for b in piece)
    return bytes(out)
