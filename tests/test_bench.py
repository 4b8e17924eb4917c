"""The benchmark's plumbing (bench/): nginx in front of the test Hub, the Hub process's commands, the docs it writes.

Real sockets only: the test Hub runs as the bench runs it (bench/hubserver.py in its own process), nginx as
bench/nginx.py starts it, and curl is the client. The benchmark itself (`bench/run.py --quick`) runs in
tests/test_progress.py under `-m soak`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.hubserver import BenchHub, populate
from bench.nginx import NGINX, NginxFront
from bench.run import Hub, Run, markdown, quota_floor, readme_section, replace_between, summarize

KiB = 1024
LFS_SIZE = 300 * KiB
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install nginx-light)")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """The bench's test Hub process: one LFS file (300 KiB) and 5 small regular files."""
    folder = tmp_path_factory.mktemp("hub")
    process = Hub([f"bench/lfs:1:{LFS_SIZE}:lfs", "bench/small:5:256:small"], folder)
    try:
        yield process
    finally:
        process.close()


def curl(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "-f", "-L", "-o", str(out), *extra, url], capture_output=True, timeout=60, check=False
    )


def lfs_url(base: str, hub: Hub) -> tuple[str, str]:
    info = hub.repos["bench/lfs"]
    (path,) = info["lfs"]
    return f"{base}/bench/lfs/resolve/{info['commit']}/{path}", info["sha256"][path]


@needs_nginx
@needs_curl
def test_nginx_serves_the_lfs_bytes_over_tls_and_proxies_the_rest_to_the_hub(
    hub: Hub, tmp_path: Path
) -> None:
    with NginxFront(hub, tmp_path / "nginx", tmp_path / "blobs", ["bench/lfs"], tls=True) as front:
        assert front.url.startswith("https://") and front.ca_file
        redirect = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "--cacert", front.ca_file,
             lfs_url(front.url, hub)[0]],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert redirect.startswith(f"302 {front.cdn_url}/lfs/"), redirect  # the Hub names nginx's CDN origin
        front.reset()
        url, sha256 = lfs_url(front.url, hub)
        got = curl(url, tmp_path / "lfs.bin", "--cacert", front.ca_file)
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256((tmp_path / "lfs.bin").read_bytes()).hexdigest() == sha256
        small = hub.repos["bench/small"]
        regular = f"{front.url}/bench/small/resolve/{small['commit']}/{small['paths'][0]}"
        assert curl(regular, tmp_path / "small.json", "--cacert", front.ca_file).returncode == 0
        stats = front.stats()
        # /resolve twice through the proxy (counted by the Hub), one CDN GET served by nginx itself
        assert (stats["resolve"], stats["cdn"], stats["requests"]) == (2, 1, 3)
        assert stats["bytes_served"] == LFS_SIZE + (tmp_path / "small.json").stat().st_size
        untrusted = curl(url, tmp_path / "refused.bin")  # a client without the bench's CA is refused
        assert untrusted.returncode != 0
    after = hub.call(cmd="front")  # closing gives the Hub its own origins back
    assert after["url"] == after["own_url"] == hub.url


@needs_nginx
@needs_curl
def test_nginx_caps_each_connection_with_limit_rate(hub: Hub, tmp_path: Path) -> None:
    rate = 100 * KiB  # bytes/s
    with NginxFront(
        hub, tmp_path / "nginx", tmp_path / "blobs", ["bench/lfs"], tls=False, cap_bps=rate
    ) as front:
        url, sha256 = lfs_url(front.url, hub)
        started = time.monotonic()
        assert curl(url, tmp_path / "lfs.bin").returncode == 0
        took = time.monotonic() - started
    assert hashlib.sha256((tmp_path / "lfs.bin").read_bytes()).hexdigest() == sha256
    # nginx sends a second's worth at once, then pauses after each chunk as long as the cap needs: 300 KiB
    # go in 3 chunks with 2 pauses of 1 s (no cap: a few ms)
    assert took >= 0.9 * (LFS_SIZE - rate) / rate, took


def test_the_hub_process_applies_rate_limits_counts_429s_and_resets_the_window(
    hub: Hub, tmp_path: Path
) -> None:
    url, _ = lfs_url(hub.url, hub)
    hub.call(cmd="ratelimit", window=60, resolvers=2, headers="on-429")
    try:
        hub.reset()
        codes = [curl(url, tmp_path / "x", "--max-redirs", "0").returncode for _ in range(3)]
        limited = hub.stats()["ratelimit"]["resolvers"]
        hub.reset()  # every measured run starts a fresh window
        again = curl(url, tmp_path / "x", "--max-redirs", "0")
    finally:
        hub.call(cmd="ratelimit")
    assert codes[:2] == [47, 47] and codes[2] == 22  # two 302s (too many redirects for curl), then a 429
    assert limited == {"requests": 3, "rejected": 1}
    assert again.returncode == 47
    assert hub.stats()["ratelimit"] == {}  # off again


def test_xet_content_is_seeded_so_its_chunk_lists_can_be_kept_across_runs() -> None:
    built = [populate(BenchHub(), ["bench/x:2:70000:xet"])["bench/x"] for _ in range(2)]
    assert built[0]["sha256"] == built[1]["sha256"]
    assert len(set(built[0]["sha256"].values())) == 2  # each file has content of its own


def test_the_quota_floor_is_the_windows_before_the_last_request() -> None:
    assert quota_floor(1500, 250, 3.0) == 15.0  # 6 windows: the last opens 15 s after the first
    assert quota_floor(250, 250, 3.0) == 0.0
    assert quota_floor(251, 250, 3.0) == 3.0


def payload() -> dict[str, Any]:
    """A run's payload as `run_all` returns it (and `--json` saves it), with two rows."""

    def runs(tool: str, *walls: float) -> list[Run]:
        return [Run(tool, "cold", w, 0, 90.0, 0.5 * w, 0.25 * w, requests=8) for w in walls]

    nbytes = 1024 * 1024 * 1024
    tools = {"prefetch": summarize(runs("prefetch", 2.0, 1.9, 2.6), nbytes, 4),
             "hf": summarize(runs("hf", 4.0, 4.4, 3.9), nbytes, 4),
             "curl+fsync": summarize(runs("curl+fsync", 1.6, 1.7, 1.5), nbytes, 4)}  # fmt: skip
    row = {"subject": "prefetch", "files": 4, "bytes": nbytes, "tools": tools, "missing": {},
           "ratios": {"hf": 0.5, "curl+fsync": 1.25}, "cpu_per_file": False}  # fmt: skip
    return {
        "machine": {"date": "2026-12-01 10:00 UTC", "cpu": "a CPU, 2 cores", "memory": "24 GiB", "os": "Linux 6",
                    "python": "3.11.7", "huggingface_hub": "2.5.0", "hf_xet": "1.8.0", "hf_transfer": "0.1.9",
                    "curl": "curl 7.88.1", "aria2c": "aria2 version 1.36.0", "openssl": "OpenSSL 3.0.19",
                    "nginx": "1.22.1"},
        "run": {"command": "python bench/run.py", "reps": 3, "sources": "prefetch: /src at abc1234"},
        "results": {"https": {**row, "title": "cold, 4 × 256 MiB, HTTPS (nginx)"},
                    "https-python": {**row, "title": "cold, 4 × 256 MiB, HTTPS (Python test Hub)"}},
        "runs": [],
    }  # fmt: skip


def test_the_docs_and_the_readme_are_written_from_one_run(tmp_path: Path) -> None:
    data = payload()
    doc = markdown(data)
    assert "with `python bench/run.py` (3 repetition(s)" in doc
    assert "Rows marked (nginx) were served by nginx 1.22.1 in front of the test Hub" in doc
    assert "| cold, 4 × 256 MiB, HTTPS (nginx) | hf | 4.00 s (3.90–4.40) | 0.50 |" in doc
    assert "| cold, 4 × 256 MiB, HTTPS (nginx): prefetch / curl+fsync | 1.25 | ≤ 1.25 | met |" in doc
    readme = readme_section(data)
    assert "| cold, 4 × 256 MiB, HTTPS (nginx) | 2.00 s (1.90–2.60) | 0.50 | 1.25 × curl+fsync |" in readme
    assert "Python test Hub" not in readme  # README shows the nginx rows; the Python ones are in the docs
    target = tmp_path / "README.md"
    target.write_text("# Title\n\n## Speed\n\n<!-- b -->\nold table\n<!-- e -->\n\n## Next\n")
    replace_between(target, "<!-- b -->", "<!-- e -->", readme)
    text = target.read_text()
    assert "old table" not in text and text.startswith(
        "# Title\n\n## Speed\n\n<!-- b -->\nMeasured 2026-12-01"
    )
    assert text.endswith("<!-- e -->\n\n## Next\n")
