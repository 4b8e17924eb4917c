"""Blob uploads to a registry (the OCI distribution spec): one PUT for a blob that fits a chunk, else
PATCHes of a chunk each and the closing PUT; resumable.

An unfinished chunked upload is remembered (`UploadStates`: its URL and acknowledged offset, in a
file only its owner can read) after each chunk the registry acknowledged, so a later run asks the
registry where it stands and resumes there; a registry that refuses that upload (the Distribution
registry 2.8 does when a broken request left bytes past the offset) gets a fresh one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from prefetch import settings
from prefetch.errors import (
    AccessError,
    HubHttpError,
    IntegrityError,
    NetworkError,
    TransportError,
    UnusableAnswer,
)
from prefetch.files import atomic_write
from prefetch.net.connection import FileBody
from prefetch.net.retry import is_retryable
from prefetch.oci.blobs import Blob
from prefetch.oci.registry import DEFAULT_CHUNK, UPLOAD_RANGE, Registry, push_scope, registry_error
from prefetch.terminal import printable


@dataclass(frozen=True)
class SavedUpload:
    location: str
    offset: int


class UploadStates:
    """Unfinished chunked uploads, one small JSON file each (`folder`, mode 0700; files 0600): the upload
    URL and the offset the registry acknowledged. None: nothing is remembered (uploads still resume
    within a run)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _path(self, base: str, repository: str, digest: str) -> Path | None:
        if self.folder is None:
            return None
        name = hashlib.sha256(f"{base}/{repository}@{digest}".encode()).hexdigest()[:40]
        return self.folder / f"{name}.json"

    def load(self, base: str, repository: str, digest: str) -> SavedUpload | None:
        path = self._path(base, repository, digest)
        try:
            data = json.loads(path.read_bytes()[:65536]) if path is not None else None
            return SavedUpload(str(data["location"]), int(data["offset"])) if isinstance(data, dict) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, base: str, repository: str, digest: str, saved: SavedUpload) -> None:
        path = self._path(base, repository, digest)
        if path is None:
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps({"location": saved.location, "offset": saved.offset}).encode()
        old = os.umask(0o077)
        try:
            atomic_write(path, data, durable=False)
        finally:
            os.umask(old)

    def clear(self, base: str, repository: str, digest: str) -> None:
        path = self._path(base, repository, digest)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def default_upload_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """`${XDG_STATE_HOME:-~/.local/state}/prefetch/oci-uploads`."""
    return settings.state_home(env) / "prefetch" / "oci-uploads"


@dataclass
class UploadResult:
    sent: int  # bytes sent in this run
    resumed_at: int  # offset a remembered or broken upload resumed from (0: from the start)
    restarts: int = 0  # uploads the registry refused to resume, started again


class BlobUpload:
    """The uploads of one registry's blobs (its requests, auth and retries are the `Registry`'s)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def start(self, repository: str) -> tuple[str, int]:
        url = f"{self.registry.base}/v2/{repository}/blobs/uploads/"

        def attempt() -> tuple[str, int]:
            response = self.registry.send("POST", url, (push_scope(repository),), body=b"")
            if response.status_code != 202 or "location" not in response.headers:
                raise registry_error(url, response, "start an upload")
            location = urljoin(url, response.headers["location"])
            minimum = response.headers.get("oci-chunk-min-length", "")
            response.close()
            return location, int(minimum) if minimum.isdigit() else 0

        started: tuple[str, int] = self.registry.call("start an upload", attempt)
        return started

    def status(self, repository: str, location: str) -> SavedUpload | None:
        """Where an upload stands (GET: 204 + Range); None when the registry does not know or refuses it."""
        try:
            response = self.registry.send("GET", location, (push_scope(repository),))
        except (TransportError, AccessError):
            return None
        try:
            if response.status_code != 204:
                return None
            match = UPLOAD_RANGE.fullmatch(response.headers.get("range", "").strip())
            offset = int(match.group(1)) + 1 if match else 0
            if match and match.group(1) == "0":
                offset = 0  # "0-0" is empty or one byte: restart that byte rather than skip it
            return SavedUpload(urljoin(location, response.headers.get("location") or location), offset)
        finally:
            response.close()

    def finish(self, repository: str, location: str, blob: Blob, body: bytes | FileBody) -> None:
        sep = "&" if urlsplit(location).query else "?"
        url = f"{location}{sep}{urlencode({'digest': blob.digest})}"
        headers = {"content-type": "application/octet-stream"}
        response = self.registry.send("PUT", url, (push_scope(repository),), headers, body)
        if response.status_code == 201:
            response.close()
            return
        error = registry_error(url, response, f"upload of {blob.digest}")
        if error.error_code == "DIGEST_INVALID":
            raise IntegrityError(
                f"{self.registry.base}/{repository}: the registry computed another digest than {blob.digest} for the "
                f"{blob.size} bytes sent: the cache's blob is corrupt (run `prefetch verify`)"
            )
        raise error

    def send(
        self,
        repository: str,
        blob: Blob,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        states: UploadStates | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> UploadResult:
        """Upload `blob` (its bytes read from its parts): one PUT when it fits a chunk, else PATCHes of
        `chunk_size` bytes (or the registry's `OCI-Chunk-Min-Length`) then the closing PUT. A remembered
        upload (`states`) resumes where the registry says it stands; a failed chunk is retried from
        the registry's offset, within the retry budget."""
        states = states or UploadStates(None)
        key = (self.registry.base, repository, blob.digest)
        result = UploadResult(0, 0)
        saved = states.load(*key)
        status = self.status(repository, saved.location) if saved else None
        if saved and status is None:
            result.restarts += 1
            states.clear(*key)
        minimum = 0
        if status is None:
            location, minimum = self.start(repository)
            offset = 0
        else:
            location, offset = status.location, status.offset
            result.resumed_at = offset
        chunk = max(chunk_size, minimum, 1)
        retried = False

        def send_the_rest() -> None:
            """One attempt: from where the registry says the upload stands (after a failure), the
            remaining chunks, then the closing PUT."""
            nonlocal location, offset, minimum, retried
            if retried:
                status = self.status(repository, location)
                if status is None:  # unknown to the registry, or refused at its offset: anew
                    result.restarts += 1
                    location, minimum = self.start(repository)
                    offset = 0
                else:
                    location, offset = status.location, status.offset
            retried = True
            while True:
                if offset == 0 and blob.size <= chunk:
                    self.finish(repository, location, blob, FileBody(reader, 0, blob.size))
                    result.sent += blob.size
                    if progress:
                        progress(blob.size)
                    return
                if offset >= blob.size:
                    self.finish(repository, location, blob, b"")
                    return
                before = offset
                location, offset = self.patch(
                    repository, location, reader, offset, min(chunk, blob.size - offset)
                )
                states.save(*key, SavedUpload(location, offset))
                result.sent += offset - before
                if progress:
                    progress(offset - before)

        with blob.open() as reader:
            try:
                self.registry.http.retry.call(
                    send_the_rest,
                    f"upload of {blob.digest}",
                    cancel=self.registry.cancel,
                    retryable=_upload_retryable,
                )
            except (TransportError, HubHttpError) as exc:
                if not _upload_retryable(exc):
                    raise
                raise NetworkError(
                    f"{self.registry.base}/{repository}: upload of {blob.digest}: {printable(str(exc))}"
                ) from exc
        states.clear(*key)
        return result

    def patch(self, repository: str, location: str, reader: Any, offset: int, length: int) -> tuple[str, int]:
        headers = {
            "content-type": "application/octet-stream",
            "content-range": f"{offset}-{offset + length - 1}",
        }
        response = self.registry.send(
            "PATCH", location, (push_scope(repository),), headers, FileBody(reader, offset, length)
        )
        if response.status_code != 202:
            raise registry_error(location, response, f"PATCH {offset}-{offset + length - 1}")
        match = UPLOAD_RANGE.fullmatch(response.headers.get("range", "").strip())
        new_location = urljoin(location, response.headers.get("location") or location)
        response.close()
        end = int(match.group(1)) + 1 if match else offset + length
        if end != offset + length:
            raise UnusableAnswer(
                f"{self.registry.base}: after a chunk ending at {offset + length} the registry stands at {end}"
            )
        return new_location, end


def _upload_retryable(exc: BaseException) -> bool:
    """An upload is tried again (from where the registry says it stands) after what is worth a retry, and
    after the registry's refusal of a chunk at its offset (400, 404, 416: it lost or moved the upload)."""
    return is_retryable(exc) or (isinstance(exc, HubHttpError) and exc.status in (400, 404, 416))
