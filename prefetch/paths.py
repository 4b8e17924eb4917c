"""Rules for repo-relative file paths and revisions (paths and revisions become file names inside the
cache), and the message for a pattern that matches nothing.

One place, used by the manifest, the lockfile and the cache, so a hostile lockfile or server can never
name a file outside the cache. (Repo ids and patterns follow huggingface_hub's own rules: `hfhub`.)
"""

from __future__ import annotations

import difflib


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
