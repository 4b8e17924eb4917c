"""Access check: can every entry be read, before any file byte moves? One row per entry, with the fix.

Metadata answers (revision info, tree) are 200 for gated repos whatever the token, so access is
decided by the Hub's auth-check endpoint (or, on a mirror without it, a HEAD of one file).
whoami is called at most once per distinct token per run.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from dataclasses import dataclass, field
from typing import Any

from prefetch.auth import Token, redact
from prefetch.errors import AccessError, ExitCode, NetworkError, PrefetchError
from prefetch.hub import HubApi, RepoInfo
from prefetch.manifest import Entry
from prefetch.transfer import RETRYABLE_STATUS, HttpStatusError, is_retryable, network_error

LOGIN_HELP = (
    "log in with `hf auth login`, or set HF_TOKEN, or write the token to $HF_HOME/token "
    "(default ~/.cache/huggingface/token); in a Docker build pass it as a BuildKit secret "
    "(RUN --mount=type=secret,id=hf_token ...), never as ARG or ENV"
)


@dataclass
class AccessResult:
    """The verdict for one entry."""

    entry: Entry
    status: str  # ok | no-token | invalid-token | gated-not-accepted | gated-pending | fine-grained-token
    #              | not-found | revision-not-found | forbidden | network
    token_source: str | None
    problem: str = ""
    remedy: str = ""
    commit: str | None = None
    hub_gated: bool | str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.entry.repo,
            "type": self.entry.type,
            "revision": self.entry.revision,
            "status": self.status,
            "ok": self.ok,
            "token_source": self.token_source,
            "commit": self.commit,
            "gated": self.hub_gated,
            "problem": redact(self.problem),
            "remedy": redact(self.remedy),
            "warnings": [redact(w) for w in self.warnings],
        }


@dataclass
class AccessReport:
    results: list[AccessResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def exit_code(self) -> ExitCode:
        if any(not r.ok and r.status != "network" for r in self.results):
            return ExitCode.ACCESS
        if any(r.status == "network" for r in self.results):
            return ExitCode.NETWORK
        return ExitCode.OK

    def render(self) -> str:
        lines = []
        for r in self.results:
            who = f" [token: {r.token_source}]" if r.token_source else " [no token]"
            if r.ok:
                lines.append(f"ok    {r.entry.label}{who}")
            else:
                lines.append(f"FAIL  {r.entry.label}{who}: {r.problem}")
                lines.append(f"      fix: {r.remedy}")
            lines += [f"      warning: {w}" for w in r.warnings]
        failed = sum(not r.ok for r in self.results)
        lines.append(f"{len(self.results) - failed} of {len(self.results)} entries readable")
        return redact("\n".join(lines))

    def error(self) -> PrefetchError:
        """The error to raise when the report is not ok (its message is the whole report)."""
        cls = AccessError if self.exit_code == ExitCode.ACCESS else NetworkError
        return cls("access check failed:\n" + self.render())


def check_entries(
    hub: HubApi,
    entries: list[tuple[Entry, Token | None]],
    *,
    commits: dict[str, str] | None = None,
    concurrency: int = 8,
) -> AccessReport:
    """Check every entry (concurrently, bounded); `commits` maps entry keys already resolved (from a lock)."""
    commits = commits or {}
    whoami = _WhoamiOnce(hub)
    results: dict[str, AccessResult] = {}
    to_check = []
    for entry, token in entries:
        pre = precheck(entry, token)
        if pre is not None:
            results[entry.key] = pre
        else:
            to_check.append((entry, token))
    with cf.ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(to_check) or 1))) as pool:
        futures = {
            entry.key: pool.submit(_check_one, hub, entry, token, commits.get(entry.key), whoami)
            for entry, token in to_check
        }
        for key, future in futures.items():
            results[key] = future.result()
    return AccessReport([results[entry.key] for entry, _ in entries])


def precheck(entry: Entry, token: Token | None) -> AccessResult | None:
    """Failures knowable without the network: a gated entry with no token at all."""
    if token is not None or not entry.gated:
        return None
    if entry.token_env:
        problem = f"gated repo, and ${entry.token_env} (this entry's token_env) is not set"
        remedy = f"export {entry.token_env}=<a token of the account that accepted the conditions>"
    else:
        problem = "gated repo, and no Hugging Face token was found"
        remedy = LOGIN_HELP
    return AccessResult(entry, "no-token", None, problem, remedy)


class _WhoamiOnce:
    """whoami is strictly rate-limited on the Hub: ask once per token per run."""

    def __init__(self, hub: HubApi) -> None:
        self.hub = hub
        self._answers: dict[str, BaseException | dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, token: Token) -> dict[str, Any]:
        with self._lock:
            if token.value not in self._answers:
                try:
                    self._answers[token.value] = self.hub.whoami(token)
                except Exception as e:
                    self._answers[token.value] = e
            answer = self._answers[token.value]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _check_one(
    hub: HubApi, entry: Entry, token: Token | None, commit: str | None, whoami: _WhoamiOnce
) -> AccessResult:
    result = AccessResult(entry, "ok", token.source if token else None, commit=commit)
    try:
        if token is not None:
            whoami(token)
        if commit is None:
            info: RepoInfo = hub.repo_info(entry.repo, entry.type, entry.revision, token)
            result.commit, result.hub_gated = info.commit, info.gated
            _warn_gated_mismatch(result)
        _auth_check(hub, entry, token, result.commit or entry.revision)
    except Exception as e:
        row_for_error(hub, entry, token, e, result)
    return result


def row_for_error(
    hub: HubApi, entry: Entry, token: Token | None, exc: BaseException, result: AccessResult | None = None
) -> AccessResult:
    """The report row for a failed Hub call: an access verdict with its remedy, or a network failure.

    Anything else (a bug, a server sending unsafe paths) is not an access problem and propagates.
    """
    result = result or AccessResult(entry, "ok", token.source if token else None)
    if isinstance(exc, HttpStatusError) and exc.status not in RETRYABLE_STATUS:
        _classify(hub, exc, result, token)
    elif isinstance(exc, NetworkError | HttpStatusError) or is_retryable(exc):
        result.status = "network"
        result.problem = str(
            exc if isinstance(exc, NetworkError) else network_error(exc, hub.http, entry.repo)
        )
        result.remedy = (
            f"check the network path to {hub.endpoint} and the proxies (tried {hub.http.describe_routes()})"
        )
    else:
        raise exc
    result.commit = None
    return result


def _auth_check(hub: HubApi, entry: Entry, token: Token | None, commit: str) -> None:
    try:
        hub.auth_check(entry.repo, entry.type, token)
    except HttpStatusError as e:
        if e.status != 404 or e.error_code is not None:
            raise
        # A mirror without the auth-check endpoint: ask for one real file instead.
        files = hub.list_files(entry.repo, entry.type, commit, token)
        if files:
            hub.http.locate(hub.file_url(entry.repo, entry.type, commit, files[0].path), token)


def _warn_gated_mismatch(result: AccessResult) -> None:
    gated, said = result.hub_gated, result.entry.gated
    if gated and not said:
        result.warnings.append(
            f"the Hub reports this repo as gated ({gated}) but the manifest does not say `gated: true`: add it, "
            "so a missing token fails before any request"
        )
    elif said and not gated:
        result.warnings.append("the manifest says `gated: true` but the Hub reports this repo as not gated")


def _classify(hub: HubApi, e: HttpStatusError, result: AccessResult, token: Token | None) -> None:
    entry, endpoint = result.entry, hub.endpoint
    repo_url = f"{endpoint}/{'' if entry.type == 'model' else entry.type + 's/'}{entry.repo}"
    message = e.message.lower()
    if e.status == 401 and e.error_code is None and token is not None:
        result.status = "invalid-token"
        result.problem = f"the token from {token.source} is invalid or revoked (the Hub answered 401)"
        result.remedy = f"create a new token at {endpoint}/settings/tokens and put it in {token.source}"
    elif e.error_code == "GatedRepo" and (e.status == 401 or token is None):
        result.status = "no-token"
        result.problem = (
            "gated repo, and no token was sent" if token is None else "gated repo: login required"
        )
        result.remedy = LOGIN_HELP
    elif e.error_code == "GatedRepo" and "awaiting" in message:
        result.status = "gated-pending"
        result.problem = "gated repo: your access request is awaiting review by the repo authors"
        result.remedy = f"wait for the authors' approval (see {repo_url}); nothing to change on this side"
    elif e.error_code == "GatedRepo":
        result.status = "gated-not-accepted"
        result.problem = (
            "gated repo: the token's account has not accepted the conditions / is not on the authorized list"
        )
        result.remedy = (
            f"open {repo_url} and accept the conditions with the account that owns the token "
            f"({token.source if token else 'no token'}); access may take a few minutes to propagate"
        )
    elif e.status == 403 and "fine-grained" in message:
        result.status = "fine-grained-token"
        result.problem = "the fine-grained token may not read gated repos"
        result.remedy = (
            f"at {endpoint}/settings/tokens, edit the token ({token.source if token else '?'}) and enable "
            '"Read access to contents of all public gated repos you can access"'
        )
    elif e.error_code == "RevisionNotFound":
        result.status = "revision-not-found"
        result.problem = f"revision {entry.revision!r} does not exist in {entry.repo}"
        result.remedy = _revision_help(hub, entry, token)
    elif e.error_code == "RepoNotFound" or e.status in (401, 404):
        result.status = "not-found"
        result.problem = f"{entry.type} repo {entry.repo!r} not found, or private and not visible to " + (
            f"the token from {token.source}" if token else "anonymous requests (no token found)"
        )
        result.remedy = (
            f"check the repo id and `type:` ({entry.type}); if it is private, use a token of an account that can "
            "see it" + ("" if token else f" ({LOGIN_HELP})")
        )
    else:
        result.status = "forbidden"
        result.problem = f"the Hub answered {e.status}: {e.message}"
        result.remedy = f"check the token's permissions at {endpoint}/settings/tokens"
    result.problem = redact(result.problem)


def _revision_help(hub: HubApi, entry: Entry, token: Token | None) -> str:
    try:
        branches, tags = hub.list_refs(entry.repo, entry.type, token)
    except Exception:
        return "use an existing branch, tag or full 40-character commit hash"
    return (
        "use an existing branch, tag or full 40-character commit hash; "
        f"branches: {', '.join(branches) or '(none)'}; tags: {', '.join(tags) or '(none)'}"
    )
