"""One typed error hierarchy, and the one place that maps errors to exit codes.

Every failure prefetch reports on purpose is a `PrefetchError`; its class decides the exit code.
Messages must never contain a token: build them from token *sources*, never values.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from enum import IntEnum
from typing import Any
from urllib.parse import urlsplit

from prefetch.hfhub import read_error_answer
from prefetch.terminal import printable


class ExitCode(IntEnum):
    """Process exit codes; the README's table is generated from this list."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    ACCESS = 3
    NETWORK = 4
    INTEGRITY = 5
    LOCK_OUTDATED = 6
    VERIFY_FAILED = 7
    DISK_FULL = 8
    FILESYSTEM = 9
    QUOTA = 10
    INTERRUPTED = 130


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "ok",
    ExitCode.INTERNAL: "internal error (a bug: please report it)",
    ExitCode.USAGE: "bad usage, manifest or lockfile",
    ExitCode.ACCESS: "access denied (auth, gated, private, not found, revision missing)",
    ExitCode.NETWORK: "network: Hub or proxies unreachable after retries",
    ExitCode.INTEGRITY: "integrity: a hash mismatch that retries did not fix",
    ExitCode.LOCK_OUTDATED: "lockfile out of date or missing (--locked, status), or missing (--frozen)",
    ExitCode.VERIFY_FAILED: "verify found missing or corrupt files",
    ExitCode.DISK_FULL: "not enough disk space",
    ExitCode.FILESYSTEM: "filesystem: cannot write the cache or the lockfile's folder (permissions, read-only, "
    "a file in the way, a name too long, too many open files)",
    ExitCode.QUOTA: "quota: the Hub's rate limit or egress limit refuses more requests for now",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C / SIGTERM)",
}


class PrefetchError(Exception):
    """Base of every error prefetch reports deliberately."""

    exit_code: ExitCode = ExitCode.INTERNAL
    shown = False  # the command printed it already (as its report): only the exit code remains

    @classmethod
    def with_message(cls, message: str) -> PrefetchError:
        """An error of this class that carries only `message` (no other attribute its `__init__` would
        set): to relay one from another process, or to join several of one class into one."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        return error


class UsageError(PrefetchError):
    """Bad command-line usage or a bad input file."""

    exit_code = ExitCode.USAGE


class ManifestError(UsageError):
    """A manifest problem, located at file:line:col and a key path such as `repos[2].revision`."""

    def __init__(self, path: str, line: int, column: int, key_path: str, message: str) -> None:
        self.path, self.line, self.column, self.key_path, self.message = path, line, column, key_path, message
        where = f"{path}:{line}:{column}"
        super().__init__(f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}")


class LockfileError(UsageError):
    """A lockfile that cannot be read or does not have the expected shape."""


class AccessError(PrefetchError):
    """One or more entries cannot be read with the available credentials (the report lists them all)."""

    exit_code = ExitCode.ACCESS


class NetworkError(PrefetchError):
    """The Hub or every proxy stayed unreachable after retries."""

    exit_code = ExitCode.NETWORK


class IntegrityError(PrefetchError):
    """Downloaded bytes kept failing their hash check, or a server sent something unsafe (e.g. `../` paths)."""

    exit_code = ExitCode.INTEGRITY


class BadProxyUrl(ValueError):
    """A proxy URL that cannot be used. Its message quotes nothing of the URL: any part of a
    malformed one (user, password, host, path) may be a secret, and which part is cannot be known."""


class UnsafeFolder(IntegrityError):
    """A symlink (or a file) where prefetch expects a folder of its own, below the cache root."""


class UnusableAnswer(IntegrityError):
    """A server's answer prefetch refuses to use: not JSON, over the size cap, nested too deep, a
    listing whose pages loop or never end, file paths that cannot coexist."""


class LockOutdatedError(PrefetchError):
    """`--locked` (or `--offline`, `status`) found the lockfile missing or out of date with the manifest,
    or `--frozen` found no lockfile."""

    exit_code = ExitCode.LOCK_OUTDATED


class LockDisagreesWithHub(LockOutdatedError):
    """The Hub stated, before the bytes, another hash or size for a file than the lock says: the lock was
    edited, or (the integrity error the orchestrator makes of it) the endpoint is not the one the lock
    was resolved against and serves other bytes."""


class VerifyError(PrefetchError):
    """`verify` (or an offline sync) found missing or corrupt files in the cache."""

    exit_code = ExitCode.VERIFY_FAILED

    def __init__(self, message: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(message)


class DiskSpaceError(PrefetchError):
    """The bytes to fetch do not fit on the cache's filesystem (or it filled up)."""

    exit_code = ExitCode.DISK_FULL


class FilesystemError(PrefetchError):
    """The cache or the lockfile's folder cannot be written: permissions, a read-only mount, a file where
    a folder should be, a name longer than the filesystem allows."""

    exit_code = ExitCode.FILESYSTEM


def relayed_error(class_name: str, message: str) -> PrefetchError:
    """An error another prefetch process reported (`download.helper`) by its class's name, as that class
    (its message only): the class decides the exit code here as it did there. An unknown name (a bug in
    the other process) is a plain PrefetchError: an internal error."""
    kind = globals().get(class_name)
    if not (isinstance(kind, type) and issubclass(kind, PrefetchError)):
        kind = PrefetchError
    return kind.with_message(message)


_FILESYSTEM_HINTS = {
    errno.EACCES: "permission denied (check the owner and mode; a shared cache needs group write and umask 002)",
    errno.EPERM: "operation not permitted (check the owner, mode and attributes)",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.ENOTDIR: "a file is in the way where a folder should be",
    errno.EEXIST: "a file is in the way where a folder should be",
    errno.EISDIR: "a folder is in the way where a file should be",
    errno.ENAMETOOLONG: "a name is longer than the filesystem allows",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMFILE: "too many open files: raise the limit (`ulimit -n 4096`) or lower --jobs",
    errno.ENFILE: "the system has too many open files: lower --jobs, or raise fs.file-max",
}


def filesystem_error(exc: BaseException, what: str, *, with_filename: bool = True) -> FilesystemError | None:
    """The named error for an ordinary OS failure while writing `what` (None: not one of those);
    `with_filename=False` where `what` names the file better than the OS's filename (a temporary one)."""
    if not isinstance(exc, OSError) or exc.errno not in _FILESYSTEM_HINTS:
        return None
    named = with_filename and exc.filename and exc.errno not in (errno.EMFILE, errno.ENFILE)
    where = f" ({exc.filename})" if named else ""
    return FilesystemError(f"cannot write {what}{where}: {_FILESYSTEM_HINTS[exc.errno]}")


class _WithRows(PrefetchError):
    """An error whose message is a whole access report; `rows` are its rows as plain data (the JSON form
    `--json` prints), so this module needs nothing of the module that makes reports."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows


class AccessCheckError(_WithRows, AccessError):
    """Some entries cannot be read (exit 3)."""


class AccessNetworkError(_WithRows, NetworkError):
    """The Hub could not be reached to check access (exit 4, not an access problem)."""


class AccessQuotaError(_WithRows):
    """The Hub refuses some entries' downloads for now: an egress limit (exit 10)."""

    exit_code = ExitCode.QUOTA


class TooManyRedirects(NetworkError):
    """A server answered with more redirects than any Hub, mirror or CDN needs (a loop): exit 4."""


class NotAHubError(NetworkError):
    """The endpoint answered an API call the way no Hub does (an HTML 404 page without `X-Error-Code`):
    it is a web server, not a Hub, so "repo not found" would blame the wrong thing."""


class HubHttpError(PrefetchError):
    """An error answer (status >= 400) from the Hub, a mirror or the CDN, built only by `hub_http_error`
    (the one translator), which picks the subclass; the subclass alone decides the exit code.

    This base class is an answer no subclass names (a 400, 410, 416...): exit 4. Whether it is worth a
    retry is `prefetch.net.retry.is_retryable`'s call (408/429/5xx); `retry_after`: the seconds the server
    asked to wait (429, 503), which replace the backoff. `request_id`: the Hub's `X-Request-Id`, for a
    report to the Hub's support.
    """

    exit_code = ExitCode.NETWORK

    def __init__(
        self,
        url: str,
        status: int,
        error_code: str | None,
        message: str,
        *,
        retry_after: float | None = None,
        content_type: str = "",
        request_id: str | None = None,
        context: str = "",
        note: str = "",
    ) -> None:
        message = printable(message)  # the server's words: no terminal escapes
        self.url, self.status, self.error_code, self.message = url, status, error_code, message
        self.retry_after = retry_after
        self.content_type = content_type  # media type only, e.g. `text/html`
        self.request_id = request_id
        text = f"{status} from {urlsplit(url).path}" + (f": {message}" if message else "")
        if request_id:
            text += f" (request id {printable(request_id)[:100]})"
        super().__init__((f"{context}: {text}" if context else text) + note)

    def in_context(self, context: str, note: str = "") -> HubHttpError:
        """The same answer (same class, same exit code), its message led by `context` (what was being
        done) and followed by `note` (how hard it was tried)."""
        return type(self)(
            self.url, self.status, self.error_code, self.message, retry_after=self.retry_after,
            content_type=self.content_type, request_id=self.request_id, context=context, note=note,
        )  # fmt: skip


class HubServerError(HubHttpError):
    """A 5xx answer (after retries): the server failed, exit 4."""


class RateLimitedError(HubHttpError):
    """A 429 that retries did not get past (a server that says no more than 429): exit 10."""

    exit_code = ExitCode.QUOTA


class QuotaWaitTooLong(PrefetchError):
    """The Hub's rate limit closed a bucket for longer than the run may wait (`retry.max_time`): exit 10."""

    exit_code = ExitCode.QUOTA


class EgressLimitError(HubHttpError):
    """`X-Error-Code: EgressLimitReached`: the download (egress) allowance behind this repo is used up;
    neither a retry nor another token helps until it is reset or raised."""

    exit_code = ExitCode.QUOTA


class HubAccessError(HubHttpError):
    """The Hub refuses this request with these credentials: auth, gated, private, not found (exit 3)."""

    exit_code = ExitCode.ACCESS


class UnauthorizedError(HubAccessError):
    """A 401 without an error code: no valid credentials (an invalid or revoked token)."""


class ForbiddenError(HubAccessError):
    """A 403 without an error code: the token lacks a permission (e.g. a fine-grained token's)."""


class NotFoundError(HubAccessError):
    """A 404 without an error code: on an API route, not a repo or file the token can see."""


class GatedRepoError(HubAccessError):
    """`X-Error-Code: GatedRepo`: the repo is gated and this token (or none) may not read it yet."""


class RepoNotFoundError(HubAccessError):
    """`X-Error-Code: RepoNotFound`: unknown, or private and not visible to this token."""


class RevisionNotFoundError(HubAccessError):
    """`X-Error-Code: RevisionNotFound`: no such branch, tag or commit."""


class EntryNotFoundError(HubAccessError):
    """`X-Error-Code: EntryNotFound`: no such file at that revision."""


class DisabledRepoError(HubAccessError):
    """The Hub has disabled the repo (`X-Error-Message: Access to this resource is disabled.`): nobody
    can read it, whatever the token."""


# huggingface_hub's reading of an error answer (`hfhub.ErrorAnswer.kind`) -> the class prefetch raises.
_BY_KIND: dict[str, type[HubHttpError]] = {
    "GatedRepo": GatedRepoError,
    "RepoNotFound": RepoNotFoundError,
    "RevisionNotFound": RevisionNotFoundError,
    "EntryNotFound": EntryNotFoundError,
    "DisabledRepo": DisabledRepoError,
    "EgressLimitReached": EgressLimitError,
}
# An answer huggingface_hub has no class for, by its status.
_BY_STATUS: dict[int, type[HubHttpError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    429: RateLimitedError,
}


def hub_http_error(
    url: str,
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    reason: str = "",
    retry_after: float | None = None,
) -> HubHttpError:
    """The one translation of an error answer into a typed error: read as huggingface_hub's
    `hf_raise_for_status` reads it (`X-Error-Code`, `X-Error-Message`, the JSON `error`, the request
    id), so an answer the next huggingface_hub learns to tell apart reaches prefetch with it.

    `headers`: the answer's header fields; `body`: what the caller read of it (bounded). The server's
    message is cut to 500 characters: a server's text must not flood a report.
    """
    answer = read_error_answer(url, status, headers, body)
    kind = _BY_KIND.get(answer.kind) or _BY_STATUS.get(status)
    if kind is None:
        kind = HubServerError if status >= 500 else HubHttpError
    lookup = {name.lower(): value for name, value in headers}
    content_type = lookup.get("content-type", "").split(";")[0].strip().lower()
    return kind(
        url, status, lookup.get("x-error-code"), (answer.server_message or reason)[:500],
        retry_after=retry_after, content_type=content_type, request_id=answer.request_id,
    )  # fmt: skip


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for any exception: the single mapping the CLI uses."""
    if isinstance(exc, PrefetchError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # outside our own checks
        return ExitCode.DISK_FULL
    if isinstance(exc, OSError) and exc.errno in _FILESYSTEM_HINTS:
        return ExitCode.FILESYSTEM
    return ExitCode.INTERNAL


# --- transport and download errors (prefetch/net, prefetch/download) ---
# Raised inside the HTTP layer and the download engine; they become the typed errors above (with
# an exit code) where a request fails for good (`prefetch.net.session.network_error`).
class TransportError(Exception):
    """The request did not complete over the network: worth a retry, or another proxy. `origin`: the
    server it was for (the Hub's, a CDN's...), which the final message names."""

    origin = ""


class ConnectError(TransportError):
    """No connection: refused, unreachable, no such host, or the TLS handshake failed.

    `first_contact`: the host never answered this run (a wrong or down endpoint, not a blip), so
    retries stop early (`settings.FIRST_CONTACT_ATTEMPTS`) and the run fails within seconds.
    """

    first_contact = False


class ConnectTimeout(ConnectError):
    """The connection (or its TLS handshake, or its proxy tunnel) took longer than the connect timeout."""


class ReadError(TransportError):
    """The connection broke while sending the request or receiving the answer."""


class ReadTimeout(ReadError):
    """The server sent nothing for longer than the read timeout."""


class RemoteProtocolError(TransportError):
    """The peer closed early or sent something that is not HTTP/1.1."""


class ProxyError(TransportError):
    """A proxy refused to open a CONNECT tunnel; `status` is its answer."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class CertificateError(ConnectError):
    """The server's TLS certificate did not verify. Retrying cannot help, so it is not retried."""


class ProxyRoutesFailed(Exception):
    """Every route (proxy) failed for one request; each failure is kept for the final message.

    `permanent` when every proxy refused our credentials (407): retrying cannot help, so fail fast.
    """

    origin: str = ""  # the origin the request was for (retry lines name it)

    def __init__(self, failures: list[tuple[str, str]], permanent: bool = False) -> None:
        self.failures = failures
        self.permanent = permanent
        super().__init__("; ".join(f"{route}: {reason}" for route, reason in failures))


class TruncatedBody(Exception):
    """The connection ended before the promised bytes arrived (retryable; resumes where it stopped)."""


class RangeIgnored(Exception):
    """The server answered 200 to a Range request: the file must start over as a single stream."""


class Cancelled(Exception):
    """The run was cancelled (Ctrl-C, or its `CancelToken`), or another file failed fatally: stop now."""


class QuotaClosed(Exception):
    """A request in flight met a 429 of the Hub's quota (its bucket's window closed under it): not a failed
    attempt; it is sent again once the window opens (`net.ratelimit`)."""


class StaleUrl(Exception):
    """A signed CDN URL was refused (expired): it was asked for again, so the request is retried."""


class XetUnavailable(Exception):
    """The Xet path cannot serve a file (no token route, the CAS or its transfer host failed for good):
    the run fetches it, and the next ones, through /resolve instead (`prefetch.xet.reader`)."""


class BadBytes(Exception):
    """The server sent bytes that cannot be this file (too many, wrong total): treated as a mismatch."""
