"""Benchmark peer: hf_transfer, called once per file as huggingface_hub < 1.0 called it.

With HF_HUB_ENABLE_HF_TRANSFER=1, `hf_hub_download` resolved the file's URL first (a HEAD that
followed the redirect to the CDN), then handed that final URL to `hf_transfer.download` with
max_files=HF_TRANSFER_CONCURRENCY (100) and chunk_size=DOWNLOAD_CHUNK_SIZE (10 MiB);
`snapshot_download` ran 8 files at a time. This script does the transfer part only, on URLs that
are already final (bench/hubserver.py's `final_urls`): no metadata requests, no hashing, no fsync,
so it is a floor for that stack rather than the stack itself.

    python bench/hf_transfer_peer.py JOBS.json     # [[url, filename], ...]
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hf_transfer  # type: ignore[import-not-found]  # only for this benchmark peer, not a dependency

MAX_FILES = 100  # huggingface_hub's HF_TRANSFER_CONCURRENCY
CHUNK_SIZE = 10 * 1024 * 1024  # huggingface_hub's DOWNLOAD_CHUNK_SIZE
FILES_AT_ONCE = 8  # snapshot_download's max_workers


def fetch(job: list[str]) -> None:
    url, filename = job
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    hf_transfer.download(
        url=url,
        filename=filename,
        max_files=MAX_FILES,
        chunk_size=CHUNK_SIZE,
        parallel_failures=3,
        max_retries=5,
        headers=None,
    )


def main(argv: list[str]) -> int:
    jobs = json.loads(Path(argv[0]).read_text())
    with ThreadPoolExecutor(FILES_AT_ONCE) as pool:
        list(pool.map(fetch, jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
