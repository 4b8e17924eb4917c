"""Rules for repo ids, repo-relative file paths and revisions (paths and revisions become file names
inside the cache).

One place, used by the manifest, the lockfile and the cache, so a hostile lockfile or server
can never name a file outside the cache.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

# huggingface_hub's own rules (utils/_validators.py `validate_repo_id`, utils/_paths.py
# `filter_repo_objects`), restated here because importing huggingface_hub.utils costs every run
# ~45 ms (it loads huggingface_hub's HTTP client). tests/test_paths.py holds them to huggingface_hub's.
_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", re.ASCII)


def repo_id_problem(repo_id: str) -> str | None:
    """Why huggingface_hub would refuse `repo_id` (its own wording), or None."""
    if repo_id.count("/") > 1:
        return f"Repo id must be in the form 'repo_name' or 'namespace/repo_name': '{repo_id}'."
    if not _REPO_ID.fullmatch(repo_id):
        return (
            "Repo id must use alphanumeric chars, '-', '_' or '.'. The name cannot start or end with '-' or '.' "
            f"and the maximum length is 96: '{repo_id}'."
        )
    if "--" in repo_id or ".." in repo_id:
        return f"Cannot have -- or .. in repo_id: '{repo_id}'."
    if repo_id.endswith(".git"):
        return f"Repo_id cannot end by '.git': '{repo_id}'."
    return None


def select_paths(paths: Iterable[str], include: Iterable[str] | None, exclude: Iterable[str]) -> list[str]:
    """The paths matching any `include` pattern (all when None) and no `exclude` pattern, as
    huggingface_hub's allow/ignore patterns: fnmatch, `*` crosses `/`, a trailing `/` means the folder."""

    def normalized(patterns: Iterable[str]) -> list[str]:
        slashed = [p.replace("\\", "/") for p in patterns]
        return [p + "*" if p.endswith("/") else p for p in slashed]

    allow = None if include is None else normalized(include)
    ignore = normalized(exclude)
    return [
        path
        for path in paths
        if (allow is None or any(fnmatchcase(path.replace("\\", "/"), p) for p in allow))
        and not any(fnmatchcase(path.replace("\\", "/"), p) for p in ignore)
    ]


def unmatched_pattern_message(pattern: str, paths: list[str]) -> str:
    """Why `pattern` is wrong, for a pattern that matches none of `paths`: the closest file names."""
    names = sorted({*paths, *(path.rsplit("/", 1)[-1] for path in paths)})
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    hint = f"closest file names: {', '.join(close)}" if close else f"the repo has {len(paths)} files"
    if not paths:
        hint = "the repo has no file"
    return f"pattern {pattern!r} matches no file of the repo ({hint})"


def unsafe_path_reason(path: str) -> str | None:
    """Why a repo-relative file path could escape the cache folder (None when it is safe)."""
    if (  # the usual path, cleared in a few substring tests (asked per file, several times per run)
        path
        and path[0] not in "./"
        and path[-1] != "/"
        and "/." not in path
        and "//" not in path
        and "\\" not in path
        and "\0" not in path
    ):
        return None
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path"
    if "\\" in path:
        return "backslash in path"
    if "\0" in path:
        return "NUL character in path"
    segments = path.split("/")
    if any(s == ".." for s in segments):
        return "'..' segment"
    if any(s in ("", ".") for s in segments):
        return "empty or '.' segment"
    return None


def revision_problem(value: str) -> str | None:
    """Why `value` cannot be a revision (it also names a file under `refs/` in the cache); None if fine."""
    if not value:
        return "expected a revision (a branch, tag or 40-hex commit), got ''"
    if any(c.isspace() for c in value) or not value.isprintable():
        return f"revision {value!r} must not contain whitespace or control characters"
    if value.startswith("/"):
        return f"revision {value!r} must not start with '/'"
    if ".." in value or "\\" in value:
        return f"revision {value!r} must not contain '..' or '\\'"
    reason = unsafe_path_reason(value)
    return f"revision {value!r} cannot name a file under refs/: {reason}" if reason else None
