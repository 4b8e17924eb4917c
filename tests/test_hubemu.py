# ruff: noqa: F811  (pytest fixtures `hub`/`tls_hub`/`proxy_factory` are imported below and used as arguments)
"""Proves the Hub emulator and the test proxy are faithful enough to build prefetch on.

The real huggingface_hub client (2.4.x) is driven against the emulator: if it downloads, lists, resolves and
raises the right exceptions, the emulator speaks the Hub's protocol. Faults and the proxy are checked with raw
httpx2 / socket requests so each behaviour is observed directly.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import random
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http as hf_http

from tests.hubemu import Fault, ForwardProxy, HubEmulator, Repo, git_blob_sha1
from tests.hubemu.demo import DEMO_TOKEN
from tests.hubemu.fixtures import hub, proxy_factory, tls_hub  # noqa: F401
from tests.hubemu.store import Commit

ALICE = "hf_alice_read_token"
BOB = "hf_bob_finegrained_token"
CAROL = "hf_carol_write_token"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate huggingface_hub: tmp HF_HOME, no telemetry, no Xet, no ambient token (constants are import-time)."""
    home = tmp_path / "hf_home"
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
    }.items():
        monkeypatch.setattr(constants, name, value)
    return home


def rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_model(hub: HubEmulator, repo_id: str = "org/model", **kw: object) -> tuple[Repo, dict[str, bytes]]:
    """A repo with regular, nested, LFS-by-suffix and LFS-by-size files."""
    hub.lfs_threshold = 1 << 20
    repo = hub.create_repo(repo_id, **kw)  # type: ignore[arg-type]
    files = {
        "config.json": b'{"model_type": "demo"}\n',
        "README.md": b"# demo\n",
        "sub/dir/a.txt": b"nested file\n",
        "sub/dir/deeper/b.txt": rnd(1, 3000),
        "model.safetensors": rnd(2, 1_500_000),  # LFS by suffix (and size)
        "weights.bin": rnd(3, 1000),  # LFS by suffix only
        "data/big.txt": rnd(4, 1_200_000),  # LFS by size only
    }
    repo.commit(files)
    return repo, files


def cache_of(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------- real client
def test_snapshot_download_exact_bytes_cache_layout_and_request_pattern(
    hub: HubEmulator, tmp_path: Path
) -> None:
    hub.add_user("alice", token=ALICE)
    repo, files = make_model(hub)
    head = repo.head("main")
    path = snapshot_download("org/model", endpoint=hub.url, cache_dir=cache_of(tmp_path), token=ALICE)
    assert Path(path).name == head
    for name, data in files.items():
        assert (Path(path) / name).read_bytes() == data
    storage = cache_of(tmp_path) / "models--org--model"
    assert (storage / "refs" / "main").read_text() == head
    assert {p.name for p in (storage / "blobs").iterdir()} == {repo.file_info(head, p).etag for p in files}
    lfs = repo.lfs_paths(head)
    assert lfs == {"model.safetensors", "weights.bin", "data/big.txt"}
    assert repo.file_info(head, "config.json").etag == git_blob_sha1(files["config.json"])

    # huggingface_hub 2.4.0: 1 revision call, 1 tree listing, then per file one HEAD on /resolve/{commit}/...
    # and one GET (regular: API /resolve; LFS: straight to the CDN Location of the HEAD's 302).
    assert hub.count(path_contains="/api/models/org/model/revision/main") == 1
    assert hub.count(path_contains="/tree/") == 1
    assert hub.count(origin="api", method="HEAD", kind="file") == len(files)
    assert hub.count(origin="api", method="GET", kind="file") == len(files) - len(lfs)
    assert hub.count(origin="cdn", method="GET") == len(lfs)
    assert hub.count() == 2 + 2 * len(files)
    assert hub.count(path_contains="agent-harnesses") == 0
    assert all(f"/resolve/{head}/" in r.path for r in hub.requests if r.origin == "api" and r.kind == "file")
    # The token reaches the Hub, never the CDN.
    assert all(r.headers.get("authorization") == f"Bearer {ALICE}" for r in hub.requests if r.origin == "api")
    assert not any("authorization" in r.headers for r in hub.requests if r.origin == "cdn")
    assert hub.bytes_served() == sum(len(d) for d in files.values())
    assert hub.bytes_served("/lfs/") == sum(len(files[p]) for p in lfs)


def test_hf_hub_download_by_branch_tag_pr_commit_and_repo_types(hub: HubEmulator, tmp_path: Path) -> None:
    repo, files = make_model(hub)
    first = repo.head()
    second = repo.commit({"config.json": b'{"v": 2}', "README.md": None})
    repo.create_tag("v1.0", at=first)
    repo.create_branch("feature/x", at=first)
    repo.create_branch("refs/pr/1", at=second)
    common = {"endpoint": hub.url, "cache_dir": cache_of(tmp_path), "token": False}
    assert Path(hf_hub_download("org/model", "config.json", **common)).read_bytes() == b'{"v": 2}'
    for rev in ("v1.0", "feature/x", first):
        got = hf_hub_download("org/model", "config.json", revision=rev, **common)
        assert Path(got).read_bytes() == files["config.json"]
    got = hf_hub_download("org/model", "sub/dir/deeper/b.txt", revision="refs/pr/1", **common)
    assert Path(got).read_bytes() == files["sub/dir/deeper/b.txt"]
    assert hub.count(path_contains="/resolve/refs%2Fpr%2F1/") == 2  # HEAD + GET, revision percent-encoded
    got = hf_hub_download("org/model", "model.safetensors", revision="feature/x", **common)
    assert Path(got).read_bytes() == files["model.safetensors"]
    assert repo.files(second).keys() == files.keys() - {"README.md"}

    for repo_type in ("dataset", "space"):
        other = hub.create_repo("org/thing", repo_type=repo_type)
        other.commit({"data/train.parquet": rnd(5, 5000), "app.py": b"print(1)\n"})
        got = hf_hub_download("org/thing", "data/train.parquet", repo_type=repo_type, **common)
        assert Path(got).read_bytes() == rnd(5, 5000)
        path = snapshot_download("org/thing", repo_type=repo_type, **common)
        assert (Path(path) / "app.py").read_bytes() == b"print(1)\n"
    assert hub.count(path_contains="/datasets/org/thing/resolve/") > 0
    assert hub.count(path_contains="/api/spaces/org/thing/tree/") == 1


def test_list_repo_tree_paginates_like_the_hub(hub: HubEmulator) -> None:
    hub.page_size = 4
    repo = hub.create_repo("org/many")
    files = {f"d{i % 3}/sub{i % 2}/f{i:02d}.txt": f"{i}".encode() for i in range(13)} | {"top.bin": b"x" * 10}
    sha = repo.commit(files)
    api = HfApi(endpoint=hub.url, token=False)
    entries = list(api.list_repo_tree("org/many", recursive=True))
    file_entries = {e.path: e for e in entries if hasattr(e, "blob_id")}
    dirs = {e.path for e in entries if not hasattr(e, "blob_id")}
    assert file_entries.keys() == files.keys()
    assert dirs == {"d0", "d1", "d2"} | {f"d{a}/sub{b}" for a in range(3) for b in range(2)}
    assert hub.count(path_contains="/tree/main") == math.ceil(len(entries) / 4)
    assert file_entries["top.bin"].lfs is not None and file_entries["top.bin"].lfs.size == 10
    assert file_entries["top.bin"].lfs.sha256 == repo.file_info(sha, "top.bin").sha256
    assert file_entries["d0/sub0/f00.txt"].blob_id == git_blob_sha1(b"0")
    assert [r.query.get("cursor") is not None for r in hub.requests] == [False] + [True] * (
        len(hub.requests) - 1
    )

    top = [e.path for e in api.list_repo_tree("org/many")]
    assert top == ["d0", "d1", "d2", "top.bin"]
    assert sorted(e.path for e in api.list_repo_tree("org/many", path_in_repo="d1/sub1")) == [
        p for p in sorted(files) if p.startswith("d1/sub1/")
    ]
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree("org/many", path_in_repo="nope"))
    infos = api.get_paths_info("org/many", ["top.bin", "d0", "missing"])
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "top.bin"), ("RepoFolder", "d0")]


def test_tree_listing_renders_each_entry_once_across_pages(
    hub: HubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing N files in pages costs O(N): the listing was rebuilt for every page (O(N²/page))."""
    hub.page_size = 50
    hub.create_repo("org/wide").commit({f"part-{i // 100}/f{i:04d}.txt": b"" for i in range(1000)})
    rendered: list[str] = []
    entry = HubEmulator._entry

    def counted(self: HubEmulator, commit: Commit, path: str, expand: bool) -> dict[str, object]:
        rendered.append(path)
        return entry(self, commit, path, expand)

    monkeypatch.setattr(HubEmulator, "_entry", counted)
    api = HfApi(endpoint=hub.url, token=False)
    listed = [e.path for e in api.list_repo_tree("org/wide", recursive=True)]
    assert len(listed) == 1010 and listed == sorted(listed)
    assert hub.count(path_contains="/tree/main") == math.ceil(1010 / 50)
    assert rendered == listed


def test_refs_repo_info_whoami_auth_check_commits(hub: HubEmulator) -> None:
    hub.add_user("alice", token=ALICE, role="read")
    hub.add_user("bob", token=BOB, role="fineGrained", can_read_gated=False)
    repo, files = make_model(hub)
    first = repo.head()
    repo.create_tag("v1.0")
    repo.create_branch("dev")
    repo.create_branch("refs/pr/3")
    repo.create_branch("tmp")
    repo.delete_branch("tmp")
    second = repo.commit({"new.txt": b"new"})
    api = HfApi(endpoint=hub.url, token=ALICE)

    refs = api.list_repo_refs("org/model", include_pull_requests=True)
    assert {(b.name, b.ref, b.target_commit) for b in refs.branches} == {
        ("main", "refs/heads/main", second),
        ("dev", "refs/heads/dev", first),
    }
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", first)]
    assert [p.ref for p in refs.pull_requests or []] == ["refs/pr/3"]
    assert refs.converts == []

    info = api.repo_info("org/model", files_metadata=True)
    assert (info.id, info.sha, info.private, info.gated, info.disabled) == (
        "org/model",
        second,
        False,
        False,
        False,
    )
    sib = {s.rfilename: s for s in info.siblings or []}
    assert sib.keys() == files.keys() | {"new.txt"}
    assert sib["model.safetensors"].lfs is not None
    assert sib["model.safetensors"].lfs.sha256 == repo.file_info(second, "model.safetensors").sha256
    assert sib["config.json"].lfs is None and sib["config.json"].blob_id == git_blob_sha1(
        files["config.json"]
    )
    assert api.model_info("org/model", revision="v1.0").sha == first
    assert api.model_info("org/model", revision=first).sha == first
    raw = httpx2.get(f"{hub.url}/api/models/org/model/revision/main")
    assert raw.headers["content-type"].startswith("application/json") and raw.headers["x-request-id"]
    assert set(raw.json()) >= {
        "_id",
        "id",
        "modelId",
        "sha",
        "private",
        "gated",
        "disabled",
        "lastModified",
        "siblings",
        "tags",
        "downloads",
        "likes",
    }
    assert "size" not in raw.json()["siblings"][0]

    ds = hub.create_repo("org/ds", repo_type="dataset")
    ds_sha = ds.commit({"data/x.csv": b"a,b\n"})
    dinfo = api.dataset_info("org/ds")
    assert (dinfo.id, dinfo.sha) == ("org/ds", ds_sha)
    assert "modelId" not in httpx2.get(f"{hub.url}/api/datasets/org/ds").json()

    me = api.whoami()
    assert me["name"] == "alice" and me["type"] == "user"
    assert me["auth"]["accessToken"]["role"] == "read" and "fineGrained" not in me["auth"]["accessToken"]
    bob = api.whoami(token=BOB)["auth"]["accessToken"]
    assert bob["role"] == "fineGrained" and bob["fineGrained"]["canReadGatedRepos"] is False
    with pytest.raises(HfHubHTTPError) as exc:
        api.whoami(token="hf_not_a_token")
    assert exc.value.response.status_code == 401
    assert httpx2.get(f"{hub.url}/api/whoami-v2").status_code == 401

    api.auth_check("org/model")
    api.auth_check("org/ds", repo_type="dataset")
    commits = api.list_repo_commits("org/model")
    assert [c.commit_id for c in commits] == [second, first]
    assert httpx2.get(f"{hub.url}/api/agent-harnesses").json() == {"standardEnvVars": [], "harnesses": {}}
    assert httpx2.get(f"{hub.url}/api/nope").status_code == 404


def test_access_errors_match_the_real_hub(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_user("alice", token=ALICE)
    hub.add_user("bob", token=BOB, role="fineGrained", can_read_gated=False)
    hub.add_user("carol", token=CAROL, role="write")
    hub.add_user("dave", token="hf_dave")
    gated = hub.create_repo("org/gated", gated="manual", owner="carol")
    gated.commit({"config.json": b"{}", "model.safetensors": b"w" * 100})
    private = hub.create_repo("org/private", private=True, owner="carol")
    private.commit({"config.json": b"{}"})
    make_model(hub, "org/public")
    hub.grant_gated("org/gated", "bob")
    hub.grant_gated("org/gated", "dave", status="pending")
    common = {"endpoint": hub.url, "cache_dir": cache_of(tmp_path)}

    def dl(repo: str, token: str | bool, filename: str = "config.json", **kw: object) -> str:
        return hf_hub_download(repo, filename, token=token, **common, **kw)  # type: ignore[arg-type]

    with pytest.raises(GatedRepoError) as exc:
        dl("org/gated", False)
    assert exc.value.response.status_code == 401
    assert "You must have access to it and be authenticated" in str(exc.value)
    with pytest.raises(GatedRepoError) as exc:
        dl("org/gated", ALICE)
    assert exc.value.response.status_code == 403
    assert f"Visit {hub.url}/org/gated to ask for access" in str(exc.value)
    with pytest.raises(GatedRepoError, match="awaiting a review"):
        dl("org/gated", "hf_dave")
    # Granted, but the fine-grained token lacks the gated permission: a bare 403 (no X-Error-Code), which
    # huggingface_hub 2.4.0 turns into a misleading LocalEntryNotFoundError (the 403 is only the __cause__).
    with pytest.raises(LocalEntryNotFoundError) as lexc:
        dl("org/gated", BOB)
    cause = lexc.value.__cause__
    assert isinstance(cause, HfHubHTTPError) and not isinstance(cause, GatedRepoError)
    assert cause.response.status_code == 403 and "X-Error-Code" not in cause.response.headers
    assert Path(dl("org/gated", CAROL, "model.safetensors")).read_bytes() == b"w" * 100  # owner
    hub.grant_gated("org/gated", "alice")
    assert Path(dl("org/gated", ALICE)).read_bytes() == b"{}"
    # Files cached under a commit are returned without any request that could check access...
    snapshot_download("org/gated", token=False, **common)  # type: ignore[arg-type]
    with pytest.raises(GatedRepoError):  # ...while a fresh cache hits the gate on the first HEAD.
        snapshot_download("org/gated", token=False, endpoint=hub.url, cache_dir=tmp_path / "fresh")

    api = HfApi(endpoint=hub.url)
    assert api.repo_info("org/gated", token=False).gated == "manual"  # metadata is not gated
    assert len(list(api.list_repo_tree("org/gated", token=False))) == 2
    with pytest.raises(GatedRepoError):
        api.auth_check("org/gated", token=False)
    with pytest.raises(GatedRepoError):
        api.auth_check("org/gated", token="hf_dave")
    with pytest.raises(HfHubHTTPError, match="enable access to public gated repositories") as exc:
        api.auth_check("org/gated", token=BOB)
    assert exc.value.response.status_code == 403 and not isinstance(exc.value, GatedRepoError)
    api.auth_check("org/gated", token=ALICE)

    for token, status in ((False, 401), ("hf_dave", 404)):
        with pytest.raises(RepositoryNotFoundError) as exc:
            dl("org/private", token)
        assert not isinstance(exc.value, GatedRepoError) and exc.value.response.status_code == status
        with pytest.raises(RepositoryNotFoundError):
            api.repo_info("org/private", token=token)
        with pytest.raises(RepositoryNotFoundError):
            dl("org/does-not-exist", token)
    assert Path(dl("org/private", CAROL)).read_bytes() == b"{}"
    hub.add_member("org/private", "alice")
    assert api.repo_info("org/private", token=ALICE).private is True

    with pytest.raises(RevisionNotFoundError):
        dl("org/public", False, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("org/public", revision="0" * 40, token=False)
    with pytest.raises(RemoteEntryNotFoundError):
        dl("org/public", False, "missing.txt")

    hub.revoke_token(ALICE)
    with pytest.raises(HfHubHTTPError) as exc:
        dl("org/public", ALICE, "README.md")
    assert not isinstance(exc.value, RepositoryNotFoundError) and exc.value.response.status_code == 401

    r = httpx2.get(f"{hub.url}/org/gated/resolve/main/config.json")
    assert (r.status_code, r.headers["x-error-code"], r.json()["error"]) == (
        401,
        "GatedRepo",
        "Access to model org/gated is restricted. You must have access to it and be "
        "authenticated to access it. Please log in.",
    )
    r = httpx2.head(f"{hub.url}/org/public/resolve/main/missing.txt")
    assert (r.status_code, r.headers["x-error-code"]) == (404, "EntryNotFound")
    assert (
        r.headers["x-error-message"] == 'missing.txt does not exist on "main"' and r.headers["x-repo-commit"]
    )
    r = httpx2.get(f"{hub.url}/api/models/org/public/revision/nope")
    assert (r.status_code, r.headers["x-error-code"], r.json()) == (
        404,
        "RevisionNotFound",
        {"error": "Invalid rev id: nope"},
    )
    r = httpx2.get(f"{hub.url}/api/datasets/org/nothing", headers={"authorization": f"Bearer {CAROL}"})
    assert (r.status_code, r.headers["x-error-code"], r.json()) == (
        404,
        "RepoNotFound",
        {"error": "Repository not found"},
    )
    r = httpx2.get(f"{hub.url}/api/models/org/public", headers={"authorization": f"Bearer {ALICE}"})
    assert r.status_code == 401 and "x-error-code" not in r.headers
    assert r.json() == {"error": "Invalid credentials in Authorization header"}


# ----------------------------------------------------------------------------------------------- raw HTTP
def lfs_location(hub: HubEmulator, repo: str, path: str) -> str:
    r = httpx2.head(hub.file_url(repo, path))
    assert r.status_code == 302 and r.headers["content-length"] == "0"
    return r.headers["location"]


def test_resolve_headers_ranges_and_keep_alive(hub: HubEmulator) -> None:
    repo, files = make_model(hub)
    head = repo.head()
    with httpx2.Client() as c:
        r = c.head(hub.file_url("org/model", "sub/dir/deeper/b.txt"))
        assert r.status_code == 200 and r.headers["content-length"] == "3000"
        assert r.headers["etag"] == f'"{git_blob_sha1(files["sub/dir/deeper/b.txt"])}"'
        assert r.headers["x-repo-commit"] == head and r.headers["accept-ranges"] == "bytes"
        r = c.head(hub.file_url("org/model", "model.safetensors"))
        info = repo.file_info(head, "model.safetensors")
        assert r.status_code == 302 and r.headers["location"].startswith(f"{hub.cdn_url}/lfs/{info.sha256}?")
        assert r.headers["x-linked-etag"] == f'"{info.sha256}"' and r.headers["etag"] == f'"{info.oid}"'
        assert r.headers["x-linked-size"] == str(len(files["model.safetensors"]))
        ports = {rec.client_port for rec in hub.requests}
        assert len(ports) == 1  # HTTP/1.1 keep-alive: one connection for both requests

        data = files["model.safetensors"]
        loc = r.headers["location"]
        for url, body in (
            (hub.file_url("org/model", "sub/dir/deeper/b.txt"), files["sub/dir/deeper/b.txt"]),
            (loc, data),
        ):
            r = c.get(url, headers={"Range": "bytes=10-19"})
            assert (r.status_code, r.content, r.headers["content-range"]) == (
                206,
                body[10:20],
                f"bytes 10-19/{len(body)}",
            )
            r = c.get(url, headers={"Range": "bytes=-5"})
            assert (r.status_code, r.content) == (206, body[-5:])
            r = c.get(url, headers={"Range": "bytes=100-"})
            assert (r.status_code, r.content) == (206, body[100:])
            r = c.get(url, headers={"Range": f"bytes={len(body)}-"})
            assert (r.status_code, r.headers["content-range"]) == (416, f"bytes */{len(body)}")
            r = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
            assert (r.status_code, r.content) == (200, body)
        assert c.get(loc).headers["etag"] == f'"{info.sha256}"'
        assert c.get(loc.replace("signature=", "signature=0")).status_code == 403
        assert c.get(f"{hub.cdn_url}/lfs/{info.sha256}").status_code == 403
    assert hub.count(origin="cdn") == 8


def test_each_fault_kind_fires(hub: HubEmulator) -> None:
    _, files = make_model(hub)
    data = files["model.safetensors"]
    url = hub.file_url("org/model", "config.json")
    with httpx2.Client() as c:
        f503 = hub.inject(Fault(kind="status", status=503, times=2, match=r"/resolve/", origin="api"))
        assert [c.get(url).status_code for _ in range(3)] == [503, 503, 200]
        assert f503.fired == 2 and [r.status for r in hub.requests] == [503, 503, 200]
        hub.inject(Fault(kind="status", status=429, times=1, headers={"Retry-After": "1"}))
        r = c.get(url)
        assert (r.status_code, r.headers["retry-after"]) == (429, "1")
        hub.inject(Fault(kind="status", status=500, origin="cdn"))  # does not match API requests
        assert c.get(url).status_code == 200
        loc = lfs_location(hub, "org/model", "model.safetensors")
        assert c.get(loc).status_code == 500
        hub.clear_faults()

        reset = hub.inject(Fault(kind="reset", after_bytes=100_000, origin="cdn"))
        got = bytearray()
        with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)), c.stream("GET", loc) as resp:
            assert resp.status_code == 200 and resp.headers["content-length"] == str(len(data))
            for chunk in resp.iter_raw():
                got += chunk
        assert reset.fired == 1 and bytes(got) == data[: len(got)] and len(got) <= 100_000
        assert hub.requests[-1].body_bytes == 100_000

        truncate = hub.inject(Fault(kind="truncate", after_bytes=100_000, origin="cdn"))
        with pytest.raises(httpx2.RemoteProtocolError), c.stream("GET", loc) as resp:  # FIN, not RST
            for _ in resp.iter_raw():
                pass
        assert truncate.fired == 1 and hub.requests[-1].body_bytes == 100_000

        corrupt = hub.inject(Fault(kind="corrupt", origin="cdn"))
        body = c.get(loc).content
        assert corrupt.fired == 1 and len(body) == len(data) and body != data
        assert sum(a != b for a, b in zip(body, data, strict=True)) == 1
        assert c.get(loc).content == data  # times=1: used up

        hub.inject(Fault(kind="ignore_range", times=None, origin="cdn"))
        r = c.get(loc, headers={"Range": "bytes=0-99"})
        assert (r.status_code, len(r.content)) == (200, len(data))
        hub.clear_faults()
        assert c.get(loc, headers={"Range": "bytes=0-99"}).status_code == 206

        slow = hub.inject(Fault(kind="slow", bytes_per_sec=5_000_000, times=1))
        t0 = time.monotonic()
        r = c.get(hub.file_url("org/model", "model.safetensors"), follow_redirects=True)
        assert r.content == data and slow.fired == 1  # the body-less 302 did not use the fault up
        assert time.monotonic() - t0 >= 0.25  # 1.5 MB at 5 MB/s

        hub.bandwidth_per_connection = 5_000_000  # CDN only
        t0 = time.monotonic()
        assert c.get(url).content == files["config.json"]
        assert c.get(loc).content == data
        assert time.monotonic() - t0 >= 0.25
        hub.bandwidth_per_connection = None


def test_real_client_resumes_a_truncated_download_with_range(hub: HubEmulator, tmp_path: Path) -> None:
    data = rnd(9, 12 << 20)
    hub.create_repo("org/big").commit({"model.safetensors": data})
    mib = 1 << 20
    hub.inject(Fault(kind="truncate", after_bytes=11 * mib, origin="cdn"))
    path = hf_hub_download(
        "org/big", "model.safetensors", endpoint=hub.url, cache_dir=cache_of(tmp_path), token=False
    )
    assert Path(path).read_bytes() == data
    # huggingface_hub retries a RemoteProtocolError (not a RST's ReadError) after 1 s with a Range request,
    # but only from the last whole 10 MiB chunk it wrote: the extra 1 MiB received is thrown away.
    assert [(r.status, r.range, r.body_bytes) for r in hub.requests if r.origin == "cdn"] == [
        (200, None, 11 * mib),
        (206, f"bytes={10 * mib}-", 2 * mib),
    ]


def test_stop_lifetime_and_context_manager() -> None:
    with HubEmulator(max_lifetime=0.4) as hub:
        url = hub.url
        with httpx2.Client() as c:
            assert c.get(f"{url}/api/agent-harnesses").status_code == 200
            time.sleep(0.7)  # safety net fires: both servers stop and cut the keep-alive connection
            with pytest.raises(httpx2.TransportError):
                c.get(f"{url}/api/agent-harnesses")
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(hub.cdn_url)
    hub.stop()  # idempotent
    proxy = ForwardProxy(max_lifetime=0.3).start()
    time.sleep(0.5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


def test_commit_model(hub: HubEmulator) -> None:
    repo = hub.create_repo("org/c")
    with pytest.raises(KeyError):
        repo.head("main")  # repos start empty
    a = repo.commit({"x.bin": b"1", "y.txt": b"2", "big.txt": b"z" * 20}, lfs={"big.txt"})
    assert repo.lfs_paths(a) == {"big.txt"}  # explicit set overrides the suffix rule
    b = repo.commit({"y.txt": None, "n/z.txt": b"3"})
    assert len({a, b}) == 2 and all(len(s) == 40 and int(s, 16) >= 0 for s in (a, b))
    assert repo.files(b) == {"x.bin": b"1", "big.txt": b"z" * 20, "n/z.txt": b"3"}
    assert repo.lfs_paths(b) == {"big.txt"}
    assert repo.files(a)["y.txt"] == b"2"
    other = hub.create_repo("org/c2")
    assert other.commit({"x.bin": b"1"}) != repo.commit({"x.bin": b"1"}, branch="fresh")
    with pytest.raises(ValueError):
        repo.commit({"n": b"file where a directory is"})
    with pytest.raises(ValueError):
        hub.create_repo("org/c")


# ------------------------------------------------------------------------------------------------- proxy
def test_proxy_ok_relays_files_and_real_client(hub: HubEmulator, proxy_factory, tmp_path: Path) -> None:
    _, files = make_model(hub)
    proxy = proxy_factory()
    with httpx2.Client(proxy=proxy.url) as c:
        r = c.get(hub.file_url("org/model", "config.json"))
        assert (r.status_code, r.content, r.headers["via"]) == (
            200,
            files["config.json"],
            "1.1 prefetch-test-proxy",
        )
        r = c.get(hub.file_url("org/model", "model.safetensors"), follow_redirects=True)
        assert r.content == files["model.safetensors"] and r.headers["via"] == "1.1 prefetch-test-proxy"
        r = c.get(hub.file_url("org/model", "README.md"), headers={"Range": "bytes=2-5"})
        assert (r.status_code, r.content) == (206, files["README.md"][2:6])
        for _ in range(2):
            r = c.head(hub.file_url("org/model", "README.md"))
            assert (r.status_code, r.headers["content-length"], r.content) == (
                200,
                str(len(files["README.md"])),
                b"",
            )
        r = c.get("http://example.com/")
        assert r.status_code == 403
    api, cdn = hub.url.split("//")[1], hub.cdn_url.split("//")[1]
    assert [(m, t.split("/")[2], s) for m, t, s in proxy.requests] == [
        ("GET", api, 200),
        ("GET", api, 302),
        ("GET", cdn, 200),
        ("GET", api, 206),
        ("HEAD", api, 200),
        ("HEAD", api, 200),
        ("GET", "example.com", 403),
    ]
    assert len({r.client_port for r in hub.requests if r.origin == "api"}) == 1  # upstream keep-alive

    # The real client through the proxy (huggingface_hub only reads proxies at client creation).
    def factory() -> httpx2.Client:
        return httpx2.Client(
            proxy=proxy.url,
            event_hooks={"request": [hf_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=None,
        )

    hf_http.set_client_factory(factory)
    try:
        path = snapshot_download("org/model", endpoint=hub.url, cache_dir=cache_of(tmp_path), token=False)
    finally:
        hf_http.set_client_factory(hf_http.default_client_factory)
    assert all((Path(path) / p).read_bytes() == d for p, d in files.items())
    assert proxy.count() == 7 + 2 + 2 * len(files)

    hub.inject(Fault(kind="reset", after_bytes=1000, origin="cdn"))  # origin reset propagates as a reset
    with httpx2.Client(proxy=proxy.url) as c, pytest.raises(httpx2.TransportError):
        c.get(hub.file_url("org/model", "model.safetensors"), follow_redirects=True)


def test_proxy_failure_modes_and_auth(hub: HubEmulator, proxy_factory) -> None:
    make_model(hub)
    url = hub.file_url("org/model", "config.json")
    authed = proxy_factory(credentials=("user", "p@ss"))
    assert authed.url == f"http://user:p%40ss@127.0.0.1:{authed.port}"
    with httpx2.Client(proxy=authed.url) as c:
        assert c.get(url).status_code == 200
    with httpx2.Client(proxy=f"http://127.0.0.1:{authed.port}") as c:
        r = c.get(url)
        assert (r.status_code, r.headers["proxy-authenticate"]) == (407, 'Basic realm="test"')

    proxy = proxy_factory()
    with httpx2.Client(proxy=proxy.url) as c:
        proxy.mode = "407"
        assert c.get(url).status_code == 407
        for code in ("502", "503", "504"):
            proxy.mode = code
            r = c.get(url)
            assert r.status_code == int(code)
            assert r.headers["proxy-status"] == "prefetch-test-proxy; error=destination_unavailable"
            assert "text/html" in r.headers["content-type"]
        proxy.mode = "reset"
        with pytest.raises(httpx2.TransportError):
            c.get(url)
    proxy.mode = "refuse"
    with httpx2.Client(proxy=proxy.url) as c, pytest.raises(httpx2.ConnectError):
        c.get(url)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    proxy.mode = "ok"  # listens again on the same port
    with httpx2.Client(proxy=proxy.url) as c:
        assert c.get(url).status_code == 200
    assert [s for _, _, s in proxy.requests] == [407, 502, 503, 504, 0, 200]
    assert proxy_factory(mode="refuse").port > 0

    # CONNECT tunnel (what clients do for https:// origins), raw.
    hub_port = int(hub.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", authed.port), timeout=5) as s:
        cred = base64.b64encode(b"user:p@ss").decode()
        s.sendall(
            f"CONNECT 127.0.0.1:{hub_port} HTTP/1.1\r\nHost: 127.0.0.1:{hub_port}\r\n"
            f"Proxy-Authorization: Basic {cred}\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /org/model/resolve/main/config.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"model_type": "demo"}\n')
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 403")


# -------------------------------------------------------------------------------------------------- demo
def test_demo_cli_serves_the_demo_hub(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hubemu", "--lifetime", "30"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        token_line = proc.stdout.readline()
        assert endpoint.startswith("HF_ENDPOINT=http://127.0.0.1:") and DEMO_TOKEN in token_line
        url = endpoint.split("=", 1)[1]
        common = {"endpoint": url, "cache_dir": cache_of(tmp_path)}
        path = hf_hub_download("demo/gated-model", "model.safetensors", token=DEMO_TOKEN, **common)
        assert Path(path).read_bytes()[8:17] == b'{"weight"'
        with pytest.raises(GatedRepoError):
            hf_hub_download("demo/gated-model", "config.json", token=False, **common)
        snap = snapshot_download("demo/tiny-model", revision="v1.0", token=False, **common)
        assert os.path.getsize(Path(snap) / "model.safetensors") > 2_000_000
        assert not (Path(snap) / "README.md").exists()
        data = snapshot_download("demo/tiny-dataset", repo_type="dataset", token=False, **common)
        assert len(list((Path(data) / "data").iterdir())) == 4
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------- TLS
def tls_client(hub: HubEmulator, **kw: object) -> httpx2.Client:
    """httpx2 trusting only the emulator's CA (an explicit context: no SSL_CERT_FILE, no system store)."""
    return httpx2.Client(verify=ssl.create_default_context(cafile=hub.ca_file), **kw)  # type: ignore[arg-type]


def raw_tls_read_until_error(hub: HubEmulator, url: str) -> tuple[bytes, BaseException | None]:
    """GET `url` over TLS on a plain socket (ssl.MemoryBIO), so a TCP RST shows as ConnectionResetError.

    Python's SSLSocket reports a reset under TLS as a (suppressed) unexpected EOF, which hides whether the
    server sent a RST or a FIN; reading the TCP socket ourselves does not.
    """
    split = urlsplit(url)
    sock = socket.create_connection(("127.0.0.1", split.port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = hub.client_ssl_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

    def flush() -> None:
        if outgoing.pending:
            sock.sendall(outgoing.read())

    received = bytearray()
    error: BaseException | None = None
    with sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                data = sock.recv(65536)
                incoming.write(data) if data else incoming.write_eof()
        flush()
        tls.write(f"GET {split.path}?{split.query} HTTP/1.1\r\nHost: {split.netloc}\r\n\r\n".encode())
        flush()
        try:
            while data := sock.recv(65536):
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    while chunk := tls.read(65536):
                        received += chunk
        except OSError as exc:
            error = exc
    return bytes(received), error


def test_tls_ca_file_urls_and_handshake_in_the_handler_thread(tls_hub: HubEmulator) -> None:
    assert tls_hub.url.startswith("https://127.0.0.1:") and tls_hub.cdn_url.startswith("https://127.0.0.1:")
    pem = Path(tls_hub.ca_file).read_text()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    with pytest.raises(RuntimeError, match="tls=True"):
        HubEmulator().ca_file  # noqa: B018
    # A client that connects and never says hello must not block accept (the handshake is per thread).
    port = urlsplit(tls_hub.url).port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    idle_ports = {sock.getsockname()[1] for sock in idle}
    try:
        t0 = time.monotonic()
        with tls_client(tls_hub, timeout=5) as c:
            assert c.get(f"{tls_hub.url}/api/agent-harnesses").status_code == 200
        assert time.monotonic() - t0 < 2
        # the certificate is for 127.0.0.1 and localhost
        with tls_client(tls_hub, timeout=5) as c:
            assert c.get(f"https://localhost:{port}/api/agent-harnesses").status_code == 200
    finally:
        for sock in idle:
            sock.close()
    served = [h for h in tls_hub.tls_handshakes if h.client_port not in idle_ports]
    assert [h.ok for h in served] == [True, True]
    ca_dir = Path(tls_hub.ca_file).parent
    tls_hub.stop()
    assert not ca_dir.exists()  # the CA is removed on stop


def test_tls_api_redirect_to_https_cdn_ranges_and_keep_alive(tls_hub: HubEmulator) -> None:
    tls_hub.add_user("alice", token=ALICE)
    repo, files = make_model(tls_hub, private=True, owner="alice")
    head = repo.head()
    auth = {"Authorization": f"Bearer {ALICE}"}
    with tls_client(tls_hub) as c:
        info = c.get(f"{tls_hub.url}/api/models/org/model/revision/main?blobs=true", headers=auth).json()
        assert info["sha"] == head and info["private"] is True
        assert len(info["siblings"]) == len(files)
        assert c.get(f"{tls_hub.url}/api/models/org/model").status_code == 401  # private, no token
        r = c.get(tls_hub.file_url("org/model", "config.json"), headers=auth)
        assert (r.status_code, r.content) == (200, files["config.json"])
        r = c.get(tls_hub.file_url("org/model", "model.safetensors"), headers=auth)
        sha = repo.file_info(head, "model.safetensors").sha256
        assert r.status_code == 302 and r.headers["location"].startswith(f"{tls_hub.cdn_url}/lfs/{sha}?")
        loc = r.headers["location"]
        assert loc.startswith("https://")
        data = files["model.safetensors"]
        assert c.get(loc).content == data
        r = c.get(loc, headers={"Range": "bytes=10-19"})
        assert (r.status_code, r.content, r.headers["content-range"]) == (
            206,
            data[10:20],
            f"bytes 10-19/{len(data)}",
        )
        r = c.get(tls_hub.file_url("org/model", "README.md"), headers={**auth, "Range": "bytes=2-"})
        assert (r.status_code, r.content) == (206, files["README.md"][2:])
        # paginated listings link to the https origin
        tls_hub.page_size = 2
        r = c.get(f"{tls_hub.url}/api/models/org/model/tree/main?recursive=true", headers=auth)
        assert r.headers["link"].startswith(f"<{tls_hub.url}/api/models/org/model/tree/main?")
    # keep-alive over TLS: one connection (one handshake) per origin
    assert [(h.origin, h.ok) for h in tls_hub.tls_handshakes] == [("api", True), ("cdn", True)]
    assert len({r.client_port for r in tls_hub.requests if r.origin == "api"}) == 1
    assert tls_hub.bytes_served(path_contains=sha) == len(data) + 10


def test_tls_faults_and_an_untrusted_client(tls_hub: HubEmulator) -> None:
    _, files = make_model(tls_hub)
    data = files["model.safetensors"]
    with tls_client(tls_hub) as c:
        loc = c.head(tls_hub.file_url("org/model", "model.safetensors")).headers["location"]
        tls_hub.inject(Fault(kind="status", status=503, origin="cdn"))
        assert c.get(loc).status_code == 503

        reset = tls_hub.inject(Fault(kind="reset", after_bytes=100_000, origin="cdn"))
        got = bytearray()
        # Python's ssl turns a RST under TLS into an unexpected EOF: httpx2 says RemoteProtocolError
        with pytest.raises(httpx2.TransportError), c.stream("GET", loc) as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw():
                got += chunk
        assert reset.fired == 1 and bytes(got) == data[: len(got)] and len(got) <= 100_000
        assert tls_hub.requests[-1].body_bytes == 100_000

        corrupt = tls_hub.inject(Fault(kind="corrupt", origin="cdn"))
        body = c.get(loc).content
        assert corrupt.fired == 1 and sum(a != b for a, b in zip(body, data, strict=True)) == 1

        slow = tls_hub.inject(Fault(kind="slow", bytes_per_sec=5_000_000, origin="cdn"))
        t0 = time.monotonic()
        assert c.get(loc).content == data and slow.fired == 1
        assert time.monotonic() - t0 >= 0.25

        tls_hub.inject(Fault(kind="truncate", after_bytes=50_000, origin="cdn"))
        with pytest.raises(httpx2.RemoteProtocolError), c.stream("GET", loc) as resp:
            for _ in resp.iter_raw():
                pass

    # On the wire, `reset` really is a TCP RST (and `truncate` a clean close) under TLS too.
    tls_hub.inject(Fault(kind="reset", after_bytes=100_000, origin="cdn"))
    reply, error = raw_tls_read_until_error(tls_hub, loc)
    assert isinstance(error, ConnectionResetError), error
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(data[100_000 - 200 : 100_000])
    tls_hub.inject(Fault(kind="truncate", after_bytes=100_000, origin="cdn"))
    reply, error = raw_tls_read_until_error(tls_hub, loc)
    assert error is None and reply.endswith(data[100_000 - 200 : 100_000])

    # A client that does not trust the CA fails the handshake; the emulator records why, and no request.
    tls_hub.reset_counters()
    with httpx2.Client(verify=ssl.create_default_context()) as c, pytest.raises(httpx2.ConnectError) as e:
        c.get(f"{tls_hub.url}/api/agent-harnesses")
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
    deadline = time.monotonic() + 5
    while not tls_hub.tls_handshakes and time.monotonic() < deadline:
        time.sleep(0.01)  # the server thread records the failure right after the client gave up
    (shake,) = tls_hub.tls_handshakes
    assert not shake.ok and "unknown ca" in (shake.error or "").lower()
    assert tls_hub.count() == 0


def test_tls_stop_cuts_keep_alive_connections(tls_hub: HubEmulator) -> None:
    with tls_client(tls_hub, timeout=5) as c:
        assert c.get(f"{tls_hub.url}/api/agent-harnesses").status_code == 200
        assert c.get(f"{tls_hub.cdn_url}/lfs/x").status_code == 403  # unsigned
        t0 = time.monotonic()
        tls_hub.stop()
        assert time.monotonic() - t0 < 2
        with pytest.raises(httpx2.TransportError):
            c.get(f"{tls_hub.url}/api/agent-harnesses")
    assert all(h.ok for h in tls_hub.tls_handshakes)


def test_tls_real_client_honours_ssl_cert_file(
    tls_hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub's default client trusts SSL_CERT_FILE: the baseline prefetch is held to."""
    _, files = make_model(tls_hub)
    monkeypatch.setenv("SSL_CERT_FILE", tls_hub.ca_file)
    hf_http.set_client_factory(hf_http.default_client_factory)  # a fresh client reads SSL_CERT_FILE
    try:
        path = snapshot_download("org/model", endpoint=tls_hub.url, cache_dir=cache_of(tmp_path), token=False)
    finally:
        hf_http.set_client_factory(hf_http.default_client_factory)  # drop the client that trusts the CA
    assert all((Path(path) / p).read_bytes() == d for p, d in files.items())
    assert {r.origin for r in tls_hub.requests} == {"api", "cdn"}


def test_tls_connect_tunnel_through_the_forward_proxy(tls_hub: HubEmulator, proxy_factory) -> None:
    _, files = make_model(tls_hub)
    proxy = proxy_factory(credentials=("user", "p@ss"))
    with tls_client(tls_hub, proxy=proxy.url) as c:
        r = c.get(tls_hub.file_url("org/model", "config.json"))
        assert (r.status_code, r.content) == (200, files["config.json"])
        assert "via" not in r.headers  # end-to-end TLS: the proxy cannot touch the response
        r = c.get(tls_hub.file_url("org/model", "model.safetensors"), follow_redirects=True)
        assert r.content == files["model.safetensors"]
        r = c.get(tls_hub.file_url("org/model", "README.md"), headers={"Range": "bytes=2-5"})
        assert (r.status_code, r.content) == (206, files["README.md"][2:6])
    api, cdn = tls_hub.url.split("//")[1], tls_hub.cdn_url.split("//")[1]
    assert proxy.requests == [("CONNECT", api, 200), ("CONNECT", cdn, 200)]  # one tunnel per origin
    assert [(r.origin, r.status) for r in tls_hub.requests] == [
        ("api", 200),
        ("api", 302),
        ("cdn", 200),
        ("api", 206),
    ]

    tls_hub.inject(Fault(kind="reset", after_bytes=1000, origin="cdn"))  # a reset inside the tunnel
    with tls_client(tls_hub, proxy=proxy.url) as c, pytest.raises(httpx2.TransportError):
        c.get(tls_hub.file_url("org/model", "model.safetensors"), follow_redirects=True)
    with tls_client(tls_hub, proxy=f"http://127.0.0.1:{proxy.port}") as c, pytest.raises(httpx2.ProxyError):
        c.get(tls_hub.file_url("org/model", "config.json"))  # CONNECT without credentials: 407
