"""Issue 16: errors that name their cause, through the real CLI: pattern typos, entries left empty, a
missing manifest, a lockfile passed as the manifest, an endpoint that is not a Hub, an unreachable one."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import PrefetchRunner
from tests.hubemu.hub import HubEmulator


def make_model(hub: HubEmulator) -> None:
    hub.create_repo("org/model").commit(
        {"config.json": b"{}", "model.safetensors": b"w" * 2048, "tokenizer.json": b"{}"}
    )


def test_a_pattern_that_matches_no_file_is_an_error_naming_the_closest_files(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    make_model(hub)
    prefetch.manifest([{"repo": "org/model", "include": ["*.json", "*.safetensor"]}])
    result = prefetch("sync", "models.yaml")
    assert result.code == 2, result
    assert "repos[0].include[1]" in result.stderr and "'*.safetensor' matches no file" in result.stderr
    assert "model.safetensors" in result.stderr  # the closest name
    assert not (prefetch.tmp / "models.lock").exists() and hub.count(kind="file") == 0

    prefetch.manifest([{"repo": "org/model", "exclude": ["*.bin"]}])
    result = prefetch("lock", "models.yaml")
    assert result.code == 2, result
    assert "repos[0].exclude[0]" in result.stderr and "'*.bin' matches no file" in result.stderr


def test_patterns_from_defaults_may_miss_but_an_entry_left_empty_is_an_error(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    make_model(hub)
    defaults = {"include": ["*.json", "*.gguf"], "exclude": ["*.bin"]}  # shared: not every repo has each
    prefetch.manifest([{"repo": "org/model"}], defaults=defaults)
    assert prefetch("lock", "models.yaml").code == 0

    prefetch.manifest([{"repo": "org/model"}], defaults={"include": ["*.gguf"]})
    result = prefetch("lock", "models.yaml")
    assert result.code == 2, result
    assert "selects no file" in result.stderr and "allow_empty: true" in result.stderr

    prefetch.manifest([{"repo": "org/model", "allow_empty": True}], defaults={"include": ["*.gguf"]})
    result = prefetch("sync", "models.yaml")
    assert result.code == 0, result


def test_unknown_key_suggestions_know_allow_empty(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    prefetch.manifest([{"repo": "org/model", "allow_emtpy": True}])
    result = prefetch("check", "models.yaml")
    assert result.code == 2, result
    assert "did you mean 'allow_empty'?" in result.stderr


def test_a_missing_manifest_suggests_init_and_the_shipped_manifests(prefetch: PrefetchRunner) -> None:
    result = prefetch("sync")
    assert result.code == 2, result
    assert "no such manifest file" in result.stderr
    assert "prefetch init models.yaml" in result.stderr and "manifests/" in result.stderr


def test_a_lockfile_passed_as_the_manifest_is_recognised(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_model(hub)
    prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("lock", "models.yaml").code == 0
    result = prefetch("sync", "models.lock")
    assert result.code == 2, result
    assert "this is a lockfile" in result.stderr and "models.yaml" in result.stderr
    assert "unknown key" not in result.stderr


class _HtmlOnly(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404, "File not found")  # text/html, like any plain web server

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_is_not_a_hub_is_named(prefetch: PrefetchRunner, web_server: str) -> None:
    prefetch.manifest([{"repo": "org/model"}])
    for command in ("sync", "check", "lock"):
        result = prefetch(command, "models.yaml", env={"HF_ENDPOINT": web_server})
        assert result.code == 4, result
        assert f"HF_ENDPOINT={web_server} does not answer like a Hugging Face Hub" in result.output
        assert f"GET {web_server}/api/models/org/model/revision/main returned 404 text/html" in result.output
        assert "not found, or private" not in result.output


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_hub_fails_fast_naming_it_and_the_demo(prefetch: PrefetchRunner) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    prefetch.manifest([{"repo": "org/model"}])
    started = time.monotonic()
    result = prefetch("sync", "models.yaml", env={"HF_ENDPOINT": endpoint})  # the default retry budget
    assert result.code == 4, result
    assert time.monotonic() - started < 10  # a host that never answered is not retried for long
    assert endpoint in result.stderr and "Try it without a token" in result.stderr


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("--endpoint", "127.0.0.1:8765"),
        ("--endpoint", "localhost:8765"),
        ("--endpoint", "ftp://x"),
        ("HF_ENDPOINT", "http:/host"),
    ],
)
def test_an_endpoint_that_is_not_an_http_url_is_a_usage_error(
    prefetch: PrefetchRunner, hub: HubEmulator, where: str, value: str
) -> None:
    """Not a network error retried with advice about proxies (exit 4): the value itself is wrong (exit 2),
    found before anything connects."""
    prefetch.manifest([{"repo": "org/model"}])
    args, env = (("--endpoint", value), None) if where == "--endpoint" else ((), {"HF_ENDPOINT": value})
    started = time.monotonic()
    result = prefetch("sync", *args, env=env)
    assert result.code == 2, result
    assert f"{where}: expected an http(s) URL such as https://huggingface.co" in result.stderr, result
    assert "proxy" not in result.stderr and "None" not in result.stderr
    assert time.monotonic() - started < 5
    assert hub.count() == 0


def test_a_failed_sync_leaves_no_empty_cache_folder(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """Issue 30, item 12: the cache's writability is checked before the first request without making it."""
    prefetch.manifest([{"repo": "org/missing"}])
    result = prefetch("sync")
    assert result.code == 3, result
    assert not prefetch.cache_dir.exists()


def test_counts_read_as_english_and_lock_says_when_nothing_was_written(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    hub.create_repo("org/one").commit({"config.json": b"{}"})
    prefetch.manifest([{"repo": "org/one"}])
    synced = prefetch("sync")
    assert synced.code == 0, synced
    assert "synced 1 entry (1 file; fetched 1 file, 2 B)" in synced.stdout, synced
    again = prefetch("lock")
    assert again.code == 0 and "models.lock is up to date" in again.stdout and "wrote" not in again.stdout


def test_path_is_absolute_for_a_relative_cache_dir(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """As huggingface_hub's `snapshot_download` returns it: an absolute path."""
    hub.create_repo("org/one").commit({"config.json": b"{}"})
    prefetch.manifest([{"repo": "org/one"}], cache_dir="rel-cache")
    assert prefetch("sync").code == 0
    result = prefetch("path", "org/one", "--cache-dir", "rel-cache")
    assert result.code == 0, result
    assert result.stdout.strip().startswith("/") and (prefetch.tmp / "rel-cache").exists()
