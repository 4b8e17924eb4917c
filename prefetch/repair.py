"""`verify --repair`: the offline verify, then, for what it found missing or corrupt, a sync of the lock
as it is (`--frozen --verify`), then the verify again."""

from __future__ import annotations

from pathlib import Path

from prefetch.cancel import CancelToken
from prefetch.errors import UsageError, VerifyError
from prefetch.lockfile import load_lock
from prefetch.offline.shared import cache_root
from prefetch.offline.verify import VerifyReport
from prefetch.offline.verify import verify as verify_cache
from prefetch.progress import Progress
from prefetch.run import Settings
from prefetch.sync import sync


def repair(
    lock_path: Path,
    *,
    manifest_path: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> VerifyReport:
    """`verify --repair`: verify the cache against the lock; if anything is missing or corrupt, fetch it
    again as `sync --frozen --verify` would, then verify again.

    Re-fetching needs what a sync needs: the endpoint, tokens and proxies come from the manifest
    (default: the lockfile's name with `.yaml`) and the environment, as for `sync`.
    """
    try:
        return verify_cache(lock_path, cache_dir=cache_dir)
    except VerifyError as e:
        problems = e.problems
    manifest = manifest_path or lock_path.with_suffix(".yaml")
    if not manifest.exists():
        raise UsageError(
            f"{len(problems)} problem(s) in the cache; --repair fetches again from the Hub with the manifest's "
            f"settings, and {manifest} does not exist: name the manifest with --manifest"
        )
    root = cache_root(load_lock(lock_path), lock_path, cache_dir)
    if progress is not None:
        progress.message(f"repairing {len(problems)} problem(s) in {root} from the Hub")
    sync(
        manifest,
        settings=Settings(lock_path=lock_path, cache_dir=root),
        frozen=True,
        verify=True,
        progress=progress,
        cancel=cancel,
    )
    return verify_cache(lock_path, cache_dir=root)
