"""The run context: what every stage of one command shares, and nothing else.

Where the run works (the endpoint, the cache), with whose credentials (the token source), through which
HTTP session, what it shows (its progress display, which holds the run's `Secrets`) and when it must stop
(its `CancelToken`). Stages take their data as arguments and return it; they take this context for those
shared means. The HTTP session and the tokens are made on first use: a warm or offline run never
imports the network stack, reads a token, or checks a folder it will not write.
"""

from __future__ import annotations

import errno
import functools
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from prefetch import settings as env_settings
from prefetch.auth import Token, entry_token, find_token
from prefetch.cache import RepoCache
from prefetch.cancel import CancelToken
from prefetch.errors import AccessError, UsageError, filesystem_error
from prefetch.manifest import Entry, Manifest
from prefetch.progress import Progress, QuietProgress
from prefetch.urls import endpoint_problem, plain_http_token_problem

if TYPE_CHECKING:
    from prefetch.hub import HubApi
    from prefetch.net.session import Http

PLAIN_HTTP_FIX = (
    "use an https:// endpoint (only a loopback Hub, localhost, 127.0.0.0/8 or ::1, "
    "may take a token over plain http)"
)


@dataclass(frozen=True)
class Settings:
    """Run settings that do not live in the manifest (command-line flags, mostly)."""

    lock_path: Path | None = None
    cache_dir: Path | None = None
    endpoint: str | None = None
    token_file: Path | None = None
    proxies: tuple[str, ...] = ()
    jobs: int = env_settings.DEFAULT_JOBS
    retry_attempts: int | None = None  # overrides the manifest's `retry:`
    retry_max_wait: float | None = None
    offline: bool = False
    segment_threshold: int = env_settings.DEFAULT_SEGMENT_THRESHOLD
    segment_size: int = env_settings.DEFAULT_SEGMENT_SIZE
    min_free: int | None = None  # bytes to keep free after the download (default: scales with the plan)
    processes: int | None = None  # that share many small files: 1 or 2 (default: `settings.processes`)
    source: str | None = None  # `--source oci://...`: take the locked files from an OCI artifact, not the Hub


class RunContext:
    """One command's shared means: endpoint, cache, tokens, HTTP, progress, cancellation."""

    def __init__(
        self,
        manifest: Manifest,
        settings: Settings,
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.manifest = manifest  # its proxies, retry and per-entry token variables
        self.settings = settings
        self.progress = progress or QuietProgress()
        self.secrets = self.progress.secrets  # what the run's outputs redact
        self.cancel = cancel or CancelToken()  # every retry wait and transfer watches it
        self.cache_dir = env_settings.resolve_cache_dir(settings.cache_dir or manifest.cache_dir)
        self.offline = settings.offline or env_settings.offline()
        self.endpoint = (
            settings.endpoint or manifest.endpoint or env_settings.endpoint() or env_settings.DEFAULT_ENDPOINT
        ).rstrip("/")
        problem = endpoint_problem(self.endpoint)
        if problem:  # a usage error, before anything tries to connect to it
            raise UsageError(f"{self.endpoint_source}: {problem}")
        self._must_write: list[tuple[Path, str]] = []  # folders checked writable before the first request

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if "http" in self.__dict__:  # made only if the run touched the network
            self.http.close()

    @property
    def endpoint_source(self) -> str:
        """Where the endpoint came from: `--endpoint`, the manifest's `endpoint:`, `HF_ENDPOINT`."""
        if self.settings.endpoint:
            return "--endpoint"
        return f"{self.manifest.path}: endpoint" if self.manifest.endpoint else "HF_ENDPOINT"

    @property
    def endpoint_name(self) -> str:
        """The endpoint as its source names it, for messages: `HF_ENDPOINT=http://...`."""
        if self.settings.endpoint:
            return f"--endpoint {self.endpoint}"
        if self.manifest.endpoint:
            return f"the manifest's endpoint {self.endpoint}"
        return f"HF_ENDPOINT={self.endpoint}" if env_settings.endpoint() else f"the Hub at {self.endpoint}"

    def retry_settings(self) -> env_settings.RetrySettings:
        retry = self.manifest.retry
        if self.settings.retry_attempts is not None:
            retry = replace(retry, attempts=self.settings.retry_attempts)
        if self.settings.retry_max_wait is not None:
            retry = replace(retry, max_wait=self.settings.retry_max_wait)
        return retry

    # -- made on first use ----------------------------------------------------------------------------
    @functools.cached_property
    def http(self) -> Http:
        """The run's HTTP session. Before it is made, the folders the run will write are checked: a run
        that needs no request (a warm cache) writes nothing either."""
        from prefetch.net.proxies import checked_proxy_url  # the network stack: only for a run that uses it
        from prefetch.net.ratelimit import RateGate
        from prefetch.net.retry import RetryPolicy
        from prefetch.net.session import Http

        self.check_writable()
        _, no_proxy = env_settings.proxies()
        sources = [
            *(("--proxy", p) for p in self.settings.proxies),
            *((f"{self.manifest.path}: proxies", p) for p in self.manifest.proxies),
            *env_settings.proxy_variables(),
        ]
        proxies = list(dict.fromkeys(checked_proxy_url(value, source) for source, value in sources))
        for proxy in proxies:
            self.secrets.add_url(proxy)
        settings = self.retry_settings()
        retry = RetryPolicy(settings, on_retry=self.progress.retry, cancel=self.cancel)
        gate = RateGate(self.endpoint, self.cancel, settings.max_time, on_wait=self.progress.rate_limited)
        return Http(
            self.endpoint,
            proxies,
            retry,
            no_proxy=no_proxy,
            pool_size=self.settings.jobs * 2 + 4,
            offline=self.offline,
            gate=gate,
        )

    @functools.cached_property
    def hub(self) -> HubApi:
        from prefetch.hub import HubApi

        return HubApi(self.http, self.endpoint_name)

    @functools.cached_property
    def default_token(self) -> Token | None:
        return find_token(self.secrets, self.settings.token_file)

    def token(self, entry: Entry) -> Token | None:
        return entry_token(entry.token_env, self.default_token, self.secrets)

    def rate_limits(self) -> tuple[dict[str, int], dict[str, tuple[int, float]]]:
        """The requests this run sent per rate-limit bucket, and each bucket's policy the Hub stated
        (quota, window seconds); nothing for a run that made no request."""
        if "http" not in self.__dict__ or self.http.gate is None:
            return {}, {}
        gate = self.http.gate
        policies = {name: (p.quota, p.window) for name in gate.counts() if (p := gate.policy(name))}
        return gate.counts(), policies

    def repo_cache(self, repo: str, repo_type: str) -> RepoCache:
        return RepoCache(self.cache_dir, repo, repo_type)

    # -- pre-flight: what can fail without the network fails before any request --------------------------
    def check_token_transport(self, entries: tuple[Entry, ...]) -> None:
        """Exit 3 before any request when a token would travel over plain http to a non-loopback Hub."""
        problem = plain_http_token_problem(self.endpoint)
        if problem is None:
            return
        for entry in entries:
            token = self.token(entry)
            if token is not None:
                raise AccessError(f"{entry.label}: {problem} (the {token}); {PLAIN_HTTP_FIX}")

    def write_before_requests(self, folder: Path, what: str) -> None:
        """`folder` must take new files: checked before the first request (an unwritable folder must not
        be found after the whole download), or by `check_writable` for a run that makes none."""
        self._must_write.append((folder, what))

    def check_writable(self) -> None:
        """The folders `write_before_requests` named take new files, or FilesystemError (exit 9)."""
        while self._must_write:
            _check_writable(*self._must_write.pop())


def _check_writable(folder: Path, what: str) -> None:
    """Make an (unnamed, never linked) file in `folder`, or where it does not exist yet, in the nearest
    folder above it that does (a run that then fails leaves no empty folder behind); else FilesystemError."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        if existing.exists() and not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise filesystem_error(e, f"{what} {folder}") or e from None
