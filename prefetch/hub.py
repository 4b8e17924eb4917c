"""The one module that speaks the Hub's API (revision info, tree listings, refs, auth-check, whoami).

It builds URLs and parses answers; all HTTP goes through `net.session.Http` (retries, proxies, and the
one translation of error answers, `errors.hub_http_error`). Paths the server sends are checked before
anyone uses them to build a filesystem path.

Any Hub-compatible endpoint (the Hub, olah, an artifact manager's remote) must serve revision info and
/resolve, as huggingface_hub needs no more; the tree listing, auth-check, refs and whoami are optional
(`lacks_route`). Hashes come from the best source the endpoint publishes (see `RemoteFile`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from prefetch import settings
from prefetch.auth import Token
from prefetch.cache import check_relpath
from prefetch.errors import HubHttpError, IntegrityError, NotAHubError, UnusableAnswer
from prefetch.hfhub import api_path, url_prefix
from prefetch.net.connection import Headers
from prefetch.net.session import Http
from prefetch.terminal import printable

log = logging.getLogger("prefetch")

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# How an endpoint answers a route it does not implement (besides any 5xx): olah's catch-all is a 404 with
# `X-Error-Code: RepoNotFound`, others send a bare 404, 405 or 501.
ROUTE_MISSING_STATUS = frozenset({404, 405, 501})
HEAD_WORKERS = 8  # concurrent HEADs when only /resolve can tell sizes and hashes


def lacks_route(exc: BaseException) -> bool:
    """Is `exc` an endpoint saying it lacks an optional route? Only meaningful for a repo whose revision
    info just answered 200: then a 404 (whatever its X-Error-Code), 405, 501 or 5xx is not "not found"."""
    return isinstance(exc, HubHttpError) and (exc.status in ROUTE_MISSING_STATUS or exc.status >= 500)


@dataclass(frozen=True)
class RepoInfo:
    commit: str
    gated: bool | str  # False, "auto" or "manual"


@dataclass(frozen=True, slots=True)  # slots: a listing may hold 100k of them
class RemoteFile:
    """A file as the endpoint describes it. Its expected hash, best source first: the listing's
    `lfs.sha256` (or the revision info's), /resolve's `X-Linked-Etag` or a 64-hex `ETag` (`sha256`);
    else the listed git object id (`git_sha1`: the content's blob sha1, or for an LFS file on a mirror
    that omits `lfs`, its pointer's; the download accepts either, see `hashing.GitOidHash`); else nothing
    (both None): the bytes are hashed on first use. `xet_hash`: the listing's `xetHash` of an LFS file
    stored in Xet (the Xet hash string, 64 hex), which lets the download skip /resolve (`prefetch.xet`)."""

    path: str
    size: int
    git_sha1: str | None
    sha256: str | None
    xet_hash: str | None = None

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_sha1 or ""


class HubApi:
    """Typed calls to one Hub endpoint."""

    def __init__(self, http: Http, endpoint_name: str = "") -> None:
        self.http = http
        self.endpoint = http.endpoint
        self.endpoint_name = endpoint_name or self.endpoint  # how messages name it: `HF_ENDPOINT=https://...`
        self._whoami: dict[str, dict[str, Any] | None] = {}  # token value -> this run's answer (or None)
        self._whoami_lock = threading.Lock()

    def _get_json(self, url: str, token: Token | None) -> tuple[Any, Headers]:
        return self.http.get_json(url, token)

    def _api(self, repo: str, repo_type: str, *tail: str) -> str:
        return "/".join([self.endpoint, "api", api_path(repo_type), repo, *tail])

    def repo_info(self, repo: str, repo_type: str, revision: str, token: Token | None) -> RepoInfo:
        """Resolve `revision` (branch, tag or commit) to a commit. Says nothing about gated access."""
        url = self._api(repo, repo_type, "revision", quote(revision, safe=""))
        log.info("resolving %s %s@%s at %s", repo_type, repo, revision, self.endpoint)
        try:
            data, _ = self._get_json(url, token)
        except HubHttpError as e:
            not_a_hub = self._not_a_hub(url, e)
            if not_a_hub is None:
                raise
            raise not_a_hub from e
        commit = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(commit, str) or not COMMIT_RE.fullmatch(commit):
            raise IntegrityError(f"{repo}@{revision}: the Hub answered without a valid commit hash")
        return RepoInfo(commit=commit, gated=data.get("gated") or False)

    def _not_a_hub(self, url: str, error: HubHttpError) -> NotAHubError | None:
        """A 404 web page (no `X-Error-Code`, not JSON) where the Hub's API should be: wrong endpoint."""
        if error.status != 404 or error.error_code or "json" in error.content_type:
            return None
        return NotAHubError(
            f"{self.endpoint_name} does not answer like a Hugging Face Hub: GET {url} returned "
            f"{error.status} {error.content_type or 'without a content type'}; check HF_ENDPOINT, --endpoint "
            "and the manifest's `endpoint:`"
        )

    def list_files(self, repo: str, repo_type: str, commit: str, token: Token | None) -> list[RemoteFile]:
        """Every file at `commit`, with size and hashes: the tree listing (following its pagination), or on
        an endpoint without one, the revision info's `siblings` (and HEADs where those lack a size or hash)."""
        log.info("listing the files of %s %s@%s at %s", repo_type, repo, commit[:12], self.endpoint)
        try:
            files = self._tree(repo, repo_type, commit, token)
        except HubHttpError as e:
            if not lacks_route(e):
                raise
            files = self._siblings(repo, repo_type, commit, token)
        _check_coexisting(repo, files)
        return sorted(files, key=lambda f: f.path)

    def _tree(self, repo: str, repo_type: str, commit: str, token: Token | None) -> list[RemoteFile]:
        url: str | None = self._api(repo, repo_type, "tree", commit) + "?recursive=true&expand=false"
        files: list[RemoteFile] = []
        seen: set[str] = set()
        entries = 0
        while url:
            if url in seen or len(seen) >= settings.MAX_LISTING_PAGES:
                why = (
                    "repeats a page" if url in seen else f"has more than {settings.MAX_LISTING_PAGES:,} pages"
                )
                raise UnusableAnswer(f"{repo}@{commit}: the Hub's file listing {why}; refused")
            seen.add(url)
            data, headers = self._get_json(url, token)
            if not isinstance(data, list):
                raise IntegrityError(f"{repo}@{commit}: unexpected tree listing from {self.endpoint}")
            entries += len(data)
            if entries > settings.MAX_LISTING_ENTRIES:
                raise UnusableAnswer(
                    f"{repo}@{commit}: the Hub's file listing has more than {settings.MAX_LISTING_ENTRIES:,} "
                    "entries, ten times the most files the Hub recommends for a repo; refused"
                )
            files += [
                _remote_file(repo, item)
                for item in data
                if isinstance(item, dict) and item.get("type") == "file"
            ]
            url = _next_link(headers.get("link", ""))
        return files

    def _siblings(self, repo: str, repo_type: str, commit: str, token: Token | None) -> list[RemoteFile]:
        """The files revision info lists (`?blobs=true` adds sizes and ids where the endpoint supports it)."""
        data, _ = self._get_json(self._api(repo, repo_type, "revision", commit) + "?blobs=true", token)
        siblings = data.get("siblings") if isinstance(data, dict) else None
        if not isinstance(siblings, list):
            raise IntegrityError(f"{repo}@{commit}: {self.endpoint} lists neither a tree nor siblings")
        items = [
            {
                "path": s.get("rfilename"),
                "size": s.get("size"),
                "oid": s.get("blobId"),
                "lfs": _sibling_lfs(s),
            }
            for s in siblings
            if isinstance(s, dict)
        ]
        incomplete = [i for i in items if not isinstance(i["size"], int) or not (i["oid"] or i["lfs"])]
        if incomplete:
            with cf.ThreadPoolExecutor(max_workers=HEAD_WORKERS, thread_name_prefix="prefetch-head") as pool:
                heads = pool.map(
                    lambda i: self._resolve_headers(repo, repo_type, commit, i["path"], token), incomplete
                )
                for item, headers in zip(incomplete, heads, strict=True):
                    _complete_from_headers(item, headers)
        return [_remote_file(repo, item) for item in items]

    def _resolve_headers(
        self, repo: str, repo_type: str, commit: str, path: object, token: Token | None
    ) -> Headers | None:
        if not isinstance(path, str):
            return None  # _remote_file reports it
        check_relpath(path)
        return self.http.head(self.file_url(repo, repo_type, commit, path), token)

    def list_refs(self, repo: str, repo_type: str, token: Token | None) -> tuple[list[str], list[str]]:
        """(branches, tags), to suggest revisions when one is not found."""
        data, _ = self._get_json(self._api(repo, repo_type, "refs"), token)
        return (
            sorted(printable(str(b["name"])) for b in data.get("branches", []) if "name" in b),
            sorted(printable(str(t["name"])) for t in data.get("tags", []) if "name" in t),
        )

    def auth_check(self, repo: str, repo_type: str, token: Token | None) -> None:
        """Raises a HubHttpError when `token` cannot read the repo's files (gated, private...)."""
        self._get_json(self._api(repo, repo_type, "auth-check"), token)

    def whoami_once(self, token: Token) -> dict[str, Any] | None:
        """The token's account and scopes, asked at most once per token in this run and in one attempt:
        whoami is strictly rate-limited on the Hub, and only explains a failure (None: it would not say)."""
        with self._whoami_lock:
            if token.value not in self._whoami:
                try:
                    with contextlib.closing(self.http.open(f"{self.endpoint}/api/whoami-v2", token)) as r:
                        data = r.json()
                    self._whoami[token.value] = data if isinstance(data, dict) else {}
                except Exception:  # explanation only: any failure just means less detail
                    self._whoami[token.value] = None
            return self._whoami[token.value]

    def head_file(self, repo: str, repo_type: str, commit: str, path: str, token: Token | None) -> None:
        """Can `token` read this file? (A HEAD, for mirrors without the auth-check endpoint.)"""
        self.http.head(self.file_url(repo, repo_type, commit, path), token)

    def file_url(self, repo: str, repo_type: str, commit: str, path: str) -> str:
        return f"{self.endpoint}/{url_prefix(repo_type)}{repo}/resolve/{commit}/{quote(path)}"


def _sibling_lfs(sibling: dict[str, Any]) -> dict[str, Any] | None:
    """A sibling's `lfs` object in the tree listing's shape (`oid` for `sha256`)."""
    lfs = sibling.get("lfs")
    return {"oid": lfs.get("sha256"), "size": lfs.get("size")} if isinstance(lfs, dict) else None


def _complete_from_headers(item: dict[str, Any], headers: Headers | None) -> None:
    """Fill a sibling's missing size and hash from its /resolve HEAD: `X-Linked-Size`/`X-Linked-Etag` (the
    Hub's LFS redirect), else `Content-Length` and `ETag` (40 hex: a git object id; 64 hex: a sha256)."""
    if headers is None:
        return
    # A redirect's Content-Length is its own body's: only X-Linked-Size speaks for the file then.
    size = (
        headers.get("x-linked-size") or ("" if "location" in headers else headers.get("content-length")) or ""
    )
    if not isinstance(item["size"], int) and size.isdigit():
        item["size"] = int(size)
    linked = _etag_value(headers.get("x-linked-etag"))
    etag = _etag_value(headers.get("etag"))
    if item["lfs"] is None and SHA256_RE.fullmatch(linked or etag):
        item["lfs"] = {"oid": linked or etag}
    elif not item["oid"] and COMMIT_RE.fullmatch(etag):
        item["oid"] = etag


def _etag_value(header: str | None) -> str:
    value = (header or "").strip()
    return value.removeprefix("W/").strip('"').lower()


def _remote_file(repo: str, item: dict[str, Any]) -> RemoteFile:
    """A listing entry (tree listing, or siblings in its shape), checked: safe path, size, well-formed hashes."""
    path, size, oid = item.get("path"), item.get("size"), item.get("oid") or None
    if not isinstance(path, str):
        raise IntegrityError(f"{repo}: file listing entry without a path")
    check_relpath(path)
    lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else None
    sha256 = lfs.get("oid") if lfs else None
    if lfs and isinstance(lfs.get("size"), int):
        size = lfs["size"]
    if not isinstance(size, int) or size < 0:
        raise IntegrityError(f"{repo}: file listing entry for {path!r} lacks a valid size")
    if oid is not None and not (isinstance(oid, str) and COMMIT_RE.fullmatch(oid)):
        raise IntegrityError(f"{repo}: file listing entry for {path!r} has an invalid object id")
    if sha256 is not None and not (isinstance(sha256, str) and SHA256_RE.fullmatch(sha256)):
        raise IntegrityError(f"{repo}: file listing entry for {path!r} has an invalid LFS sha256")
    xet_hash = item.get("xetHash")
    if xet_hash is not None and not (isinstance(xet_hash, str) and SHA256_RE.fullmatch(xet_hash)):
        raise IntegrityError(f"{repo}: file listing entry for {path!r} has an invalid xetHash")
    # Only an LFS file's: its sha256 stays what the bytes are checked against.
    return RemoteFile(
        path=path, size=size, git_sha1=oid, sha256=sha256, xet_hash=xet_hash if sha256 else None
    )


def _check_coexisting(repo: str, files: list[RemoteFile]) -> None:
    """A snapshot cannot hold a file `a` and a file `a/b`, nor the same path twice: refuse such a listing."""
    paths = {f.path for f in files}
    if len(paths) != len(files):
        raise UnusableAnswer(f"{repo}: the Hub's file listing names a file twice; refused")
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in paths:
                raise UnusableAnswer(
                    f"{repo}: the Hub's file listing has both a file {printable(folder)!r} and "
                    f"{printable(path)!r} under it; refused"
                )


def _next_link(link_header: str) -> str | None:
    for part in link_header.split(","):
        match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if match:
            return match.group(1)
    return None
