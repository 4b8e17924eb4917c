"""`push`: a lock's cached files as OCI artifacts, to a registry (`oci://REGISTRY/REPO[:TAG]`) or an OCI
image layout folder (`oci:DIR[:TAG]`), as a library call a thin CLI command wraps.

Order (a registry): every locked blob must be in the cache with its size (else exit 7, nothing sent);
the registry is pinged (its auth learnt); the distinct blobs (a blob shared by two entries is one
blob) go up in parallel, at most `jobs` at once, largest first: skipped when the repository has
them (HEAD), mounted when another repository of the same registry does (`mount_from`, and the
repositories this machine pushed to there before), else uploaded; then each manifest (by digest),
then the index, tagged. Manifests the registry has are not sent again, so a second push of the same
lock sends no byte but HEADs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefetch.auth import Secrets
from prefetch.cancel import CancelToken
from prefetch.errors import Cancelled, HubHttpError, UsageError
from prefetch.lockfile import Lock, load_lock, require_hashes
from prefetch.oci.blobs import Blob
from prefetch.oci.credentials import find_login
from prefetch.oci.layout import write_layout
from prefetch.oci.modelpack import Artifact, modelpack
from prefetch.oci.reference import (
    DEFAULT_TAG,
    MAX_NAME,
    NAME,
    LayoutRef,
    Reference,
    RegistryRef,
    parse_reference,
)
from prefetch.oci.registry import DEFAULT_CHUNK, Registry
from prefetch.oci.upload import BlobUpload, UploadStates, default_upload_state_dir
from prefetch.oci.volume import DEFAULT_PLATFORMS, volume_image
from prefetch.offline.shared import Report, cache_root, locked_blobs, verify_error
from prefetch.progress import human_bytes
from prefetch.settings import RetrySettings
from prefetch.terminal import printable

PROFILES = ("modelpack", "image-volume")
MAX_MOUNT_SOURCES = 4  # repositories tried per blob for a mount
MAX_KNOWN_REPOSITORIES = 32  # remembered per registry
END_WAIT = 2.0  # seconds an interrupted push waits for its requests to end before it leaves them


@dataclass
class PushReport(Report):
    target: str
    profile: str
    digest: str  # the index's: pin it as oci://REGISTRY/REPO@DIGEST
    tag: str
    entries: int
    files: int
    blobs: int
    bytes: int
    uploaded: int = 0  # blobs sent (whole or resumed)
    uploaded_bytes: int = 0  # bytes sent in this run
    present: int = 0  # blobs the target had already
    mounted: int = 0  # blobs mounted from another repository of the registry
    resumed: int = 0  # uploads resumed from an earlier run's or a broken request's offset
    linked: int = 0  # layout: blobs hard-linked from the cache
    manifests_sent: int = 0
    manifests: dict[str, str] = field(default_factory=dict)  # entry key -> its manifest's digest

    def render(self) -> str:
        if self.target.startswith("oci:") and not self.target.startswith("oci://"):
            moved = (
                f"{self.uploaded} blobs written, {self.linked} hard-linked from the cache, "
                f"{self.present} there already"
            )
        else:
            moved = (
                f"{self.uploaded} blobs uploaded ({human_bytes(self.uploaded_bytes)}), {self.present} there already, "
                f"{self.mounted} mounted from another repository, {self.resumed} resumed"
            )
        return (
            f"pushed {self.entries} entries ({self.files} files, {self.blobs} blobs, {human_bytes(self.bytes)}) "
            f"as {self.profile} to {self.target}\n  {moved}\n  index {self.digest}"
        )


@dataclass(frozen=True)
class Moved:
    """How far a push is: bytes and blobs handled (sent, mounted, or found there) of the artifact's."""

    bytes: int
    total_bytes: int
    blobs: int
    total_blobs: int


class _Tally:
    """A push's `Moved`, counted from many threads, told to `progress` after each step."""

    def __init__(self, artifact: Artifact, progress: Callable[[Moved], None] | None) -> None:
        self.total_bytes, self.total_blobs = artifact.bytes, len(artifact.blobs)
        self.progress = progress
        self.bytes = self.blobs = 0
        self._lock = threading.Lock()

    def advance(self, nbytes: int, blobs: int = 0) -> None:
        with self._lock:
            self.bytes += nbytes
            self.blobs += blobs
            moved = Moved(self.bytes, self.total_bytes, self.blobs, self.total_blobs)
        if self.progress:
            self.progress(moved)


def _check_cache(lock: Lock, lock_path: Path, root: Path) -> None:
    """Every locked blob regular and of its size in the cache, or exit 7 listing the ones that are not."""
    problems = []
    for blob in locked_blobs(lock, root):
        try:
            st = os.lstat(blob.file)
        except FileNotFoundError:
            problems.append(f"missing blob {blob.etag} ({blob.size} bytes) for {blob.who()}")
            continue
        if not os.path.isfile(blob.file) or os.path.islink(blob.file) or st.st_size != blob.size:
            problems.append(
                f"blob {blob.etag} for {blob.who()} has {st.st_size} bytes, the lock says {blob.size}"
            )
    if problems:
        raise verify_error(f"cannot push {lock_path}", root, problems, "sync the lock into this cache first")


def build(lock: Lock, root: Path, profile: str, platforms: tuple[str, ...] = DEFAULT_PLATFORMS) -> Artifact:
    if profile == "modelpack":
        return modelpack(lock, root)
    if profile == "image-volume":
        return volume_image(lock, root, platforms)
    raise UsageError(f"unknown push profile {profile!r} (one of {', '.join(PROFILES)})")


class _KnownRepositories:
    """The repositories of a registry this machine pushed to (most recent first): mount sources."""

    def __init__(self, folder: Path | None, base: str) -> None:
        name = hashlib.sha256(base.encode()).hexdigest()[:32]
        self.path = folder / "registries" / f"{name}.json" if folder else None

    def load(self) -> list[str]:
        if self.path is None:
            return []
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_bytes()[:65536])
            if isinstance(data, list):
                return [r for r in data if isinstance(r, str)][:MAX_KNOWN_REPOSITORIES]
        return []

    def add(self, repository: str) -> None:
        if self.path is None:
            return
        known = [repository, *(r for r in self.load() if r != repository)][:MAX_KNOWN_REPOSITORIES]
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.path.write_text(json.dumps(known))


def _in_parallel(fn: Callable[[Blob], None], blobs: list[Blob], jobs: int, cancel: CancelToken) -> None:
    """`fn` over `blobs` in order by at most `jobs` threads; the first failure cancels the others and is
    raised once they ended. Interrupted (Ctrl-C reaches this thread), the others are cancelled and given
    `END_WAIT` seconds: a request the registry holds unanswered may take the read timeout to fail, so it is
    left to its (daemon) thread, which the process does not wait for; the chunks the registry
    acknowledged are remembered, and the next push resumes after them."""
    todo = iter(blobs)
    take = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while not cancel.cancelled:
            with take:
                blob = next(todo, None)
            if blob is None:
                return
            try:
                fn(blob)
            except BaseException as exc:
                errors.append(exc)
                cancel.cancel()

    threads = [
        threading.Thread(target=work, name=f"prefetch-push-{i}", daemon=True)
        for i in range(max(1, min(jobs, len(blobs))))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        cancel.cancel()
        deadline = time.monotonic() + END_WAIT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    failure = next((e for e in errors if not isinstance(e, Cancelled)), None)
    if failure is not None:
        raise failure


def push(
    lock_path: str | Path,
    target: str | Reference,
    *,
    cache_dir: str | Path | None = None,
    profile: str = "modelpack",
    jobs: int = 4,
    progress: Callable[[Moved], None] | None = None,
    cancel: CancelToken | None = None,
    env: Mapping[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    state_dir: Path | None = None,
    mount_from: Sequence[str] = (),
    plain_http: bool | None = None,
    retry: RetrySettings | None = None,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    secrets: Secrets | None = None,
) -> PushReport:
    """Push the lock's entries as `profile` artifacts to `target` (see the module's docstring).

    `progress(Moved)`: bytes and blobs handled (sent, or found there), first with none yet. `state_dir`: where
    unfinished uploads and known repositories are remembered (default
    `${XDG_STATE_HOME:-~/.local/state}/prefetch/oci-uploads`). `cancel`: stops between requests and
    chunks (Cancelled). Errors are prefetch's: exit 7 for a cache that lacks a blob, 3 for refused
    credentials, 4 for a registry that stays unreachable, 5 for bytes the registry finds corrupt.
    """
    lock_path = Path(lock_path)
    ref = parse_reference(target) if isinstance(target, str) else target
    lock = load_lock(lock_path)
    require_hashes(lock, "push")
    root = cache_root(lock, lock_path, cache_dir)
    _check_cache(lock, lock_path, root)
    artifact = build(lock, root, profile, platforms)
    report = PushReport(
        target=str(ref),
        profile=profile,
        digest=artifact.index.digest,
        tag=(ref.tag or DEFAULT_TAG),
        entries=len(lock.entries),
        files=artifact.files,
        blobs=len(artifact.blobs),
        bytes=artifact.bytes,
        manifests={m.entry.key: m.digest for m in artifact.manifests if m.entry is not None},
    )
    cancel = cancel or CancelToken()
    tally = _Tally(artifact, progress)
    tally.advance(0)
    if isinstance(ref, LayoutRef):

        def written(blob: Blob) -> None:
            if blob.digest in artifact.blobs:  # (the manifests and the index are not counted)
                tally.advance(blob.size, 1)

        stats, report.tag = write_layout(artifact, ref, written)
        report.uploaded, report.linked, report.present = stats.written, stats.linked, stats.present
        report.uploaded_bytes = stats.bytes_written
        return report
    if ref.digest is not None:
        raise UsageError(f"{ref}: push to a tag (oci://REGISTRY/REPO:TAG), not a digest")
    for source in mount_from:
        if len(source) > MAX_NAME or not NAME.fullmatch(source):
            raise UsageError(f"cannot mount from {printable(source[:100])!r}: not a repository name (a/b)")
    _push_to_registry(
        artifact,
        ref,
        report,
        jobs,
        tally,
        cancel,
        env,
        chunk_size,
        state_dir,
        mount_from,
        plain_http,
        retry,
        secrets,
    )
    return report


def _push_to_registry(
    artifact: Artifact,
    ref: RegistryRef,
    report: PushReport,
    jobs: int,
    tally: _Tally,
    cancel: CancelToken,
    env: Mapping[str, str] | None,
    chunk_size: int,
    state_dir: Path | None,
    mount_from: Sequence[str],
    plain_http: bool | None,
    retry: RetrySettings | None,
    secrets: Secrets | None,
) -> None:
    state_dir = state_dir or default_upload_state_dir(env)
    states = UploadStates(state_dir / "uploads")
    login = find_login(ref.registry, ref.repository, env)
    repo = ref.repository
    lock = threading.Lock()

    with Registry(
        ref,
        login,
        plain_http=plain_http,
        retry=retry,
        cancel=cancel,
        env=env,
        pool_size=jobs + 2,
        secrets=secrets,
    ) as registry:
        known = _KnownRepositories(state_dir, registry.base)
        uploads = BlobUpload(registry)
        sources = [r for r in (*mount_from, *known.load()) if r != repo]
        sources = list(dict.fromkeys(sources))[:MAX_MOUNT_SOURCES]
        registry.ping(repo)

        def one(blob: Blob) -> None:
            cancel.raise_if_cancelled()
            if registry.blob_size(repo, blob.digest, push=True) is not None:
                with lock:
                    report.present += 1
                tally.advance(blob.size, 1)
                return
            for source in sources:
                with contextlib.suppress(HubHttpError):
                    if registry.mount(repo, blob.digest, source):
                        with lock:
                            report.mounted += 1
                        tally.advance(blob.size, 1)
                        return
            result = uploads.send(repo, blob, chunk_size=chunk_size, states=states, progress=tally.advance)
            with lock:
                report.uploaded += 1
                report.uploaded_bytes += result.sent
                report.resumed += bool(result.resumed_at)
            tally.advance(blob.size - result.sent, 1)

        blobs = sorted(artifact.blobs.values(), key=lambda b: (-b.size, b.digest))
        _in_parallel(one, blobs, jobs, cancel)
        for manifest in artifact.manifests:
            if registry.manifest_digest(repo, manifest.digest) != manifest.digest:
                registry.put_manifest(repo, manifest.digest, manifest.media_type, manifest.data)
                report.manifests_sent += 1
        index = artifact.index
        if registry.manifest_digest(repo, report.tag) != index.digest:
            registry.put_manifest(repo, report.tag, index.media_type, index.data)
            report.manifests_sent += 1
        known.add(repo)
    if cancel.cancelled:
        raise Cancelled()
