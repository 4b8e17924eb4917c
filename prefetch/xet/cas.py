"""Talking to the Hub's Xet storage: the CAS token of a repo revision, and file reconstructions.

- **Token** (hub-docs `docs/xet/auth.md`): `GET {endpoint}/api/{type}s/{repo}/xet-read-token/{commit}` with
  the Hub token, an API call like any other to the Hub (paced in its `api` bucket), answers the CAS URL,
  a CAS token and its expiry (JSON; huggingface_hub reads the same in `X-Xet-*` headers, taken when the
  body lacks them). One per repo revision and Hub token, kept until `REFRESH_MARGIN` before it expires
  (huggingface_hub's 60 s, or half the life it was issued with when that is shorter: a token that lives
  less than two margins would otherwise be asked for again before each use). `CasAccess` is the token as
  a credential: it goes to the CAS's origin only; the presigned xorb URLs get none.
- **Reconstruction** (`api.md`, `download-protocol.md`): a file's terms (chunk ranges of xorbs, in file
  order, with their unpacked lengths) and, per xorb, the ranges to fetch: presigned URLs with the byte
  range (`url_range`, inclusive) each is signed for. The v1 form is used: one signed range per URL,
  which is what the engine fetches (one Range per request), and the only form the batch route answers.
  Whole files of a repo revision are asked in batches (`GET /v1/reconstructions?file_id=...`, as xet-core
  sends it; api.md documents a POST); a file's missing byte ranges (a resumed download) one by one with
  `Range`, whose answer starts at the chunk holding the first byte (`offset_into_first_range`).

Every answer is checked before use (`_parse`): hashes, chunk and byte ranges, lengths that add up to
the file, a fetch range for every term. A refused CAS token (401) is asked for again.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prefetch.auth import Secrets, Token
from prefetch.errors import HubHttpError, StaleUrl, UnusableAnswer, XetUnavailable
from prefetch.hfhub import api_path
from prefetch.net.session import Http
from prefetch.urls import endpoint_problem

TOKEN_ROUTE = "xet-read-token"
REFRESH_MARGIN = 60.0  # seconds before a CAS token's expiry when it is asked for again
MAX_BATCH_FILES = (
    64  # file ids per batch reconstruction: ~4.7 kB of query (request lines are capped near 8 kB)
)
MAX_TEXT = 64_000  # auth.md: token and CAS URL lengths' upper bound
_HASH = re.compile(r"[0-9a-f]{64}")
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")
MAX_CHUNK_INDEX = 1 << 24  # chunk indices in a xorb (8,192 in practice): anything past this is not a xorb's
MAX_STORED_CHUNK = 8 + 2 * 128 * 1024  # a chunk's header and stored bytes, at most (`chunks.MAX_STORED`)


@dataclass(frozen=True)
class CasAccess:
    """A CAS token: the `Authorization` for the CAS's own origin, nothing for any other URL."""

    cas_url: str
    token: str = field(repr=False)
    expires: float  # unix seconds
    margin: float  # asked for again this long before `expires`

    def authorization(self, url: str) -> str | None:
        return f"Bearer {self.token}" if _origin(url) == _origin(self.cas_url) else None

    def fresh(self, now: float) -> bool:
        return now < self.expires - self.margin


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


class XetTokens:
    """The run's CAS tokens, one per repo revision and Hub token (see the module docstring)."""

    def __init__(self, http: Http, secrets: Secrets | None, clock: Callable[[], float] = time.time) -> None:
        self._http = http
        self._secrets = secrets
        self._clock = clock
        self._tokens: dict[tuple[str, str, str, str], CasAccess] = {}
        self._locks: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(
        self,
        repo_type: str,
        repo: str,
        commit: str,
        hub_token: Token | None,
        refused: CasAccess | None = None,
    ) -> CasAccess:
        """The CAS token of this revision: the one kept while it is fresh and was not `refused` (the CAS
        answered 401 to it), else a new one. XetUnavailable when the endpoint has no token route."""
        key = (repo_type, repo, commit, hub_token.value if hub_token else "")
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one request per revision however many threads want its token at once
            kept = self._tokens.get(key)
            if kept is not None and kept is not refused and kept.fresh(self._clock()):
                return kept
            access = self._ask(repo_type, repo, commit, hub_token)
            self._tokens[key] = access
            return access

    def _ask(self, repo_type: str, repo: str, commit: str, hub_token: Token | None) -> CasAccess:
        url = f"{self._http.endpoint}/api/{api_path(repo_type)}/{repo}/{TOKEN_ROUTE}/{commit}"
        try:
            data, headers = self._http.get_json(url, hub_token)
        except HubHttpError as e:
            raise XetUnavailable(f"its Xet token route answered {e.status}") from e
        body = data if isinstance(data, dict) else {}
        cas_url = body.get("casUrl", headers.get("x-xet-cas-url"))
        token = body.get("accessToken", headers.get("x-xet-access-token"))
        raw = body.get("exp", headers.get("x-xet-token-expiration"))  # unix seconds: a number, or its digits
        expires = int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 20 else raw
        if not (
            isinstance(cas_url, str)
            and len(cas_url) <= MAX_TEXT
            and endpoint_problem(cas_url) is None
            and isinstance(token, str)
            and len(token) <= MAX_TEXT
            and _TOKEN_TEXT.fullmatch(token)
            and type(expires) is int
        ):
            raise UnusableAnswer(f"{repo}: the Xet token route's answer lacks a CAS URL, token or expiry")
        if self._secrets is not None:
            self._secrets.add(token)
        life = expires - self._clock()
        return CasAccess(cas_url.rstrip("/"), token, float(expires), min(REFRESH_MARGIN, max(0.0, life / 2)))


# ------------------------------------------------------------------------------------------ reconstructions
@dataclass(frozen=True, slots=True)
class Term:
    """Chunks [start, end) of a xorb, which unpack to `length` bytes of the file."""

    xorb: str
    start: int
    end: int
    length: int


@dataclass(frozen=True, slots=True)
class XorbRange:
    """Chunks [start, end) of a xorb, served at `url` as its bytes [first, last] (the Range it is signed for)."""

    xorb: str
    start: int
    end: int
    url: str
    first: int
    last: int

    @property
    def key(self) -> tuple[str, int, int]:
        """The same chunks, whatever URL an answer gave for them."""
        return self.xorb, self.start, self.end

    def holds(self, term: Term) -> bool:
        return term.xorb == self.xorb and self.start <= term.start and term.end <= self.end


@dataclass(frozen=True)
class Reconstruction:
    """A file's terms from `at`, the file offset of the first term's first byte, and where each is fetched."""

    at: int
    terms: list[Term]
    ranges: list[XorbRange]  # for each term, the range that holds it (several terms may share one)


class Cas:
    """Reconstruction calls to the CAS with a revision's token (`access`: the token to use, after a
    refused one when given), retried as every request of the run."""

    def __init__(self, http: Http) -> None:
        self._http = http

    def file(
        self,
        access: Callable[[CasAccess | None], CasAccess],
        file_id: str,
        size: int,
        window: tuple[int, int],
    ) -> Reconstruction:
        """The reconstruction of bytes [window) of a file (the whole file: no Range asked)."""
        start, end = window
        whole = window == (0, size)
        headers = {} if whole else {"range": f"bytes={start}-{end - 1}"}
        data = self._get(
            access, f"/v1/reconstructions/{file_id}", headers, f"the reconstruction of {file_id}"
        )
        if not isinstance(data, dict):
            raise UnusableAnswer(f"the CAS's reconstruction of {file_id} is not an object")
        offset = data.get("offset_into_first_range", 0)
        if not isinstance(offset, int) or offset < 0 or (whole and offset):
            raise UnusableAnswer(f"the CAS's reconstruction of {file_id} starts at a bad offset")
        ranges = _xorb_ranges(data.get("fetch_info"), file_id)
        return _placed(file_id, start - offset, data.get("terms"), ranges, size, window)

    def files(
        self, access: Callable[[CasAccess | None], CasAccess], sizes: dict[str, int]
    ) -> dict[str, Reconstruction]:
        """The whole reconstructions of the files `sizes` names (at most MAX_BATCH_FILES), in one call."""
        query = "&".join(f"file_id={file_id}" for file_id in sizes)
        data = self._get(
            access, f"/v1/reconstructions?{query}", {}, f"the reconstructions of {len(sizes)} files"
        )
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            raise UnusableAnswer("the CAS's batch reconstruction has no `files` object")
        ranges = _xorb_ranges(data.get("fetch_info"), "a batch")
        terms = {str(k).lower(): v for k, v in files.items()}
        return {
            file_id: _placed(file_id, 0, terms.get(file_id), ranges, size, (0, size))
            for file_id, size in sizes.items()
        }

    def _get(
        self, access: Callable[[CasAccess | None], CasAccess], path: str, headers: dict[str, str], what: str
    ) -> Any:
        refused: list[CasAccess] = []

        def attempt() -> Any:
            token = access(refused[-1] if refused else None)
            try:
                with contextlib.closing(self._http.open(token.cas_url + path, token, headers)) as response:
                    return response.json()
            except HubHttpError as e:
                if e.status == 401 and len(refused) < 2:  # expired early (or revoked): a new token, once more
                    refused.append(token)
                    raise StaleUrl(
                        f"the CAS refused its token asking {what}; asked the Hub for a new one"
                    ) from e
                raise

        return self._http.retry.call(attempt, f"GET {what} from the Xet CAS")


def _xorb_ranges(value: object, what: str) -> dict[str, list[XorbRange]]:
    """A v1 `fetch_info`, checked: per xorb hash, its ranges (chunks, signed URL, signed bytes)."""
    if not isinstance(value, dict):
        raise UnusableAnswer(f"the CAS's reconstruction of {what} has no `fetch_info` object")
    out: dict[str, list[XorbRange]] = {}
    for xorb, entries in value.items():
        xorb = str(xorb).lower()
        if not _HASH.fullmatch(xorb) or not isinstance(entries, list):
            raise UnusableAnswer(f"the CAS's reconstruction of {what} names a bad xorb")
        out[xorb] = [_xorb_range(xorb, e, what) for e in entries]
    return out


def _xorb_range(xorb: str, entry: object, what: str) -> XorbRange:
    item = entry if isinstance(entry, dict) else {}
    chunks, signed, url = item.get("range"), item.get("url_range"), item.get("url")
    start, end = _pair(chunks)
    first, last = _pair(signed)
    if (
        not 0 <= start < end <= MAX_CHUNK_INDEX
        or not 0 <= first <= last
        or last - first + 1 > (end - start) * MAX_STORED_CHUNK
        or not isinstance(url, str)
        or len(url) > MAX_TEXT
        or urlsplit(url).scheme not in ("http", "https")
        or not urlsplit(url).hostname
    ):
        raise UnusableAnswer(f"the CAS's reconstruction of {what} has a bad fetch range for xorb {xorb}")
    return XorbRange(xorb, start, end, url, first, last)


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, dict):
        start, end = value.get("start"), value.get("end")
        if type(start) is int and type(end) is int:
            return start, end
    return -1, -1


def _placed(
    file_id: str,
    at: int,
    value: object,
    ranges: dict[str, list[XorbRange]],
    size: int,
    window: tuple[int, int],
) -> Reconstruction:
    """The terms of `file_id` that start at file offset `at`, checked: they cover `window` and stay
    within the file's `size`, and each has a fetch range that holds it."""
    if not isinstance(value, list):
        raise UnusableAnswer(f"the CAS's reconstruction of {file_id} has no terms")
    terms = [_term(item, file_id) for item in value]
    total = sum(t.length for t in terms)
    if at < 0 or at + total < window[1] or at + total > size or (terms and at + terms[0].length <= window[0]):
        raise UnusableAnswer(f"the CAS's reconstruction of {file_id} does not add up to its {size} bytes")
    holding = []
    for term in terms:
        found = next((r for r in ranges.get(term.xorb, ()) if r.holds(term)), None)
        if found is None:
            raise UnusableAnswer(f"the CAS's reconstruction of {file_id} has no fetch range for a term")
        holding.append(found)
    return Reconstruction(at, terms, holding)


def _term(item: object, file_id: str) -> Term:
    value = item if isinstance(item, dict) else {}
    xorb, length = str(value.get("hash", "")).lower(), value.get("unpacked_length")
    start, end = _pair(value.get("range"))
    if (
        not _HASH.fullmatch(xorb)
        or not 0 <= start < end <= MAX_CHUNK_INDEX
        or type(length) is not int
        or not 0 < length <= (end - start) * 128 * 1024
    ):
        raise UnusableAnswer(f"the CAS's reconstruction of {file_id} has a bad term")
    return Term(xorb, start, end, length)
