"""Access check: can every entry be read, before any file byte moves? One row per entry, with the fix.

Metadata answers (revision info, tree) are 200 for gated repos whatever the token, so access is
decided by the Hub's auth-check endpoint (or, on a mirror without it, a HEAD of one file).
whoami is strictly rate-limited on the Hub, so it is only asked to *explain* a failure (which
account a token belongs to, whether a fine-grained token may read gated repos), at most once per
distinct token per run, in one attempt.

`row_for_error` (through `_classify`) is the single place that turns a Hub answer into a verdict:
both `check_entries` and the resolve step of `sync` use it.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from prefetch.auth import Token, default_token_path, mask_patterns
from prefetch.errors import (
    AccessCheckError,
    AccessNetworkError,
    AccessQuotaError,
    CertificateError,
    DisabledRepoError,
    EgressLimitError,
    ExitCode,
    ForbiddenError,
    GatedRepoError,
    HubAccessError,
    HubHttpError,
    NetworkError,
    NotFoundError,
    PrefetchError,
    ProxyRoutesFailed,
    RepoNotFoundError,
    RevisionNotFoundError,
    TransportError,
    UnauthorizedError,
)
from prefetch.hfhub import REPO_TYPES, url_prefix
from prefetch.hub import HubApi, RepoInfo, lacks_route
from prefetch.manifest import Entry
from prefetch.net.retry import is_retryable
from prefetch.net.session import network_error

LOGIN_HELP = (
    "log in with `hf auth login`, or set HF_TOKEN, or write the token to $HF_HOME/token "
    "(default ~/.cache/huggingface/token{here}); in a Docker build pass it as a BuildKit secret "
    "(RUN --mount=type=secret,id=hf_token ...; it is read from /run/secrets/hf_token), never as ARG or ENV"
)
FINE_GRAINED_SETTING = "read access to contents of all public gated repos you can access"


def login_help() -> str:
    """How to provide a token, naming the `$HF_HOME/token` this process reads."""
    return LOGIN_HELP.format(here=f"; this run reads {default_token_path()}")


class AccessStatus(str, Enum):
    """An entry's verdict; the value is what `--json` prints."""

    OK = "ok"
    NO_TOKEN = "no-token"
    INVALID_TOKEN = "invalid-token"
    GATED_NOT_ACCEPTED = "gated-not-accepted"
    GATED_PENDING = "gated-pending"
    FINE_GRAINED_TOKEN = "fine-grained-token"
    NOT_FOUND = "not-found"
    REVISION_NOT_FOUND = "revision-not-found"
    FORBIDDEN = "forbidden"
    DISABLED = "disabled"
    EGRESS_LIMIT = "egress-limit"
    NETWORK = "network"


@dataclass
class AccessResult:
    """The verdict for one entry."""

    entry: Entry
    status: AccessStatus
    token_source: str | None
    problem: str = ""
    remedy: str = ""
    commit: str | None = None
    hub_gated: bool | str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == AccessStatus.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.entry.repo,
            "type": self.entry.type,
            "revision": self.entry.revision,
            "status": self.status.value,
            "ok": self.ok,
            "token_source": self.token_source,
            "commit": self.commit,
            "gated": self.hub_gated,
            "problem": mask_patterns(self.problem),
            "remedy": mask_patterns(self.remedy),
            "warnings": [mask_patterns(w) for w in self.warnings],
        }


@dataclass
class AccessReport:
    """Rows in manifest order, whichever step (resolution or check) produced them."""

    results: list[AccessResult]

    def __post_init__(self) -> None:
        self.results = sorted(self.results, key=lambda r: r.entry.index)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def exit_code(self) -> ExitCode:
        return self._error_class().exit_code if not self.ok else ExitCode.OK

    def _error_class(self) -> type[AccessCheckError | AccessQuotaError | AccessNetworkError]:
        """Access problems first (they need a fix on this side), then an egress limit, then the network."""
        statuses = {r.status for r in self.results if not r.ok}
        if statuses - {AccessStatus.NETWORK, AccessStatus.EGRESS_LIMIT}:
            return AccessCheckError
        return AccessQuotaError if AccessStatus.EGRESS_LIMIT in statuses else AccessNetworkError

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
        return mask_patterns("\n".join(lines))

    def error(self, *, shown: bool = False) -> PrefetchError:
        """The error to raise when the report is not ok (its message is the whole report; its class, the
        exit code). `shown`: the command printed the report itself (`check`), so the error only sets the
        exit code."""
        kind = self._error_class()
        lead = {
            AccessCheckError: "access check failed, nothing was downloaded",
            AccessQuotaError: "the Hub refuses these downloads for now, nothing was downloaded",
            AccessNetworkError: "could not reach the Hub to check access (a network problem, not an access "
            "problem), nothing was downloaded",
        }[kind]
        error = kind(f"{lead}:\n{self.render()}", [r.to_json() for r in self.results])
        error.shown = shown
        return error


def check_entries(
    hub: HubApi,
    entries: list[tuple[Entry, Token | None]],
    *,
    commits: Mapping[str, str] | None = None,
    hub_gated: Mapping[str, bool | str] | None = None,
    probes: Mapping[str, str] | None = None,
    concurrency: int = 8,
) -> AccessReport:
    """Check every entry (concurrently, bounded); one row per entry, in manifest order.

    `commits` maps entry keys already resolved (from a lock or this run's resolution) to their commit;
    `hub_gated` gives the gating the resolution saw, which spares a second revision request; `probes` a
    file path per entry, to HEAD on an endpoint without auth-check (else its listing is asked for one).
    """
    commits = commits or {}
    hub_gated = hub_gated or {}
    probes = probes or {}
    results: dict[str, AccessResult] = {}
    to_check = []
    for entry, token in entries:
        pre = precheck(entry, token)
        if pre is not None:
            results[entry.key] = pre
        else:
            to_check.append((entry, token))
    workers = max(1, min(concurrency, len(to_check) or 1))
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch-access") as pool:
        futures = {
            entry.key: pool.submit(
                _check_one,
                hub,
                entry,
                token,
                commits.get(entry.key),
                hub_gated.get(entry.key),
                probes.get(entry.key),
            )
            for entry, token in to_check
        }
        for key, future in futures.items():
            results[key] = future.result()
    return AccessReport([results[entry.key] for entry, _ in entries])


def precheck(entry: Entry, token: Token | None) -> AccessResult | None:
    """Failures knowable without the network: a `gated: true` entry with no token at all."""
    if token is not None or not entry.gated:
        return None
    if entry.token_env:
        problem = f"gated repo, and ${entry.token_env} (this entry's token_env) is not set"
        remedy = (
            f"set {entry.token_env} to a token of the account that accepted the repo's conditions "
            "(in a Docker build, from a BuildKit secret, never ARG or ENV)"
        )
    else:
        problem = "gated repo (`gated: true` in the manifest), and no Hugging Face token was found"
        remedy = login_help()
    return AccessResult(entry, AccessStatus.NO_TOKEN, None, problem, remedy)


# ------------------------------------------------------------------------------------------------ whoami
def _whoami(hub: HubApi, token: Token | None) -> dict[str, Any] | None:
    """The whoami answer for `token` in this run (None: no token, or the Hub would not say)."""
    return None if token is None else hub.whoami_once(token)


def _owner(hub: HubApi, token: Token | None) -> str:
    """`the token from SOURCE (account NAME)`, the account when whoami tells."""
    if token is None:
        return "no token"
    name = (_whoami(hub, token) or {}).get("name")
    return f"the token from {token.source}" + (f" (account {name})" if isinstance(name, str) and name else "")


def _fine_grained_without_gated(hub: HubApi, token: Token | None) -> bool:
    access = ((_whoami(hub, token) or {}).get("auth") or {}).get("accessToken") or {}
    fine = access.get("fineGrained") if isinstance(access, dict) else None
    return (
        isinstance(access, dict)
        and access.get("role") == "fineGrained"
        and isinstance(fine, dict)
        and fine.get("canReadGatedRepos") is False
    )


# -------------------------------------------------------------------------------------------- one entry
def _check_one(
    hub: HubApi,
    entry: Entry,
    token: Token | None,
    commit: str | None,
    gated: bool | str | None,
    probe: str | None = None,
) -> AccessResult:
    """One entry's row: revision info (for the gating, unless known) then auth-check, never file bytes."""
    result = AccessResult(
        entry, AccessStatus.OK, token.source if token else None, commit=commit, hub_gated=gated
    )
    if token is None and entry.token_env:
        result.warnings.append(
            f"{entry.token_env} (this entry's token_env) is not set: requests are anonymous"
        )
    try:
        if commit is None or gated is None:
            # Resolves the revision (or confirms a locked commit still exists) and says if it is gated.
            info: RepoInfo = hub.repo_info(entry.repo, entry.type, commit or entry.revision, token)
            result.commit, result.hub_gated = info.commit, info.gated
        _warn_gated_mismatch(result)
        _auth_check(hub, entry, token, result.commit or entry.revision, probe)
    except Exception as e:
        row_for_error(hub, entry, token, e, result, locked_commit=commit)
    return result


def row_for_error(
    hub: HubApi,
    entry: Entry,
    token: Token | None,
    exc: BaseException,
    result: AccessResult | None = None,
    *,
    locked_commit: str | None = None,
) -> AccessResult:
    """The report row for a failed Hub call: an access verdict with its remedy, or a network failure.

    Anything else (a bug, a server sending unsafe paths) is not an access problem and propagates.
    """
    result = result or AccessResult(entry, AccessStatus.OK, token.source if token else None)
    # Network trouble also when not retryable (every proxy refused our credentials, a certificate
    # that does not verify): still exit 4.
    network = isinstance(exc, NetworkError | HubHttpError | ProxyRoutesFailed | TransportError)
    if isinstance(exc, HubAccessError | EgressLimitError):  # the Hub's final answer about this repo
        _classify(hub, exc, result, token, locked_commit)
    elif network or is_retryable(exc):
        result.status = AccessStatus.NETWORK
        result.problem = mask_patterns(
            str(exc if isinstance(exc, NetworkError) else network_error(exc, hub.http, entry.repo))
        )
        if isinstance(exc, HubHttpError) and exc.status == 429:
            result.remedy = (
                f"the Hub at {hub.endpoint} kept rate-limiting requests: wait, then run again "
                "(a token raises the limits)"
            )
        elif isinstance(exc, CertificateError):
            result.remedy = (
                "if a proxy or a private Hub uses its own certificate authority, point SSL_CERT_FILE (or "
                "SSL_CERT_DIR) at CA certificates that include it"
            )
        else:
            result.remedy = (
                f"check the network path to {hub.endpoint} and the proxies (tried {hub.http.describe_routes()}): "
                "HTTPS_PROXY/HTTP_PROXY/NO_PROXY, --proxy, the manifest's `proxies:`, --endpoint / HF_ENDPOINT; "
                "this is not an access problem (to try prefetch without the Hub or a token, run the demo Hub: "
                "README, 'Try it without a token')"
            )
    else:
        raise exc
    result.commit = None
    return result


def _auth_check(hub: HubApi, entry: Entry, token: Token | None, commit: str, probe: str | None) -> None:
    """auth-check, or on an endpoint without it (its revision info answered, so a 404 there means the route
    is missing, see `lacks_route`), a HEAD of one real file (`probe`, else the listing's first), which
    answers as the file's download would."""
    try:
        hub.auth_check(entry.repo, entry.type, token)
    except HubHttpError as e:
        if not lacks_route(e):
            raise
        if probe is None:
            probe = next((f.path for f in hub.list_files(entry.repo, entry.type, commit, token)), None)
        if probe is not None:
            hub.head_file(entry.repo, entry.type, commit, probe, token)


def _warn_gated_mismatch(result: AccessResult) -> None:
    gated, said = result.hub_gated, result.entry.gated
    if gated and not said:
        result.warnings.append(
            f"the Hub reports this repo as gated ({gated}) but the manifest does not say so: add `gated: true` "
            "to the entry, so a missing token fails before any request"
        )
    elif said and gated is False:
        result.warnings.append("the manifest says `gated: true` but the Hub reports this repo as not gated")


# ------------------------------------------------------------------------------------------ the verdict
def _classify(
    hub: HubApi, e: HubHttpError, result: AccessResult, token: Token | None, locked_commit: str | None
) -> None:
    """Set `result`'s status, problem and remedy from one Hub error answer (see hub-notes.md)."""
    entry, endpoint = result.entry, hub.endpoint
    repo_url = f"{endpoint}/{url_prefix(entry.type)}{entry.repo}"
    source = token.source if token else "no token"
    message = e.message.lower()
    if isinstance(e, DisabledRepoError):
        result.status = AccessStatus.DISABLED
        result.problem = f"the Hub has disabled {entry.type} repo {entry.repo} ({e.message})"
        result.remedy = "nobody can read it, whatever the token: remove the entry, or use another repo"
    elif isinstance(e, EgressLimitError):
        result.status = AccessStatus.EGRESS_LIMIT
        result.problem = (
            f"the Hub refuses downloads of {entry.repo} for now: {e.message or 'egress limit reached'}"
        )
        result.remedy = (
            "the download allowance behind this repo is used up: wait until it is reset, or ask the repo's "
            "owner; another token does not help"
        )
    elif isinstance(e, UnauthorizedError | GatedRepoError) and e.status == 401 and token is not None:
        result.status = AccessStatus.INVALID_TOKEN
        result.problem = f"the token from {source} is invalid or revoked (the Hub answered 401)"
        result.remedy = f"create a new token at {endpoint}/settings/tokens and {token.replace_hint}"
    elif isinstance(e, GatedRepoError) and token is None:
        result.status = AccessStatus.NO_TOKEN
        result.problem = f"gated repo ({repo_url}), and no token was sent"
        result.remedy = f"set {entry.token_env} (this entry's token_env)" if entry.token_env else login_help()
    elif isinstance(e, GatedRepoError) and "awaiting" in message:
        result.status = AccessStatus.GATED_PENDING
        result.problem = (
            f"gated repo: the access request of the account of {_owner(hub, token)} "
            "is awaiting review by the repo authors"
        )
        result.remedy = (
            f"wait for the authors' approval (status at {repo_url}); nothing to change on this side"
        )
    elif isinstance(e, GatedRepoError):
        owner = _owner(hub, token)
        result.status = AccessStatus.GATED_NOT_ACCEPTED
        result.problem = (
            f"gated repo: the account of {owner} has not accepted its conditions "
            "or is not on the authorized list"
        )
        result.remedy = (
            f"open {repo_url} and accept the conditions with the account that owns the token "
            f"({owner}); access may take a few minutes to propagate"
        )
    elif isinstance(e, ForbiddenError) and (
        "fine-grained" in message or _fine_grained_without_gated(hub, token)
    ):
        result.status = AccessStatus.FINE_GRAINED_TOKEN
        result.problem = f"the fine-grained token from {source} may not read gated repos"
        result.remedy = f'at {endpoint}/settings/tokens, edit that token and enable "{FINE_GRAINED_SETTING}"'
    elif isinstance(e, RevisionNotFoundError):
        result.status = AccessStatus.REVISION_NOT_FOUND
        if locked_commit:
            result.problem = (
                f"the locked commit {locked_commit} of revision {entry.revision!r} no longer exists in "
                f"{entry.repo}"
            )
        else:
            result.problem = f"revision {entry.revision!r} does not exist in {entry.type} repo {entry.repo}"
        result.remedy = _revision_help(hub, entry, token, relock=bool(locked_commit))
    elif isinstance(e, RepoNotFoundError | UnauthorizedError | NotFoundError):
        result.status = AccessStatus.NOT_FOUND
        if token is not None:
            seen_by = f"the account of {_owner(hub, token)}"
        elif entry.token_env:
            seen_by = f"anonymous requests ({entry.token_env}, this entry's token_env, is not set)"
        else:
            seen_by = "anonymous requests (no token found)"
        result.problem = (
            f"{entry.type} repo {entry.repo!r} not found, or private and not visible to {seen_by}"
        )
        other = _as_other_type(hub, entry, token)
        if other is not None:
            result.remedy = (
                f"{entry.repo} is a {other} repo on this Hub: write `type: {other}` in its entry (it says "
                f"`type: {entry.type}`; `prefetch add {entry.repo} --type {other}`)"
            )
            _masked(result)
            return
        result.remedy = (
            f"check the repo id and type (`type: {entry.type}`: is it a model, dataset or space?), "
            "and that the token's account can see it (private repos: a member of the owning org)"
        )
        if token is None:
            result.remedy += (
                f"; set {entry.token_env}" if entry.token_env else f"; to use a token, {login_help()}"
            )
    else:
        result.status = AccessStatus.FORBIDDEN
        result.problem = f"the Hub answered {e.status}: {e.message}"
        result.remedy = f"check the token's permissions at {endpoint}/settings/tokens"
    _masked(result)


def _masked(result: AccessResult) -> None:
    result.problem = mask_patterns(result.problem)
    result.remedy = mask_patterns(result.remedy)


def _as_other_type(hub: HubApi, entry: Entry, token: Token | None) -> str | None:
    """The other repo type under which the Hub knows `entry.repo` (a dataset listed as a model...), asked
    only once the entry's own type was not found: one request per other type. A revision missing there
    still says the repo exists."""
    for other in REPO_TYPES:
        if other == entry.type:
            continue
        try:
            hub.repo_info(entry.repo, other, entry.revision, token)
        except RevisionNotFoundError:
            return other
        except Exception:  # not there either (or no answer): this only helps
            continue
        return other
    return None


def _revision_help(hub: HubApi, entry: Entry, token: Token | None, relock: bool) -> str:
    advice = "use an existing branch, tag or full 40-character commit hash"
    if relock:
        advice = (
            f"the history was rewritten: re-resolve with `prefetch sync --upgrade-repo {entry.repo}`, or "
            + advice
        )
    try:
        branches, tags = hub.list_refs(entry.repo, entry.type, token)
    except Exception:  # the listing only helps: its failure is not the problem being reported
        return advice
    return f"{advice}; branches: {', '.join(branches) or '(none)'}; tags: {', '.join(tags) or '(none)'}"
