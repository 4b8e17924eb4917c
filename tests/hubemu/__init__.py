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
from .ratelimit import LOCAL_ANONYMOUS, TIER_QUOTAS, BucketCount, RateLimiter
from .store import Repo, StoredFile, git_blob_sha1

__all__ = [
    "LOCAL_ANONYMOUS",
    "PROFILES",
    "TIER_QUOTAS",
    "BucketCount",
    "Fault",
    "ForwardProxy",
    "HubEmulator",
    "RateLimiter",
    "Repo",
    "RequestRecord",
    "SharedLink",
    "StoredFile",
    "git_blob_sha1",
]
