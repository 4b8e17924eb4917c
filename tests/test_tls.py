# ruff: noqa: F811  (pytest fixtures `tls_hub`/`proxy_factory` are imported below and used as arguments)
"""prefetch over HTTPS, end to end: the real CLI against the Hub emulator with TLS on both origins.

The emulator's certificate comes from a throwaway CA (`tls_hub.ca_file`). Like huggingface_hub's own
default client, prefetch must trust what SSL_CERT_FILE / SSL_CERT_DIR name, through proxies (CONNECT
tunnels) too, and must fail fast and clearly when it cannot verify a certificate: that is not a transient
network error, retrying cannot fix it, and the fix is on the user's side.

Every test starts from an environment without any CA variable (this machine sets SSL_CERT_FILE and
SSL_CERT_DIR to the system bundle), so trust comes only from what the test passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CANARY_TOKEN, CliResult, PrefetchRunner
from tests.hubemu import Fault, HubEmulator
from tests.hubemu.fixtures import proxy_factory, tls_hub  # noqa: F401
from tests.test_interop import run_consumer

MiB = 1 << 20
FAST = ("--max-wait", "0.2")
RETRY_LINE = re.compile(r"retry \d+/\d+ in [\d.]+s: .*")
# Variables that make a TLS client trust extra CAs; removed from every run unless a test sets one.
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@dataclass
class Model:
    repo_id: str
    commit: str
    files: dict[str, bytes]
    etags: dict[str, str]

    def folder(self, cache: Path) -> Path:
        return cache / ("models--" + self.repo_id.replace("/", "--"))


def make_model(hub: HubEmulator, repo_id: str = "org/model", *, seed: int = 1, **kw: Any) -> Model:
    """A small regular file (served by the API origin) and a 3 MiB LFS file (302 to the https CDN)."""
    rng = random.Random(seed)
    files = {"config.json": b'{"hidden": 8}\n', "model.safetensors": rng.randbytes(3 * MiB + 17)}
    repo = hub.create_repo(repo_id, **kw)
    commit = repo.commit(files)
    etags = {path: repo.file_info(commit, path).etag for path in files}
    assert repo.lfs_paths(commit) == {"model.safetensors"}
    return Model(repo_id, commit, files, etags)


@pytest.fixture
def tls_prefetch(tmp_path: Path, tls_hub: HubEmulator) -> Iterator[PrefetchRunner]:
    """The CLI runner pointed at the https hub, with no CA variable inherited from this machine."""
    runner = PrefetchRunner(tmp_path, tls_hub.url)
    for name in CA_VARIABLES:
        runner.env.pop(name, None)
    yield runner
    runner.scan_files()


def sync(runner: PrefetchRunner, env: dict[str, str | None], *extra: str, timeout: float = 60) -> CliResult:
    """`prefetch -v sync models.yaml --max-wait 0.2`; a run still busy after `timeout` fails the test."""
    try:
        return runner("-v", "sync", str(runner.tmp / "models.yaml"), *FAST, *extra, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"prefetch sync was still running after {timeout}s (a retry loop?)")


def retry_lines(text: str) -> list[str]:
    return RETRY_LINE.findall(text)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_blobs(cache: Path, model: Model) -> None:
    """Each file is a blob named by its hash with exactly its bytes, linked from the snapshot."""
    folder = model.folder(cache)
    for path, data in model.files.items():
        blob = folder / "blobs" / model.etags[path]
        assert blob.is_file() and blob.read_bytes() == data, path
        link = folder / "snapshots" / model.commit / path
        assert link.is_symlink() and link.resolve() == blob.resolve(), path


def load_offline(runner: PrefetchRunner, hub: HubEmulator, model: Model) -> dict[str, str]:
    """sha256 of each file as huggingface_hub loads it offline; the https hub must see no request."""
    paths = sorted(model.files)
    calls = [{"call": "hf_hub_download", "kwargs": {"repo_id": model.repo_id, "filename": p}} for p in paths]
    results = run_consumer(runner, calls, mode="plain", hub=hub)  # asserts the hub saw no request
    assert hub.tls_handshakes == [], "an offline load reached the Hub"
    assert all("ok" in r for r in results), results
    return {path: r["ok"] for path, r in zip(paths, results, strict=True)}


def hashed_ca_dir(ca_file: str, folder: Path) -> Path:
    """An OpenSSL CA directory (`<subject hash>.0`) holding only the emulator's CA, for SSL_CERT_DIR."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to name a CA file for SSL_CERT_DIR")
    digest = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", ca_file], capture_output=True, text=True, check=True
    ).stdout.strip()
    folder.mkdir()
    shutil.copyfile(ca_file, folder / f"{digest}.0")
    return folder


# --------------------------------------------------------------------------------------------------- a
@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_sync_over_https_trusts_the_ca_named_by_the_environment(
    variable: str, tls_prefetch: PrefetchRunner, tls_hub: HubEmulator
) -> None:
    model = make_model(tls_hub)
    tls_prefetch.manifest([{"repo": model.repo_id}])
    trust = (
        tls_hub.ca_file
        if variable == "SSL_CERT_FILE"
        else str(hashed_ca_dir(tls_hub.ca_file, tls_prefetch.tmp / "ca"))
    )
    result = sync(tls_prefetch, {variable: trust})
    assert result.code == 0, result

    # Both origins were used over TLS, every handshake succeeded and each byte crossed once.
    assert {r.origin for r in tls_hub.requests} == {"api", "cdn"}
    assert tls_hub.tls_handshakes and all(h.ok for h in tls_hub.tls_handshakes), tls_hub.tls_handshakes
    lfs = model.etags["model.safetensors"]
    assert tls_hub.bytes_served(path_contains=lfs) == len(model.files["model.safetensors"])
    assert_blobs(tls_prefetch.cache_dir, model)
    lock = yaml.safe_load((tls_prefetch.tmp / "models.lock").read_text())
    assert [e["commit"] for e in lock["entries"]] == [model.commit]

    assert load_offline(tls_prefetch, tls_hub, model) == {p: sha256(d) for p, d in model.files.items()}


# --------------------------------------------------------------------------------------------------- b
def test_sync_over_https_through_a_connect_proxy_keeps_the_token_on_the_hub(
    tls_prefetch: PrefetchRunner, tls_hub: HubEmulator, proxy_factory: Any
) -> None:
    tls_hub.add_user("alice", token=CANARY_TOKEN)
    private = make_model(tls_hub, "alice/private-model", private=True, seed=2)
    gated = make_model(tls_hub, "org/gated-model", gated="manual", seed=3)
    tls_hub.grant_gated("org/gated-model", "alice")
    tls_prefetch.manifest([{"repo": private.repo_id}, {"repo": gated.repo_id, "gated": True}])
    proxy = proxy_factory()
    env = {"SSL_CERT_FILE": tls_hub.ca_file, "HTTPS_PROXY": proxy.url, "HF_TOKEN": CANARY_TOKEN}
    result = sync(tls_prefetch, env)
    assert result.code == 0, result

    # Everything went through CONNECT tunnels to the two origins (the proxy sees no request inside them).
    api, cdn = (url.split("//", 1)[1] for url in (tls_hub.url, tls_hub.cdn_url))
    assert proxy.requests, "the proxy was not used"
    assert {(method, status) for method, _, status in proxy.requests} == {("CONNECT", 200)}
    assert {target for _, target, _ in proxy.requests} == {api, cdn}
    # The token reached the Hub's API origin (or the private/gated files could not be read), never the CDN.
    api_auth = {r.headers.get("authorization") for r in tls_hub.requests if r.origin == "api"}
    assert f"Bearer {CANARY_TOKEN}" in api_auth and api_auth <= {f"Bearer {CANARY_TOKEN}", None}
    assert all("authorization" not in r.headers for r in tls_hub.requests if r.origin == "cdn")
    for model in (private, gated):
        assert_blobs(tls_prefetch.cache_dir, model)
    # (the runner scans stdout, stderr and every file of the test folder for the token at teardown)


# --------------------------------------------------------------------------------------------------- c
def test_an_untrusted_certificate_fails_fast_with_exit_4_and_names_the_fix(
    tls_prefetch: PrefetchRunner, tls_hub: HubEmulator
) -> None:
    model = make_model(tls_hub)
    tls_prefetch.manifest([{"repo": model.repo_id}])
    started = time.monotonic()
    result = sync(tls_prefetch, {}, timeout=30)
    elapsed = time.monotonic() - started
    assert result.code == 4, result

    # Not a transient error: no retry, at most a couple of connection attempts, and quickly.
    assert retry_lines(result.stderr) == [], result
    shakes = tls_hub.tls_handshakes
    assert shakes and not any(h.ok for h in shakes), shakes
    assert len(shakes) <= 2, f"{len(shakes)} TLS handshakes: the certificate error was retried"
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert tls_hub.count() == 0  # no HTTP request ever got through, let alone a file byte
    assert not list(tls_prefetch.cache_dir.glob("*/blobs/*"))

    # The message says what failed, where, and how to fix it.
    cert_lines = [line for line in result.stderr.splitlines() if "certificate" in line.lower()]
    assert cert_lines, result
    assert any(re.search(r"verif", line, re.IGNORECASE) for line in cert_lines), result
    assert any("127.0.0.1" in line for line in cert_lines), result
    assert "SSL_CERT_FILE" in result.stderr, result
    assert "Traceback" not in result.stderr, result


# --------------------------------------------------------------------------------------------------- d
def test_a_reset_mid_body_on_the_https_cdn_resumes(
    tls_prefetch: PrefetchRunner, tls_hub: HubEmulator
) -> None:
    model = make_model(tls_hub)
    tls_prefetch.manifest([{"repo": model.repo_id}])
    lfs = model.etags["model.safetensors"]
    size = len(model.files["model.safetensors"])
    cut = 3 * MiB // 2
    tls_hub.inject(Fault(kind="slow", origin="cdn", bytes_per_sec=16 * MiB))
    reset = tls_hub.inject(Fault(kind="reset", origin="cdn", after_bytes=cut))
    result = sync(tls_prefetch, {"SSL_CERT_FILE": tls_hub.ca_file})
    assert result.code == 0, result
    assert reset.fired == 1
    (line,) = retry_lines(result.stderr)
    assert "model.safetensors" in line, line

    # The second request resumes near the break instead of starting over.
    gets = [r for r in tls_hub.requests if lfs in r.path and r.method == "GET"]
    assert len(gets) == 2, [(r.status, r.range) for r in gets]
    assert gets[0].body_bytes == cut
    match = re.match(r"bytes=(\d+)-", gets[1].range or "")
    assert match, gets[1].range
    assert cut - 512 * 1024 <= int(match.group(1)) <= cut
    assert tls_hub.bytes_served(path_contains=lfs) <= size + 512 * 1024
    assert_blobs(tls_prefetch.cache_dir, model)


# --------------------------------------------------------------------------------------------------- e
def test_check_over_https(tls_prefetch: PrefetchRunner, tls_hub: HubEmulator) -> None:
    tls_hub.add_user("alice", token=CANARY_TOKEN)
    public = make_model(tls_hub, "org/public")
    gated = make_model(tls_hub, "org/gated-model", gated="auto", seed=2)
    tls_hub.grant_gated("org/gated-model", "alice")
    tls_prefetch.manifest([{"repo": public.repo_id}, {"repo": gated.repo_id, "gated": True}])
    env = {"SSL_CERT_FILE": tls_hub.ca_file, "HF_TOKEN": CANARY_TOKEN}
    try:
        result = tls_prefetch("check", "models.yaml", *FAST, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("prefetch check was still running after 60s")
    assert result.code == 0, result
    assert "2 of 2 entries readable" in result.stdout, result
    assert tls_hub.count(path_contains="/auth-check") >= 1  # gating is only proven by auth-check
    assert tls_hub.count(kind="file") == 0  # a check downloads nothing
    assert all(h.ok for h in tls_hub.tls_handshakes)


def test_check_without_the_ca_reports_the_certificate_problem(
    tls_prefetch: PrefetchRunner, tls_hub: HubEmulator
) -> None:
    make_model(tls_hub, "org/public")
    tls_prefetch.manifest([{"repo": "org/public"}])
    try:
        result = tls_prefetch("check", "models.yaml", *FAST, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("prefetch check was still running after 30s (a retry loop?)")
    assert result.code == 4, result
    assert "certificate" in result.output.lower() and "SSL_CERT_FILE" in result.output, result
    assert len(tls_hub.tls_handshakes) <= 2, tls_hub.tls_handshakes
    assert tls_hub.count() == 0


# --------------------------------------------------------------------------------------------------- far server
class SlowHandshakes:
    """A TCP relay to `upstream` that holds each new connection for `delay` seconds before relaying
    anything (a far server: the TLS handshake cannot end before), and counts how many connections
    were held at once."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.held = self.most_held = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with self._lock:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
        time.sleep(self.delay)
        with self._lock:
            self.held -= 1
        server = socket.create_connection(self.upstream, timeout=30)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def test_small_files_from_a_far_server_make_their_connections_side_by_side(
    tmp_path: Path, tls_hub: HubEmulator
) -> None:
    """The lane of small files (one thread) has new connections made by connector threads: from a
    far server each TLS handshake takes a round trip, and made one after another, 8 of them would
    delay the files by 8 round trips. The relay saw at most one handshake at a time before."""
    files = {f"data/{i:02d}.json": b'{"n": %d}\n' % i for i in range(40)}
    tls_hub.create_repo("org/far").commit(files)
    host, port = tls_hub.url.removeprefix("https://").rsplit(":", 1)
    relay = SlowHandshakes((host, int(port)), delay=0.3)
    try:
        runner = PrefetchRunner(tmp_path, f"https://127.0.0.1:{relay.port}")
        for name in CA_VARIABLES:
            runner.env.pop(name, None)
        runner.manifest([{"repo": "org/far"}])
        result = sync(runner, {"SSL_CERT_FILE": tls_hub.ca_file, "PREFETCH_PROCESSES": "1"}, "--jobs", "8")
    finally:
        relay.close()
    assert result.code == 0, result
    assert relay.most_held >= 4, relay.most_held
    assert tls_hub.count(kind="file") == len(files)
