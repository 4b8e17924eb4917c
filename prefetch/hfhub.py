"""huggingface_hub's public rules, taken from huggingface_hub itself.

prefetch fills the cache that huggingface_hub, transformers and vLLM read, and talks to endpoints made
for huggingface_hub, so where huggingface_hub exposes a rule publicly (its constants, `validate_repo_id`,
`filter_repo_objects`, `repo_folder_name`, how `hf_raise_for_status` reads an error answer, how
`parse_ratelimit_headers` reads the `RateLimit` headers) prefetch calls it rather than restating it: the
next release's change reaches prefetch without anyone copying it.

Its cheap parts (`huggingface_hub.constants`, ~1 ms) are imported here; the rest is imported by the
function that needs it, the first time it is called (`huggingface_hub.utils` brings its HTTP client,
~30 ms; `file_download` another ~50 ms, and 10 MB of memory together): the offline commands do not
pay for them. A sync does, for the cache folder's name and the `/resolve` URL: those rules are
huggingface_hub's to state (`repo_folder_name`, `hf_hub_url`), not prefetch's to copy.

What huggingface_hub has only privately (how it reads its environment variables; the cache's lock,
ref and snapshot paths) is restated in `prefetch.settings` and `prefetch.cache`, each held to
huggingface_hub's behaviour by tests/test_hf_rules.py, which CI also runs against the newest
huggingface_hub release.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from huggingface_hub import constants

# ("model", "dataset", "space"): the repo types prefetch syncs (huggingface_hub's list has `None` for
# "the default", which is "model" here, and leaves kernels out of it).
REPO_TYPES: tuple[str, ...] = tuple(t for t in constants.REPO_TYPES if t)
DEFAULT_REPO_TYPE = constants.REPO_TYPE_MODEL
TRUE_VALUES = frozenset(constants.ENV_VARS_TRUE_VALUES)  # what an HF_* boolean variable takes as true


def url_prefix(repo_type: str) -> str:
    """The URL path a repo's pages and files sit under: `` (models), `datasets/`, `spaces/`."""
    return constants.REPO_TYPES_URL_PREFIXES.get(repo_type, "")


def api_path(repo_type: str) -> str:
    """The API's collection for a repo type: `models`, `datasets`, `spaces` (`/api/{this}/{repo_id}`)."""
    return f"{repo_type}s"


# Repo ids certainly valid, with no need to ask: a strict subset of what `validate_repo_id` accepts (ASCII,
# every part starting and ending with a letter or digit, within 96 characters), held to it by
# tests/test_hf_rules.py. It spares the offline commands (`prefetch env` in an entrypoint) the ~80 ms of
# `huggingface_hub.utils` and its HTTP client; anything else gets huggingface_hub's verdict and words.
_PLAIN_REPO_ID = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?/)?[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
)


def repo_id_problem(repo_id: str) -> str | None:
    """Why huggingface_hub would refuse `repo_id` (its own words, from `validate_repo_id`), or None."""
    if (
        _PLAIN_REPO_ID.fullmatch(repo_id)
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith(".git")
    ):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        return str(e)
    return None


def select_paths(paths: Iterable[str], include: Iterable[str] | None, exclude: Iterable[str]) -> list[str]:
    """The paths matching any `include` pattern (all when None) and no `exclude` pattern: huggingface_hub's
    `allow_patterns` / `ignore_patterns` (`filter_repo_objects`). Without patterns there is no rule to
    apply, and huggingface_hub's HTTP client is not loaded for it."""
    excluded = list(exclude)
    if include is None and not excluded:
        return list(paths)
    from huggingface_hub.utils import filter_repo_objects

    return list(
        filter_repo_objects(
            paths,
            allow_patterns=None if include is None else list(include),
            ignore_patterns=excluded or None,
        )
    )


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    """The cache folder of a repo: `models--org--name` (huggingface_hub's `repo_folder_name`)."""
    from huggingface_hub.file_download import repo_folder_name as folder_name

    return folder_name(repo_id=repo_id, repo_type=repo_type)


@dataclass(frozen=True)
class ErrorAnswer:
    """An error answer as huggingface_hub reads it: `kind` names the exception it raises (`GatedRepo`,
    `RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `DisabledRepo`, `EgressLimitReached`, or "" for
    its generic one), `server_message` the server's words, `request_id` the id to quote to the Hub."""

    kind: str
    server_message: str
    request_id: str | None


def read_error_answer(url: str, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> ErrorAnswer:
    """Read an error answer (status >= 400) with huggingface_hub's `hf_raise_for_status`.

    It takes a response of the HTTP library huggingface_hub itself uses (httpx2 in 2.x), built here from
    what prefetch's own HTTP layer received; only error answers pay for it.
    """
    import httpx2
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.utils import hf_raise_for_status

    kinds: tuple[tuple[type[Exception], str], ...] = (
        (hf_errors.GatedRepoError, "GatedRepo"),  # (a subclass of RepositoryNotFoundError: first)
        (hf_errors.RepositoryNotFoundError, "RepoNotFound"),
        (hf_errors.RevisionNotFoundError, "RevisionNotFound"),
        (hf_errors.RemoteEntryNotFoundError, "EntryNotFound"),
        (hf_errors.DisabledRepoError, "DisabledRepo"),
        (hf_errors.EgressLimitError, "EgressLimitReached"),
    )
    response = httpx2.Response(
        status, headers=list(headers), content=body, request=httpx2.Request("GET", url)
    )
    try:
        hf_raise_for_status(response)
    except hf_errors.HfHubHTTPError as e:
        kind = next((name for cls, name in kinds if isinstance(e, cls)), "")
        return ErrorAnswer(kind, (e.server_message or "").strip(), e.request_id)
    return ErrorAnswer("", "", None)


def resolve_url(endpoint: str, repo_id: str, repo_type: str, revision: str, path: str = "") -> str:
    """`{endpoint}/{prefix}{repo_id}/resolve/{revision}/{path}`, quoted as huggingface_hub's `hf_hub_url`
    quotes it (with `path` "": the prefix a repo's files share)."""
    from huggingface_hub.file_download import hf_hub_url

    return hf_hub_url(repo_id, path, repo_type=repo_type, revision=revision, endpoint=endpoint)
