"""Where an artifact lives: `oci://REGISTRY[:PORT]/REPO[:TAG|@DIGEST]` (a registry) or `oci:DIR[:TAG]` (an
OCI image layout folder), parsed by the OCI distribution spec's grammar.

A reference is input (a manifest line, a command-line argument), and its parts become URL paths and
file names, so anything outside the grammar is refused, with bounded lengths, before any request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from prefetch.errors import UsageError
from prefetch.terminal import printable
from prefetch.urls import is_loopback_host

MAX_REFERENCE = 4096  # characters of a whole reference (a layout folder's path included)
MAX_NAME = 255  # a repository name (distribution's limit, host excluded)
DEFAULT_TAG = "latest"

# The distribution spec's grammar (docker/distribution reference/regexp.go).
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")  # the only algorithm prefetch writes or accepts
_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{{1,5}}))?")


@dataclass(frozen=True)
class RegistryRef:
    """A repository on a registry, with the tag or digest it names (one of them; `tag` defaults to latest)."""

    registry: str  # host[:port], as written (host lower-cased)
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after `/manifests/`: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def host(self) -> str:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.endswith("]") else self.registry
        return host.strip("[]") if host.startswith("[") else host

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def with_tag(self, tag: str) -> RegistryRef:
        return replace(self, tag=check_tag(tag), digest=None)

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else ""
        return f"oci://{self.registry}/{self.repository}{suffix}"


@dataclass(frozen=True)
class LayoutRef:
    """An OCI image layout folder and the tag (`org.opencontainers.image.ref.name`) it names."""

    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


Reference = RegistryRef | LayoutRef


def check_tag(tag: str) -> str:
    if not TAG.fullmatch(tag):
        raise UsageError(
            f"invalid tag {printable(tag[:140])!r}: up to 128 of A-Z a-z 0-9 _ . - (not first: . -)"
        )
    return tag


def parse_reference(text: str) -> Reference:
    """`oci://REGISTRY[:PORT]/REPO[:TAG|@DIGEST]` or `oci:DIR[:TAG]`; UsageError (exit 2) otherwise."""
    if len(text) > MAX_REFERENCE:
        raise UsageError(
            f"refusing an OCI reference of {len(text)} characters (the limit is {MAX_REFERENCE})"
        )
    shown = printable(text[:200])
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UsageError(f"invalid OCI reference {shown!r}: it contains spaces or control characters")
    if text.startswith("oci://"):
        return _registry_ref(text[len("oci://") :], shown)
    if text.startswith("oci:"):
        return _layout_ref(text[len("oci:") :], shown)
    raise UsageError(
        f"invalid OCI reference {shown!r}: expected oci://REGISTRY/REPO[:TAG|@DIGEST] or oci:DIR[:TAG]"
    )


def _registry_ref(rest: str, shown: str) -> RegistryRef:
    registry, slash, path = rest.partition("/")
    if not slash or not path:
        raise UsageError(f"invalid OCI reference {shown!r}: no repository after the registry")
    host = _HOST.fullmatch(registry)
    if host is None or (host.group(1) is not None and not 0 < int(host.group(1)) < 65536):
        raise UsageError(
            f"invalid OCI reference {shown!r}: {printable(registry[:100])!r} is not a host[:port]"
        )
    digest = tag = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not DIGEST.fullmatch(digest):
            raise UsageError(f"invalid OCI reference {shown!r}: the digest must be sha256:<64 lowercase hex>")
    else:
        name_end = path.rfind("/") + 1
        colon = path.find(":", name_end)
        if colon >= 0:
            path, tag = path[:colon], check_tag(path[colon + 1 :])
    if len(path) > MAX_NAME or not NAME.fullmatch(path):
        raise UsageError(
            f"invalid OCI reference {shown!r}: the repository must be lowercase path components of "
            f"a-z 0-9 separated by . _ __ or - (at most {MAX_NAME} characters)"
        )
    host_part = registry.lower() if not registry.startswith("[") else registry
    return RegistryRef(host_part, path, tag, digest)


def _layout_ref(rest: str, shown: str) -> LayoutRef:
    folder, colon, tag = rest.partition(":")  # as containers/image's oci: transport (no ':' in DIR)
    if not folder:
        raise UsageError(f"invalid OCI reference {shown!r}: no folder after oci:")
    return LayoutRef(Path(folder), check_tag(tag) if colon else None)
