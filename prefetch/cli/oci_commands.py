"""`prefetch push`: a lock's cached files as OCI artifacts, one call into `prefetch.oci.push`.

Loaded only when it runs (see `prefetch.cli.lazy_group`). Pulling back is `sync --source` (hub_commands):
the same sync, its bytes from the artifact instead of the Hub.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import click

from prefetch.cli.command import command
from prefetch.cli.context import Context, pass_ctx
from prefetch.cli.options import SizeType, cache_opt
from prefetch.oci import push as push_mod
from prefetch.oci.push import PROFILES, Moved
from prefetch.oci.registry import DEFAULT_CHUNK
from prefetch.oci.volume import DEFAULT_PLATFORMS
from prefetch.progress import Progress

PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+")  # os/architecture, as an image config names them


class _PushDisplay:
    """The run's display, told of a push's `Moved`: its totals once, then the bytes and blobs handled."""

    def __init__(self, display: Progress) -> None:
        self.display = display
        self.started = False
        self.bytes = 0
        self._lock = threading.Lock()

    def __call__(self, moved: Moved) -> None:
        with self._lock:
            if not self.started:
                self.display.start(moved.total_bytes, moved.total_blobs)
                self.started = True
            delta, self.bytes = moved.bytes - self.bytes, max(self.bytes, moved.bytes)
            self.display.done_files = max(self.display.done_files, moved.blobs)  # blobs are its "files"
        if delta > 0:
            self.display.advance(delta)


def _lock_and_target(arguments: tuple[str, ...]) -> tuple[Path, str]:
    if len(arguments) == 1:
        return Path("models.lock"), arguments[0]
    if len(arguments) == 2:
        return Path(arguments[0]), arguments[1]
    raise click.UsageError("expected [LOCKFILE] TARGET (TARGET: oci://REGISTRY/REPO:TAG or oci:DIR[:TAG])")


@command(
    "prefetch push oci://registry.internal/ml/models:prod   # models.lock's files",
    "prefetch push models.lock oci:./models-oci:v1   # a folder, for skopeo copy into an air gap",
    "prefetch push --profile image-volume oci://registry.internal/ml/hf-cache:v1",
)
@click.argument("arguments", nargs=-1, required=True, metavar="[LOCKFILE] TARGET")
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="modelpack",
    show_default=True,
    help="modelpack: a CNCF ModelPack artifact per locked entry (raw file layers, what `sync --source` reads); "
    "image-volume: an image whose layers unpack to a read-only HF cache (Kubernetes image volumes).",
)
@click.option(
    "--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True, help="Blobs sent at once."
)
@cache_opt
@click.option(
    "--mount-from",
    "mount_from",
    multiple=True,
    metavar="REPO",
    help="A repository of the same registry to mount blobs from instead of sending them (repeatable).",
)
@click.option(
    "--chunk-size",
    type=SizeType(),
    default=f"{DEFAULT_CHUNK >> 20}M",
    show_default=True,
    help="A bigger blob goes up in chunks of this size (what a broken connection costs; a proxy's body limit).",
)
@click.option(
    "--plain-http/--tls",
    "plain_http",
    default=None,
    help="http:// or https:// to the registry (default: plain http to a loopback registry only).",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH",
    help=f"image-volume: a platform to list the image under (repeatable; default {', '.join(DEFAULT_PLATFORMS)}).",
)
@pass_ctx
def push(
    c: Context,
    arguments: tuple[str, ...],
    profile: str,
    jobs: int,
    cache_dir: Path | None,
    mount_from: tuple[str, ...],
    chunk_size: int,
    plain_http: bool | None,
    platforms: tuple[str, ...],
) -> None:
    """Push the locked files as OCI artifacts to a registry or an OCI layout folder (an index of all).

    Blobs the registry has are skipped, others mounted or uploaded (resumable); the login comes from
    REGISTRY_AUTH_FILE, podman's or docker's auth files. Pin what it prints: oci://REGISTRY/REPO@DIGEST.
    """
    lock_path, target = _lock_and_target(arguments)
    bad = [p for p in platforms if not PLATFORM.fullmatch(p)]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not OS/ARCH (e.g. linux/amd64)", param_hint="--platform")
    if platforms and profile != "image-volume":
        raise click.BadParameter("only the image-volume profile has platforms", param_hint="--platform")
    display = c.progress()
    try:
        report = push_mod.push(
            lock_path,
            target,
            cache_dir=cache_dir,
            profile=profile,
            jobs=jobs,
            progress=_PushDisplay(display),
            cancel=c.cancel,
            mount_from=mount_from,
            chunk_size=chunk_size,
            plain_http=plain_http,
            platforms=tuple(dict.fromkeys(platforms)) or DEFAULT_PLATFORMS,
            secrets=c.secrets,
        )
    finally:
        display.close()
    c.show(report)
