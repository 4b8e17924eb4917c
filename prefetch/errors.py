"""One typed error hierarchy, and the one place that maps errors to exit codes.

Every failure prefetch reports on purpose is a `PrefetchError`; its class decides the exit code.
Messages must never contain a token: build them from token *sources*, never values.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prefetch.terminal import printable

if TYPE_CHECKING:
    from prefetch.access import AccessReport


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
    "a file in the way, a name too long)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C / SIGTERM)",
}


class PrefetchError(Exception):
    """Base of every error prefetch reports deliberately."""

    exit_code: ExitCode = ExitCode.INTERNAL
    shown = False  # the command printed it already (as its report): only the exit code remains


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


def relayed_error(exit_code: int, message: str) -> PrefetchError:
    """An error another prefetch process reported (`download.helper`), as the class of its exit code."""
    for kind in (UsageError, AccessError, NetworkError, IntegrityError, LockOutdatedError, DiskSpaceError,
                 FilesystemError):  # fmt: skip
        if kind.exit_code == exit_code:
            return kind(message)
    return PrefetchError(message)


_FILESYSTEM_HINTS = {
    errno.EACCES: "permission denied (check the owner and mode; a shared cache needs group write and umask 002)",
    errno.EPERM: "operation not permitted (check the owner, mode and attributes)",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.ENOTDIR: "a file is in the way where a folder should be",
    errno.EEXIST: "a file is in the way where a folder should be",
    errno.EISDIR: "a folder is in the way where a file should be",
    errno.ENAMETOOLONG: "a name is longer than the filesystem allows",
    errno.ELOOP: "too many levels of symbolic links",
}


def filesystem_error(exc: BaseException, what: str) -> FilesystemError | None:
    """The named error for an ordinary OS failure while writing `what` (None: not one of those)."""
    if not isinstance(exc, OSError) or exc.errno not in _FILESYSTEM_HINTS:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return FilesystemError(f"cannot write {what}{where}: {_FILESYSTEM_HINTS[exc.errno]}")


class AccessCheckError(AccessError):
    """Some entries cannot be read: the message is the whole report, `report` has the rows."""

    def __init__(self, message: str, report: AccessReport) -> None:
        super().__init__(message)
        self.report = report


class AccessNetworkError(NetworkError):
    """The Hub could not be reached to check access (exit 4, not an access problem)."""

    def __init__(self, message: str, report: AccessReport) -> None:
        super().__init__(message)
        self.report = report


class NotAHubError(NetworkError):
    """The endpoint answered an API call the way no Hub does (an HTML 404 page without `X-Error-Code`):
    it is a web server, not a Hub, so "repo not found" would blame the wrong thing."""


class HubHttpError(PrefetchError):
    """An error answer (status >= 400) from the Hub, a mirror or the CDN: the one type for every HTTP answer,
    typed by its `X-Error-Code` (subclasses below), built only by `hub_http_error`.

    401/403/404 are access answers (exit 3); anything else (429, 5xx after retries) is exit 4. Whether it
    is worth a retry is `prefetch.net.retry.is_retryable`'s call (408/429/5xx); `retry_after`: the seconds
    the server asked to wait (429, 503), which replace the backoff.
    """

    def __init__(
        self,
        url: str,
        status: int,
        error_code: str | None,
        message: str,
        retry_after: float | None = None,
        content_type: str = "",
    ) -> None:
        message = printable(message)  # the server's words: no terminal escapes
        self.url, self.status, self.error_code, self.message = url, status, error_code, message
        self.retry_after = retry_after
        self.content_type = content_type  # media type only, e.g. `text/html`
        self.exit_code = ExitCode.ACCESS if status in (401, 403, 404) else ExitCode.NETWORK
        super().__init__(f"{status} from {urlsplit(url).path}" + (f": {message}" if message else ""))


class GatedRepoError(HubHttpError):
    """`X-Error-Code: GatedRepo`: the repo is gated and this token (or none) may not read it yet."""


class RepoNotFoundError(HubHttpError):
    """`X-Error-Code: RepoNotFound`: unknown, or private and not visible to this token."""


class RevisionNotFoundError(HubHttpError):
    """`X-Error-Code: RevisionNotFound`: no such branch, tag or commit."""


class EntryNotFoundError(HubHttpError):
    """`X-Error-Code: EntryNotFound`: no such file at that revision."""


_BY_ERROR_CODE: dict[str, type[HubHttpError]] = {
    "GatedRepo": GatedRepoError,
    "RepoNotFound": RepoNotFoundError,
    "RevisionNotFound": RevisionNotFoundError,
    "EntryNotFound": EntryNotFoundError,
}


def hub_http_error(
    url: str,
    status: int,
    header: Callable[[str], str | None],
    body: bytes,
    *,
    reason: str = "",
    retry_after: float | None = None,
) -> HubHttpError:
    """The one translation of an error answer into a typed error, as huggingface_hub's `hf_raise_for_status`.

    `header` looks a header up by lower-case name; `body` is what the caller read of the answer (bounded):
    its JSON `error` is the message when the Hub sent no `X-Error-Message`, else the status line's `reason`.
    Nothing else of the body is kept: a server's text must not flood a report.
    """
    error_code = header("x-error-code")
    message = header("x-error-message") or _json_error(body) or reason
    kind = _BY_ERROR_CODE.get(error_code or "", HubHttpError)
    content_type = (header("content-type") or "").split(";")[0].strip().lower()
    return kind(url, status, error_code, message[:500], retry_after, content_type)


def _json_error(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else ""


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
    """The request did not complete over the network: worth a retry, or another proxy."""


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


class StaleUrl(Exception):
    """A signed CDN URL was refused (expired): it was asked for again, so the request is retried."""


class BadBytes(Exception):
    """The server sent bytes that cannot be this file (too many, wrong total): treated as a mismatch."""
