"""The one module that speaks the Hub's API (revision info, tree listings, refs, auth-check, whoami).

It builds URLs and parses answers; all HTTP goes through `net.session.Http` (retries, proxies).
Paths the server sends are checked before anyone uses them to build a filesystem path.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from prefetch import settings
from prefetch.auth import Token
from prefetch.cache import TYPE_PREFIX, safe_relpath
from prefetch.errors import HttpStatusError, IntegrityError, UnusableAnswer, hub_http_error
from prefetch.net.connection import Headers
from prefetch.net.retry import is_retryable
from prefetch.net.session import Http
from prefetch.terminal import printable

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RepoInfo:
    commit: str
    gated: bool | str  # False, "auto" or "manual"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    git_sha1: str  # the git object id (for an LFS file: of its pointer)
    sha256: str | None  # LFS content hash

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_sha1


class HubApi:
    """Typed calls to one Hub endpoint."""

    def __init__(self, http: Http) -> None:
        self.http = http
        self.endpoint = http.endpoint

    def _get_json(self, url: str, token: Token | None) -> tuple[Any, Headers]:
        with _typed_errors():
            return self.http.get_json(url, token)

    def _api(self, repo: str, repo_type: str, *tail: str) -> str:
        return "/".join([self.endpoint, "api", TYPE_PREFIX[repo_type], repo, *tail])

    def repo_info(self, repo: str, repo_type: str, revision: str, token: Token | None) -> RepoInfo:
        """Resolve `revision` (branch, tag or commit) to a commit. Says nothing about gated access."""
        data, _ = self._get_json(self._api(repo, repo_type, "revision", quote(revision, safe="")), token)
        commit = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(commit, str) or not COMMIT_RE.fullmatch(commit):
            raise IntegrityError(f"{repo}@{revision}: the Hub answered without a valid commit hash")
        return RepoInfo(commit=commit, gated=data.get("gated") or False)

    def list_files(self, repo: str, repo_type: str, commit: str, token: Token | None) -> list[RemoteFile]:
        """Every file at `commit`, with size and hashes, following the listing's pagination."""
        url: str | None = self._api(repo, repo_type, "tree", commit) + "?recursive=true&expand=false"
        files: list[RemoteFile] = []
        seen: set[str] = set()
        while url:
            if url in seen or len(seen) >= settings.MAX_LISTING_PAGES:
                why = "repeats a page" if url in seen else f"has more than {settings.MAX_LISTING_PAGES} pages"
                raise UnusableAnswer(f"{repo}@{commit}: the Hub's file listing {why}; refused")
            seen.add(url)
            data, headers = self._get_json(url, token)
            if not isinstance(data, list):
                raise IntegrityError(f"{repo}@{commit}: unexpected tree listing from the Hub")
            files += [
                _remote_file(repo, item)
                for item in data
                if isinstance(item, dict) and item.get("type") == "file"
            ]
            url = _next_link(headers.get("link", ""))
        _check_coexisting(repo, files)
        return sorted(files, key=lambda f: f.path)

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

    def whoami(self, token: Token) -> dict[str, Any]:
        """The token's account and scopes, in one attempt: whoami is strictly rate-limited on the Hub."""
        with (
            _typed_errors(),
            contextlib.closing(self.http.open(f"{self.endpoint}/api/whoami-v2", token)) as r,
        ):
            data = r.json()
        return data if isinstance(data, dict) else {}

    def head_file(self, repo: str, repo_type: str, commit: str, path: str, token: Token | None) -> None:
        """Can `token` read this file? (A HEAD, for mirrors without the auth-check endpoint.)"""
        with _typed_errors():
            self.http.head(self.file_url(repo, repo_type, commit, path), token)

    def file_url(self, repo: str, repo_type: str, commit: str, path: str) -> str:
        prefix = "" if repo_type == "model" else f"{TYPE_PREFIX[repo_type]}/"
        return f"{self.endpoint}/{prefix}{repo}/resolve/{commit}/{quote(path)}"


@contextlib.contextmanager
def _typed_errors() -> Iterator[None]:
    """The Hub's final error answers (not those still worth a retry) as typed errors (`errors.hub_http_error`).

    Retryable ones (429, 5xx) stay `HttpStatusError`: once retries are spent they are network failures.
    """
    try:
        yield
    except HttpStatusError as e:
        if is_retryable(e):
            raise
        headers = {"x-error-code": e.error_code, "x-error-message": e.message}
        raise hub_http_error(e.url, e.status, headers.get, b"") from e


def _remote_file(repo: str, item: dict[str, Any]) -> RemoteFile:
    path, size, oid = item.get("path"), item.get("size"), item.get("oid")
    if not isinstance(path, str):
        raise IntegrityError(f"{repo}: tree listing entry without a path")
    safe_relpath(path)
    lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else None
    sha256 = lfs.get("oid") if lfs else None
    if lfs and isinstance(lfs.get("size"), int):
        size = lfs["size"]
    if not isinstance(size, int) or size < 0 or not isinstance(oid, str) or not COMMIT_RE.fullmatch(oid):
        raise IntegrityError(f"{repo}: tree listing entry for {path!r} lacks a valid size or object id")
    if sha256 is not None and not (isinstance(sha256, str) and SHA256_RE.fullmatch(sha256)):
        raise IntegrityError(f"{repo}: tree listing entry for {path!r} has an invalid LFS sha256")
    return RemoteFile(path=path, size=size, git_sha1=oid, sha256=sha256)


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
