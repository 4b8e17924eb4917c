"""The test Hub's Xet storage, held to the real client: huggingface_hub 2.5 with hf_xet 1.8 (Xet enabled).

Every download here goes through real sockets to the emulator's Hub, CAS, transfer and bridge hosts; the
request log says which path the client took. File hashes are checked against hf_xet's own (`hash_files`),
xorbs (hash and bytes) against the ones hf_xet uploads for the same file, and chunk boundaries against a
byte-by-byte reading of the specification.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import hf_xet
import numpy as np
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError
from huggingface_hub.utils import _xet as hf_xet_utils

from tests.hubemu import Fault, HubEmulator, Repo
from tests.hubemu.xet import changed_revision
from tests.hubemu.xetformat import (
    CHUNK_HEADER_SIZE,
    DISK_CACHE_ENV,
    MAX_CHUNK,
    MIN_CHUNK,
    SCHEME_BG4_LZ4,
    SCHEME_LZ4,
    SCHEME_NONE,
    build_xorb,
    chunk_ends,
    chunk_hash,
    chunked,
    clear_cache,
    deserialize_chunks,
    file_hash,
    hash_from_string,
    hash_string,
    serialize_chunk,
)

ROOT = Path(__file__).resolve().parent.parent
ALICE = "hf_alice_xet_read_token"
MALLORY = "hf_mallory_xet_token"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub isolated in tmp_path, **with** Xet (constants are read at import time)."""
    home = tmp_path / "hf_home"
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": False,
    }.items():
        monkeypatch.setattr(constants, name, value)
    # huggingface_hub keeps Xet tokens per URL for the process: another test's emulator may reuse a port.
    monkeypatch.setattr(hf_xet_utils, "XET_CONNECTION_INFO_CACHE", {})


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    emulator = HubEmulator()
    emulator.add_user("alice", token=ALICE)
    emulator.add_user("mallory", token=MALLORY)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def mixed_content(seed: int) -> bytes:
    """Text (LZ4 wins), float32 weights (byte grouping wins) and random bytes (stored as they are)."""
    text = b"".join(b"line %d of a repetitive config text\n" % i for i in range(12_000))
    weights = np.random.default_rng(seed).standard_normal(100_000).astype(np.float32).tobytes()
    return text + weights + rnd(seed, 300_000)


def download(hub: HubEmulator, repo_id: str, filename: str, tmp_path: Path, **kw: object) -> bytes:
    path = hf_hub_download(
        repo_id, filename, endpoint=hub.url, cache_dir=tmp_path / "cache", token=ALICE, etag_timeout=10, **kw
    )  # type: ignore[arg-type]
    return Path(path).read_bytes()


def fetch(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed: (status, lower-case headers, body)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def cas_token(hub: HubEmulator, repo: Repo) -> str:
    status, _, body = fetch(
        f"{hub.url}/api/models/{repo.repo_id}/xet-read-token/main",
        headers={"Authorization": f"Bearer {ALICE}"},
    )
    assert status == 200, body
    return str(json.loads(body)["accessToken"])


def reconstruction(
    hub: HubEmulator, token: str, xet_hash: str, version: str = "v2", byte_range: str | None = None
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"}
    if byte_range:
        headers["Range"] = byte_range
    status, _, body = fetch(f"{hub.xet.cas_url}/{version}/reconstructions/{xet_hash}", headers=headers)
    return status, json.loads(body) if status == 200 else {}


def chunk_schemes(hub: HubEmulator, xet_hash: str) -> set[int]:
    schemes = set()
    for xorb_hash in hub.xet.file(xet_hash).xorbs:
        xorb = hub.xet.xorb(xorb_hash)
        schemes.update(xorb.body[start + 4] for start in xorb.chunk_starts[:-1])
    return schemes


# ------------------------------------------------------------------------------------ the format
def spec_chunk_ends(data: bytes) -> list[int]:
    """chunking.md's pseudocode, byte by byte."""
    from tests.hubemu._gear_table import GEAR_TABLE

    ends, h, start = [], 0, 0
    for i, byte in enumerate(data):
        h = ((h << 1) + GEAR_TABLE[byte]) & 0xFFFF_FFFF_FFFF_FFFF
        size = i + 1 - start
        if size < MIN_CHUNK:
            continue
        if size >= MAX_CHUNK or h & 0xFFFF_0000_0000_0000 == 0:
            ends.append(i + 1)
            start, h = i + 1, 0
    if start < len(data):
        ends.append(len(data))
    return ends


def test_chunk_boundaries_are_the_specifications() -> None:
    data = rnd(1, 400_000) + bytes(300_000) + rnd(2, 200_000)  # zeros never match: forced 128 KiB chunks
    ends = chunk_ends(data)
    assert ends == spec_chunk_ends(data)
    sizes = [b - a for a, b in zip([0, *ends], ends, strict=False)]
    assert MAX_CHUNK in sizes and all(MIN_CHUNK <= s <= MAX_CHUNK for s in sizes[:-1])
    assert chunk_ends(b"") == [] and chunk_ends(b"x" * 100) == [100]


def test_hash_strings_reverse_each_8_byte_word() -> None:
    raw = bytes(range(32))
    # api.md's example, whose third word lost its last byte ("10"): the string there has 62 digits.
    text = "07060504030201000f0e0d0c0b0a0908" + "1716151413121110" + "1f1e1d1c1b1a1918"
    assert hash_string(raw) == text and hash_from_string(text) == raw
    with pytest.raises(ValueError):
        hash_from_string("00" * 31)


@pytest.mark.parametrize(
    "content",
    [b"", b"tiny", rnd(3, MIN_CHUNK), rnd(4, 2_500_000), bytes(1_000_000), "mixed"],
    ids=["empty", "tiny", "min-chunk", "random", "zeros", "mixed"],
)
def test_file_hashes_are_hf_xets(content: bytes | str, tmp_path: Path) -> None:
    data = mixed_content(5) if content == "mixed" else content
    assert isinstance(data, bytes)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    (reference,) = hf_xet.hash_files([str(path)])
    chunks = chunked(data, hashlib.sha256(data).hexdigest())
    assert hash_string(file_hash(list(zip(chunks.hashes, chunks.sizes, strict=True)))) == reference.hash


def test_xorbs_hold_chunks_compressed_as_specified() -> None:
    data = mixed_content(6)
    ends = chunk_ends(data)
    chunks = [data[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    serialized = [serialize_chunk(c, "auto") for c in chunks]
    schemes = {s[4] for s in serialized}
    assert schemes == {SCHEME_NONE, SCHEME_LZ4, SCHEME_BG4_LZ4}
    for s, c in zip(serialized, chunks, strict=True):
        assert s[0] == 0 and int.from_bytes(s[5:8], "little") == len(c)
        assert int.from_bytes(s[1:4], "little") == len(s) - CHUNK_HEADER_SIZE
        if s[4] != SCHEME_NONE:
            assert s[CHUNK_HEADER_SIZE : CHUNK_HEADER_SIZE + 4] == b"\x04\x22\x4d\x18"  # an LZ4 frame
    xorb = build_xorb([chunk_hash(c) for c in chunks], [len(c) for c in chunks], serialized)
    assert deserialize_chunks(xorb.body) == chunks
    for policy in ("none", "lz4", "bg4-lz4"):
        assert deserialize_chunks(b"".join(serialize_chunk(c, policy) for c in chunks)) == chunks


class _XorbCapture(BaseHTTPRequestHandler):
    """Just enough of a CAS for hf_xet to upload one file: it keeps the xorbs it is sent."""

    protocol_version = "HTTP/1.1"
    xorbs: ClassVar[dict[str, bytes]] = {}

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # global dedup queries: nothing known
        self._answer(404, b"{}")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/v1/xorbs/default/"):
            self.xorbs[self.path.rsplit("/", 1)[1]] = body
            self._answer(200, b'{"was_inserted":true}')
        elif self.path == "/v1/shards":
            self._answer(200, b'{"result":1}')
        else:  # /v2/shards (hf_xet falls back to v1)
            self._answer(404, b"{}")


UPLOAD = """
import sys, time, hf_xet
expires = int(time.time()) + 3600
data = open(sys.argv[2], "rb").read()
hf_xet.upload_bytes([data], sys.argv[1], ("t", expires), lambda: ("t", expires), None, "model")
"""


def test_hf_xet_uploads_the_same_xorb_for_the_same_bytes(tmp_path: Path) -> None:
    """hf_xet's own xorb for a file (its direct upload, compression off) is the one the store builds."""
    data = rnd(9, 1_500_000)
    (tmp_path / "file.bin").write_bytes(data)
    _XorbCapture.xorbs.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _XorbCapture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "PATH": "/usr/bin:/bin",
        "HF_XET_CLIENT_LEGACY_DIRECT_XORB_UPLOAD": "true",  # the body itself, not an upload grant
        "HF_XET_XORB_COMPRESSION_POLICY": "none",  # LZ4 output is not canonical; stored chunks are
        "HF_XET_TELEMETRY_ENABLED": "false",
    }
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        run = subprocess.run(
            [sys.executable, "-c", UPLOAD, url, str(tmp_path / "file.bin")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr[-2000:]
    ((uploaded_hash, uploaded),) = _XorbCapture.xorbs.items()
    emulator = HubEmulator()
    emulator.xet.compression = "none"
    repo = emulator.create_repo("org/m", xet=True)
    repo.commit({"m.safetensors": data})
    (xorb_hash,) = emulator.xet.file(repo.file_info("main", "m.safetensors").xet_hash or "").xorbs
    xorb = emulator.xet.xorb(xorb_hash)
    assert xorb.num_chunks > 9  # a tree of several levels
    assert uploaded_hash == xorb_hash and uploaded == xorb.body


def test_chunk_lists_kept_on_disk_serve_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DISK_CACHE_ENV, str(tmp_path / "lists"))
    data = rnd(8, 600_000)
    sha256 = hashlib.sha256(data).hexdigest()
    clear_cache()
    fresh = chunked(data, sha256)
    (kept,) = (tmp_path / "lists").iterdir()
    assert kept.name == f"{sha256}-{len(data)}.chunks" and kept.stat().st_size == 40 * len(fresh.ends)
    raw = bytearray(kept.read_bytes())
    raw[8:40] = bytes(32)  # a recognisable first hash: read back, it proves the list came from the disk
    kept.write_bytes(bytes(raw))
    clear_cache()
    assert chunked(data, sha256).hashes[0] == bytes(32)
    kept.write_bytes(bytes(raw[:-1]))  # a damaged list is not used (and is replaced)
    clear_cache()
    assert chunked(data, sha256).hashes == fresh.hashes
    assert kept.stat().st_size == 40 * len(fresh.ends)
    clear_cache()


def test_a_rebuilt_file_reuses_the_cached_xorbs() -> None:
    data = rnd(7, 1_500_000)
    built = []
    for _ in range(2):
        emulator = HubEmulator()
        emulator.xet.max_xorb_bytes = 500_000
        repo = emulator.create_repo("org/m", xet=True)
        repo.commit({"m.safetensors": data})
        xet_hash = repo.file_info("main", "m.safetensors").xet_hash
        assert xet_hash is not None
        built.append([emulator.xet.xorb(h) for h in emulator.xet.file(xet_hash).xorbs])
    assert len(built[0]) >= 3 and all(a is b for a, b in zip(*built, strict=True))


# ---------------------------------------------------------------------------------- the real client
def test_hf_hub_download_takes_the_xet_path(hub: HubEmulator, tmp_path: Path) -> None:
    repo = hub.create_repo("org/model", xet=True)
    data = rnd(10, 3_000_000)
    repo.commit({"model.safetensors": data, "config.json": b"{}"})
    info = repo.file_info("main", "model.safetensors")
    listed = {
        f.path: f for f in HfApi(endpoint=hub.url, token=ALICE).list_repo_tree("org/model", recursive=True)
    }
    assert listed["model.safetensors"].xet_hash == info.xet_hash  # type: ignore[union-attr]
    assert getattr(listed["config.json"], "xet_hash", None) is None
    hub.reset_counters()
    assert download(hub, "org/model", "model.safetensors", tmp_path) == data
    counts = hub.xet.counts()
    assert counts["token"] >= 1 and counts["reconstruction"] >= 1 and counts["xorb"] >= 1, counts
    assert counts["bridge"] == 0 and hub.count(origin="cdn") == 0
    cas = [r for r in hub.requests if r.origin == "cas"]
    assert all(r.headers["authorization"].startswith("Bearer xet_") for r in cas)  # a CAS token, not ALICE's
    assert cas[0].path == f"/v2/reconstructions/{info.xet_hash}"  # the X-Xet-Hash string, as sent
    assert all("authorization" not in r.headers for r in hub.requests if r.origin == "transfer")


def test_snapshot_download_of_a_repo_mixing_xet_lfs_and_regular_files(
    hub: HubEmulator, tmp_path: Path
) -> None:
    repo = hub.create_repo("org/mixed", xet=True)
    files = {
        "model.safetensors": rnd(11, 1_200_000),
        "sub/extra.bin": mixed_content(12),
        "plain-lfs.bin": rnd(13, 300_000),
        "config.json": b'{"a": 1}',
        "README.md": b"# mixed\n",
    }
    repo.commit(files, xet={"model.safetensors", "sub/extra.bin"})
    assert (
        repo.file_info("main", "plain-lfs.bin").lfs
        and repo.file_info("main", "plain-lfs.bin").xet_hash is None
    )
    folder = snapshot_download("org/mixed", endpoint=hub.url, cache_dir=tmp_path / "cache", token=ALICE)
    for name, data in files.items():
        assert (Path(folder) / name).read_bytes() == data, name
    assert hub.count(origin="cdn", path_contains=repo.file_info("main", "plain-lfs.bin").sha256) >= 1
    assert hub.xet.counts()["bridge"] == 0 and hub.xet.counts()["xorb"] >= 2
    regular = [r for r in hub.requests if r.method == "GET" and r.path.endswith("/config.json")]
    assert regular and regular[0].status == 200


def test_a_file_over_several_xorbs_with_lz4_and_byte_grouped_chunks(hub: HubEmulator, tmp_path: Path) -> None:
    hub.xet.max_xorb_bytes = 200_000
    repo = hub.create_repo("org/model", xet=True)
    data = mixed_content(14)
    repo.commit({"weights.safetensors": data})
    xet_hash = repo.file_info("main", "weights.safetensors").xet_hash
    assert xet_hash is not None
    assert len(hub.xet.file(xet_hash).xorbs) >= 4
    assert chunk_schemes(hub, xet_hash) == {SCHEME_NONE, SCHEME_LZ4, SCHEME_BG4_LZ4}
    assert download(hub, "org/model", "weights.safetensors", tmp_path) == data
    assert hub.xet.counts()["xorb"] >= 4


def test_a_revision_changing_a_tenth_of_the_chunks_is_deduplicated(hub: HubEmulator, tmp_path: Path) -> None:
    hub.xet.max_xorb_bytes = 700_000
    repo = hub.create_repo("org/model", xet=True)
    old = rnd(15, 3_000_000)
    repo.commit({"m.safetensors": old})
    new = changed_revision(old, 0.1, seed=1)
    assert len(new) == len(old) and new != old
    repo.commit({"m.safetensors": new})
    old_file = hub.xet.file(repo.file_info(repo.history("main")[1].sha, "m.safetensors").xet_hash or "")
    new_file = hub.xet.file(repo.file_info("main", "m.safetensors").xet_hash or "")
    shared, added = set(new_file.xorbs) & set(old_file.xorbs), set(new_file.xorbs) - set(old_file.xorbs)
    assert shared and added
    total_chunks = len(chunk_ends(new))
    new_chunks = sum(hub.xet.xorb(h).num_chunks for h in added)
    assert abs(new_chunks - round(0.1 * total_chunks)) <= 1, (new_chunks, total_chunks)
    status, answer = reconstruction(hub, cas_token(hub, repo), new_file.hash_string)
    assert status == 200 and any(
        len(e["ranges"]) > 1 for entries in answer["xorbs"].values() for e in entries
    )
    assert download(hub, "org/model", "m.safetensors", tmp_path) == new


@pytest.mark.soak
def test_tokens_expire_and_the_client_refreshes_them(hub: HubEmulator, tmp_path: Path) -> None:
    hub.xet.token_ttl = 2.0  # shorter than both clients' margins: they refresh before every CAS call
    repo = hub.create_repo("org/model", xet=True)
    files = {"a.safetensors": rnd(16, 600_000), "b.safetensors": rnd(17, 600_000)}
    repo.commit(files)
    transfer_403 = hub.inject(Fault(kind="status", status=403, origin="transfer", times=1))
    assert download(hub, "org/model", "a.safetensors", tmp_path) == files["a.safetensors"]
    assert transfer_403.fired == 1  # the refused URL made hf_xet ask the CAS again, with a fresh token
    first = [r.headers["authorization"] for r in hub.requests if r.origin == "cas"]
    assert len(first) >= 2 and len(set(first)) == len(first)
    time.sleep(2.1)
    status, _, _ = fetch(
        f"{hub.xet.cas_url}/v2/reconstructions/{repo.file_info('main', 'a.safetensors').xet_hash}",
        headers={"Authorization": first[-1]},
    )
    assert status == 401  # expired
    assert download(hub, "org/model", "b.safetensors", tmp_path) == files["b.safetensors"]
    statuses = [r.status for r in hub.requests if r.origin == "cas"]
    assert (
        statuses.count(401) == 1 and statuses.count(200) == len(statuses) - 1
    )  # the client's were all fresh
    assert hub.xet.counts()["token"] >= 4


def test_hf_xet_falls_back_to_v1_reconstructions(hub: HubEmulator, tmp_path: Path) -> None:
    repo = hub.create_repo("org/model", xet=True)
    data = mixed_content(18)
    repo.commit({"m.safetensors": data})
    hub.inject(Fault(kind="status", status=404, origin="cas", match="^/v2/", times=None))
    assert download(hub, "org/model", "m.safetensors", tmp_path) == data
    assert hub.count(origin="cas", path_contains="/v1/reconstructions/") >= 1


def test_faults_on_the_transfer_host_are_retried(hub: HubEmulator, tmp_path: Path) -> None:
    repo = hub.create_repo("org/model", xet=True)
    data = rnd(19, 800_000)
    repo.commit({"m.safetensors": data})
    fault = hub.inject(Fault(kind="status", status=503, origin="transfer", times=1))
    assert download(hub, "org/model", "m.safetensors", tmp_path) == data
    assert fault.fired == 1


def test_without_xet_the_same_files_come_through_the_bridge(
    hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    repo = hub.create_repo("org/model", xet=True)
    data = rnd(20, 1_000_000)
    repo.commit({"m.safetensors": data})
    assert download(hub, "org/model", "m.safetensors", tmp_path) == data
    counts = hub.xet.counts()
    assert counts["bridge"] >= 1 and counts["reconstruction"] == counts["xorb"] == counts["token"] == 0, (
        counts
    )
    status, headers, _ = fetch(
        hub.file_url("org/model", "m.safetensors"), "HEAD", {"Authorization": f"Bearer {ALICE}"}
    )
    assert status == 302 and headers["x-xet-hash"] == repo.file_info("main", "m.safetensors").xet_hash
    assert 'rel="xet-auth"' in headers["link"] and 'rel="xet-reconstruction-info"' in headers["link"]
    status, headers, body = fetch(headers["location"], headers={"Range": "bytes=1000-1999"})
    assert (
        status == 206
        and body == data[1000:2000]
        and headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    )


def test_a_gated_xet_repo_refuses_tokens_as_it_refuses_files(hub: HubEmulator, tmp_path: Path) -> None:
    repo = hub.create_repo("org/gated", xet=True, gated="manual")
    repo.commit({"m.safetensors": rnd(21, 100_000)})
    hub.grant_gated("org/gated", "alice")
    route = f"{hub.url}/api/models/org/gated/xet-read-token/main"
    assert fetch(route)[0] == 401
    assert fetch(route, headers={"Authorization": f"Bearer {MALLORY}"})[0] == 403
    assert fetch(route, headers={"Authorization": "Bearer hf_not_a_token"})[0] == 401
    status, headers, body = fetch(route, headers={"Authorization": f"Bearer {ALICE}"})
    answer = json.loads(body)
    assert status == 200 and set(answer) == {"accessToken", "exp", "casUrl"}
    assert (
        headers["x-xet-access-token"] == answer["accessToken"] and headers["x-xet-cas-url"] == hub.xet.cas_url
    )
    assert int(headers["x-xet-token-expiration"]) == answer["exp"]
    bad_rev = fetch(
        f"{hub.url}/api/models/org/gated/xet-read-token/nope", headers={"Authorization": f"Bearer {ALICE}"}
    )
    assert bad_rev[0] == 404 and bad_rev[1]["x-error-code"] == "RevisionNotFound"
    with pytest.raises(GatedRepoError):
        hf_hub_download(
            "org/gated", "m.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c", token=MALLORY
        )
    private = hub.create_repo("org/private", xet=True, private=True)
    private.commit({"m.safetensors": rnd(22, 1000)})
    assert (
        fetch(
            f"{hub.url}/api/models/org/private/xet-read-token/main",
            headers={"Authorization": f"Bearer {ALICE}"},
        )[0]
        == 404
    )


def test_the_cas_refuses_missing_unknown_expired_and_foreign_tokens(hub: HubEmulator) -> None:
    repo = hub.create_repo("org/model", xet=True)
    other = hub.create_repo("org/other", xet=True)
    repo.commit({"m.safetensors": rnd(23, 50_000)})
    other.commit({"o.safetensors": rnd(24, 50_000)})
    xet_hash = repo.file_info("main", "m.safetensors").xet_hash or ""
    token = cas_token(hub, repo)
    assert reconstruction(hub, token, xet_hash)[0] == 200
    assert fetch(f"{hub.xet.cas_url}/v2/reconstructions/{xet_hash}")[0] == 401
    assert reconstruction(hub, "xet_unknown", xet_hash)[0] == 401
    assert reconstruction(hub, token, other.file_info("main", "o.safetensors").xet_hash or "")[0] == 404
    assert reconstruction(hub, token, "zz" * 32)[0] == 400
    hub.xet.expire_tokens()
    assert reconstruction(hub, token, xet_hash)[0] == 401


def reassemble(hub: HubEmulator, answer: dict, version: str) -> bytes:
    """What a client following the specification makes of a reconstruction answer."""
    chunks: dict[tuple[str, int], bytes] = {}
    for xorb, entries in answer["fetch_info" if version == "v1" else "xorbs"].items():
        for entry in entries:
            if version == "v1":
                pieces = [(entry["range"], entry["url_range"])]
            else:
                pieces = [(r["chunks"], r["bytes"]) for r in entry["ranges"]]
            for chunk_range, byte_range in pieces:
                status, _, body = fetch(
                    entry["url"], headers={"Range": f"bytes={byte_range['start']}-{byte_range['end']}"}
                )
                assert status == 206
                for i, chunk in enumerate(deserialize_chunks(body), start=chunk_range["start"]):
                    chunks[(xorb, i)] = chunk
    out = b"".join(
        b"".join(chunks[(t["hash"], i)] for i in range(t["range"]["start"], t["range"]["end"]))
        for t in answer["terms"]
    )
    return out[answer["offset_into_first_range"] :]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_reconstruction_may_start_mid_chunk(hub: HubEmulator, version: str) -> None:
    hub.xet.max_xorb_bytes = 300_000
    repo = hub.create_repo("org/model", xet=True)
    data = rnd(25, 1_000_000)
    repo.commit({"m.safetensors": data})
    xet_hash = repo.file_info("main", "m.safetensors").xet_hash or ""
    token = cas_token(hub, repo)
    ends = chunk_ends(data)
    first, last = ends[2] + 123, ends[9] - 5
    status, answer = reconstruction(hub, token, xet_hash, version, f"bytes={first}-{last}")
    assert status == 200 and answer["offset_into_first_range"] == 123
    assert reassemble(hub, answer, version)[: last - first + 1] == data[first : last + 1]
    status, whole = reconstruction(hub, token, xet_hash, version)
    assert status == 200 and reassemble(hub, whole, version) == data
    assert reconstruction(hub, token, xet_hash, version, f"bytes={len(data)}-{len(data) + 10}")[0] == 416


def test_presigned_xorb_urls_want_their_exact_range_and_expire(hub: HubEmulator) -> None:
    repo = hub.create_repo("org/model", xet=True)
    data = rnd(26, 400_000)
    repo.commit({"m.safetensors": data})
    xet_hash = repo.file_info("main", "m.safetensors").xet_hash or ""
    token = cas_token(hub, repo)
    _, answer = reconstruction(hub, token, xet_hash, "v1")
    (entry,) = next(iter(answer["fetch_info"].values()))
    start, end = entry["url_range"]["start"], entry["url_range"]["end"]
    assert fetch(entry["url"], headers={"Range": f"bytes={start}-{end}"})[0] == 206
    for wrong in (None, f"bytes={start}-{end - 1}", f"bytes={start + 1}-{end}", f"bytes={start}-"):
        assert fetch(entry["url"], headers={"Range": wrong} if wrong else {})[0] == 403, wrong
    assert (
        fetch(entry["url"].replace("Signature=", "Signature=0"), headers={"Range": f"bytes={start}-{end}"})[0]
        == 403
    )
    hub.xet.url_ttl = -1
    _, answer = reconstruction(hub, token, xet_hash, "v1")
    (entry,) = next(iter(answer["fetch_info"].values()))
    assert fetch(entry["url"], headers={"Range": f"bytes={start}-{end}"})[0] == 403


def test_several_signed_ranges_in_one_request_come_back_as_multipart(hub: HubEmulator) -> None:
    repo = hub.create_repo("org/model", xet=True)
    old = rnd(27, 1_500_000)
    repo.commit({"m.safetensors": old})
    repo.commit({"m.safetensors": changed_revision(old, 0.2, seed=2)})
    xet_hash = repo.file_info("main", "m.safetensors").xet_hash or ""
    _, answer = reconstruction(hub, cas_token(hub, repo), xet_hash)
    xorb_hash, entries = next((h, e) for h, e in answer["xorbs"].items() if len(e[0]["ranges"]) > 1)
    entry = entries[0]
    spans = [(r["bytes"]["start"], r["bytes"]["end"]) for r in entry["ranges"]]
    value = "bytes=" + ",".join(f"{a}-{b}" for a, b in spans)
    status, headers, body = fetch(entry["url"], headers={"Range": value})
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges; boundary=")
    boundary = headers["content-type"].split("boundary=")[1].encode()
    parts = [p for p in body.split(b"--" + boundary) if p.strip(b"-\r\n")]
    xorb = hub.xet.xorb(xorb_hash)
    for part, (a, b) in zip(parts, spans, strict=True):
        head, _, payload = part.partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {a}-{b}/{xorb.size}".encode() in head
        assert payload[:-2] == xorb.body[a : b + 1]


def test_batch_reconstructions_in_both_forms(hub: HubEmulator) -> None:
    repo = hub.create_repo("org/model", xet=True)
    repo.commit({"a.safetensors": rnd(28, 90_000), "b.safetensors": rnd(29, 90_000)})
    ids = [repo.file_info("main", p).xet_hash or "" for p in ("a.safetensors", "b.safetensors")]
    auth = {"Authorization": f"Bearer {cas_token(hub, repo)}"}
    status, _, body = fetch(
        f"{hub.xet.cas_url}/v1/reconstructions?file_id={ids[0]}&file_id={ids[1]}", headers=auth
    )
    by_get = json.loads(body)
    assert status == 200 and set(by_get["files"]) == set(ids)
    conn = http.client.HTTPConnection("127.0.0.1", int(urlsplit(hub.xet.cas_url).port or 0), timeout=10)
    conn.request(
        "POST", "/v1/reconstructions", json.dumps([{"prefix": "default", "hash": i} for i in ids]), auth
    )
    by_post = json.loads(conn.getresponse().read())
    conn.close()
    assert by_post["files"] == by_get["files"] and set(by_post["fetch_info"]) == set(by_get["fetch_info"])


def test_a_mirror_serves_xet_files_itself() -> None:
    with HubEmulator(profile="mirror") as mirror:
        repo = mirror.create_repo("org/model", xet=True)
        data = rnd(30, 50_000)
        repo.commit({"m.safetensors": data})
        status, _, body = fetch(f"{mirror.url}/api/models/org/model/tree/main/")
        assert status == 200 and "xetHash" not in json.loads(body)[0]
        status, headers, body = fetch(mirror.file_url("org/model", "m.safetensors"))
        assert status == 200 and body == data and "x-xet-hash" not in headers


TLS_DOWNLOAD = """
import sys
from huggingface_hub import hf_hub_download
path = hf_hub_download(sys.argv[2], sys.argv[3], endpoint=sys.argv[1], cache_dir=sys.argv[4], token=sys.argv[5])
sys.stdout.write(path)
"""


def test_over_tls_every_xet_host_speaks_https_with_the_hubs_ca(tmp_path: Path) -> None:
    with HubEmulator(tls=True) as tls_hub:
        tls_hub.add_user("alice", token=ALICE)
        repo = tls_hub.create_repo("org/model", xet=True)
        data = rnd(31, 700_000)
        repo.commit({"m.safetensors": data})
        env = {
            "SSL_CERT_FILE": tls_hub.ca_file,
            "HF_HOME": str(tmp_path / "home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        }
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                TLS_DOWNLOAD,
                tls_hub.url,
                "org/model",
                "m.safetensors",
                str(tmp_path / "c"),
                ALICE,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert Path(result.stdout).read_bytes() == data
        for url in (tls_hub.xet.cas_url, tls_hub.xet.transfer_url, tls_hub.xet.bridge_url):
            assert url.startswith("https://")
        assert {h.origin for h in tls_hub.tls_handshakes if h.ok} >= {"api", "cas", "transfer"}
        assert tls_hub.xet.counts()["xorb"] >= 1 and tls_hub.xet.counts()["bridge"] == 0
