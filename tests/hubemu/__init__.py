"""Local Hugging Face Hub emulator and test forward proxy (standard library only).

Usage::

    from tests.hubemu import HubEmulator, ForwardProxy, Fault

    with HubEmulator() as hub:
        repo = hub.create_repo("org/name")
        repo.commit({"config.json": b"{}"})
        ...  # point huggingface_hub / prefetch at hub.url
"""

from ._httpbase import SharedLink
from .hub import PROFILES, Fault, HubEmulator, RequestRecord
from .proxy import ForwardProxy
from .store import Repo, StoredFile, git_blob_sha1

__all__ = [
    "PROFILES",
    "Fault",
    "ForwardProxy",
    "HubEmulator",
    "Repo",
    "RequestRecord",
    "SharedLink",
    "StoredFile",
    "git_blob_sha1",
]
