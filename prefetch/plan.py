"""What a sync will do, before it does it: per entry, its locked content and the blobs the cache
still lacks (`EntryPlan`, shown by `plan`, `sync --dry-run` and `--json`); what it did (`SyncResult`);
and the disk space it keeps free."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefetch.access import AccessReport
from prefetch.download.job import TransferStats
from prefetch.lockfile import Lock, LockedEntry, LockedFile
from prefetch.manifest import Entry
from prefetch.progress import human_bytes

MiB = 1024 * 1024
DISK_MARGIN = 64 * MiB  # at most this much is kept free after the planned bytes (unless --min-free)


@dataclass
class EntryPlan:
    """One entry, resolved: its locked content and the blobs the cache still lacks."""

    entry: Entry
    locked: LockedEntry
    missing: list[LockedFile] = field(default_factory=list)
    corrupt: list[LockedFile] = field(default_factory=list)  # cached but failed their hash (in `missing` too)

    def file_rows(self) -> list[dict[str, Any]]:
        """Every locked file: path, size, and whether the cache already holds it."""
        missing = {f.path for f in self.missing}
        return [{"path": f.path, "size": f.size, "cached": f.path not in missing} for f in self.locked.files]

    def header(self) -> str:
        """`repos[0] (org/x@main) -> 0123456789ab: 3 files (1.2 MiB), 1 cached, 2 to fetch (1.1 MiB)`."""
        files, missing = self.locked.files, self.missing
        size, missing_size = (
            human_bytes(sum(f.size for f in files)),
            human_bytes(sum(f.size for f in missing)),
        )
        return (
            f"{self.entry.label} -> {self.locked.commit[:12]}: {len(files)} files ({size}), "
            f"{len(files) - len(missing)} cached, {len(missing)} to fetch ({missing_size})"
        )

    def render(self, width: int | None = None) -> list[str]:
        """The header line, then one line per file (`fetch`/`cached`, size, path), fitted to `width`."""
        lines = [fit(self.header(), width)]
        for row in self.file_rows():
            prefix = f"  {'cached' if row['cached'] else 'fetch':6} {human_bytes(row['size']):>10}  "
            lines.append(
                prefix + fit(row["path"], None if width is None else width - len(prefix), middle=True)
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        files = self.locked.files
        return {
            "file_list": self.file_rows(),
            "repo": self.entry.repo,
            "type": self.entry.type,
            "revision": self.entry.revision,
            "commit": self.locked.commit,
            "files": len(files),
            "bytes": sum(f.size for f in files),
            "cached_files": len(files) - len(self.missing),
            "missing_files": len(self.missing),
            "missing_bytes": sum(f.size for f in self.missing),
            "corrupt_files": len(self.corrupt),
        }


@dataclass
class SyncResult:
    plans: list[EntryPlan]
    lock: Lock
    lock_path: Path
    cache_dir: Path
    stats: TransferStats = field(default_factory=TransferStats)
    changes: list[str] = field(default_factory=list)
    report: AccessReport | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "entries": len(self.plans),
            "files": sum(len(p.locked.files) for p in self.plans),
            "fetched_files": self.stats.files_fetched,
            "linked_files": self.stats.files_linked,
            "fetched_bytes": self.stats.bytes_fetched,
            "lockfile": str(self.lock_path),
            "cache_dir": str(self.cache_dir),
            "changes": self.changes,
        }

    def render_plan(self, width: int | None = None) -> str:
        """Every entry and its files, for `plan` and `sync --dry-run` (lines fitted to `width` when given)."""
        lines = [line for p in self.plans for line in p.render(width)]
        return "\n".join(lines) if lines else "nothing to do: the manifest lists no entry"


def fit(text: str, width: int | None, *, middle: bool = False) -> str:
    """`text` cut to `width` characters with an ellipsis (in the middle for paths, whose end matters)."""
    if width is None or len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    if middle:
        head = (width - 1) // 2
        return text[:head] + "…" + text[len(text) - (width - 1 - head) :]
    return text[: width - 1] + "…"


def disk_margin(needed: int) -> int:
    """Space kept free after a download of `needed` bytes: it scales with the plan (1 MiB + 1/16),
    up to DISK_MARGIN, so a small sync fits a small volume and a big one leaves room to breathe."""
    return min(DISK_MARGIN, MiB + needed // 16)


def first_use_key(commit: str, label: str) -> str:
    """The stand-in blob key (partial file name) of a file without a published hash, until it is hashed."""
    return "first-use-" + hashlib.sha256(f"{commit}:{label}".encode()).hexdigest()[:40]
