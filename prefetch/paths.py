"""Rules for repo-relative file paths and revisions: both become file names inside the cache.

One place, used by the manifest, the lockfile and the cache, so a hostile lockfile or server
can never name a file outside the cache.
"""

from __future__ import annotations


def unsafe_path_reason(path: str) -> str | None:
    """Why a repo-relative file path could escape the cache folder (None when it is safe)."""
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
