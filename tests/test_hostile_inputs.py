"""Issue 12, the network and input half: hostile servers, malformed proxy URLs, unwritable caches.

Every case runs the real CLI in a subprocess against the Hub emulator (its faults script the hostile
answers) or a scripted server on a real socket, and checks the exit code, the message, and that
nothing was requested or written that should not have been.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetch import settings as prefetch_settings
from prefetch.errors import UnusableAnswer, UsageError
from prefetch.hub import HubApi
from prefetch.net.proxies import checked_proxy_url, parse_proxy_url
from prefetch.net.retry import RetryPolicy
from prefetch.net.session import Http
from prefetch.progress import parse_size
from prefetch.settings import RetrySettings
from prefetch.terminal import escape_controls, printable
from prefetch.urls import is_loopback_host
from tests.conftest import CANARY_TOKEN, OTHER_TOKEN, PrefetchRunner
from tests.hubemu import Fault, HubEmulator
from tests.test_resilience import FAST, MiB, assert_cache_verifies, make_model, retry_lines, sync, tmpfs

RAW_CONTROLS = ("\x1b", "\x07", "\r", "\x9b")


def mount_read_only(path: Path) -> None:
    """A read-only filesystem at `path` (needs root: skipped elsewhere); unmounted by the caller."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {mounted.stderr.strip()}")


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    mount_read_only(path)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---------------------------------------------------------------------------------------------- proxy URLs
SECRET = st.text(alphabet="abcdefghjkmnpqrstuvwxyz23456789", min_size=6, max_size=10).map(lambda s: "Zq" + s)
MALFORMED = [
    "http://{user}:{password}/{path}@{host}:3128",  # unescaped `/` in the password
    "http://{user}:{password}#{fragment}@{host}:3128",  # unescaped `#`
    "http://{user}:{password}?{path}@{host}:3128",  # unescaped `?`
    "{user}:{password}@{host}:99999",  # scheme-less, port out of range
    "{user}:{password}@{host}:31x{path}",  # scheme-less, port not a number
    "http://{user}:{password}@{host}:3128/{path}",  # a path
    "http://{user}:{password}@{host}:3128#{fragment}",  # a fragment
    "http://{user}:{password}@{host}:3128/{path}#{fragment}",
    "socks5://{user}:{password}@{host}:1080",  # another scheme
    "https://{user}:{password}@{host}:3128",
    "{user}://{password}@{host}:3128",  # the user name where a scheme goes
    "http://{user}:{password}@{host}.{path}$:3128",  # not a host name
    "http://{user}:{password}@:3128/{path}",  # no host
    "http://{user}:{password}@{host}:3128 {path}",  # a space
    "{user}:{password}\x1b@{host}:3128",  # a control character
]


@st.composite
def malformed_proxy(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A malformed proxy URL with a distinct secret in every part, and those secrets."""
    parts = {k: draw(SECRET) for k in ("user", "password", "host", "path", "fragment")}
    template = draw(st.sampled_from(MALFORMED))
    return template.format(**parts), list(parts.values())


@pytest.mark.soak
@given(case=malformed_proxy())
@settings(max_examples=150, deadline=None, database=None)
def test_a_malformed_proxy_url_is_refused_without_quoting_any_part_of_it(case):
    url, secrets = case
    for source in ("HTTPS_PROXY", "--proxy"):
        with pytest.raises(UsageError) as caught:
            checked_proxy_url(url, source)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained original
        with pytest.raises(UsageError) as from_session:
            Http("http://127.0.0.1:1", [url], RetryPolicy(RetrySettings()))
        for text in (str(caught.value), repr(caught.value), str(from_session.value)):
            assert not [s for s in secrets if s in text], text


@pytest.mark.soak
@given(case=malformed_proxy(), where=st.sampled_from(["env", "flag", "manifest"]), as_json=st.booleans())
@settings(
    max_examples=24,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_part_of_a_malformed_proxy_url_reaches_any_output(prefetch, hub, case, where, as_json):
    """Through the CLI, from the environment, `--proxy` and the manifest: exit 2, and no secret on
    stdout, stderr or in a --json event."""
    url, secrets = case
    top = {"proxies": [url]} if where == "manifest" else {}
    manifest = prefetch.manifest(
        [{"repo": "org/proxied"}], **top
    )  # refused before any request: no repo needed
    args = [
        *(["--json"] if as_json else []),
        "sync",
        str(manifest),
        *(["--proxy", url] if where == "flag" else []),
    ]
    result = prefetch(*args, env={"HTTPS_PROXY": url} if where == "env" else None)
    assert result.code == 2, result
    assert not [s for s in secrets if s in result.output], result
    if as_json:
        (event,) = [json.loads(line) for line in result.stdout.splitlines()]
        assert event["event"] == "error" and event["exit_code"] == 2
    assert hub.count() == 0


@pytest.mark.parametrize(
    "url", ["http://a:b@h:1", "a:b@h:1", "h:3128", "http://h:3128/", "http://[::1]:3128"]
)
def test_a_proxy_url_without_a_scheme_means_http(url):
    assert parse_proxy_url(url) == "http://" + url.removeprefix("http://").rstrip("/")


def test_a_scheme_less_proxy_with_credentials_is_used_as_http(prefetch, hub, proxy_factory):
    """`HTTPS_PROXY=alice:pass@host:3128` means http://, as in curl and httpx (it was refused, password printed)."""
    model = make_model(hub, big=MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    proxy = proxy_factory("ok", credentials=("alice", "s3cret-pw"))
    result = sync(prefetch, env={"HTTPS_PROXY": f"alice:s3cret-pw@127.0.0.1:{proxy.port}"})
    assert result.code == 0, result
    assert "s3cret-pw" not in result.output
    assert proxy.count() >= hub.count() > 0
    assert_cache_verifies(prefetch.cache_dir, model)


def test_a_proxy_port_out_of_range_is_a_usage_error(prefetch, hub):
    prefetch.manifest([{"repo": make_model(hub, big=MiB).repo_id}])
    result = sync(prefetch, env={"HTTPS_PROXY": "http://127.0.0.1:99999"})
    assert result.code == 2, result
    assert "HTTPS_PROXY: the proxy port must be a number from 1 to 65535" in result.stderr
    assert hub.count() == 0


# ---------------------------------------------------------------------------------------------- control characters
EVIL_NAME = "evil\x1b]0;pwned\x07name\x9b.json"  # (a CR would break the emulator's Content-Disposition)


def test_server_strings_reach_the_terminal_with_control_characters_escaped(prefetch, hub):
    """A file name and an X-Error-Message carrying ESC/BEL/CR: retry lines and the final report show them
    escaped, never raw (a raw OSC sequence retitles the terminal)."""
    repo = hub.create_repo("org/evil")
    commit = repo.commit({EVIL_NAME: b'{"a": 1}', "config.json": b"{}"})
    prefetch.manifest([{"repo": "org/evil"}])
    hub.inject(
        Fault(kind="status", status=500, match="evil%1B", headers={"X-Error-Message": "boom\x1b[2J\x07"})
    )
    result = sync(prefetch)
    assert result.code == 0, result
    (line,) = retry_lines(result.stderr)
    assert "evil\\x1b]0;pwned\\x07name\\x9b.json" in line and "boom\\x1b[2J\\x07" in line, line
    assert not [c for c in RAW_CONTROLS if c in result.output], result
    snapshot = prefetch.cache_dir / "models--org--evil" / "snapshots" / commit / EVIL_NAME
    assert snapshot.read_bytes() == b'{"a": 1}'  # escaped for display only: the file keeps its name

    hub.inject(
        Fault(
            kind="status",
            status=403,
            match="/auth-check",
            times=None,
            body=json.dumps({"error": "no\x1b]0;x\x07\rmore"}).encode(),
        )
    )
    prefetch.manifest([{"repo": "org/evil", "revision": "main", "include": ["none"]}])
    for args in (
        ("check", str(prefetch.tmp / "models.yaml")),
        ("--json", "check", str(prefetch.tmp / "models.yaml")),
    ):
        result = prefetch(*args)
        assert result.code == 3, result
        assert "no\\x1b]0;x\\x07\\rmore" in result.output.replace("\\\\", "\\"), result
        assert not [c for c in RAW_CONTROLS if c in result.output], result


def test_printable_and_escape_controls():
    assert printable("a\x1b]0;t\x07\n\r\t\u202eb") == "a\\x1b]0;t\\x07\\n\\r\\t\\u202eb"
    assert escape_controls("line\n\tnext\x1b[2J") == "line\n\tnext\\x1b[2J"


# ---------------------------------------------------------------------------------------------- OS failures
def test_a_read_only_cache_exits_9_before_any_request(prefetch, hub):
    prefetch.manifest([{"repo": make_model(hub, big=MiB).repo_id}])
    with read_only(prefetch.tmp / "ro") as ro:
        result = sync(prefetch, "--cache-dir", str(ro / "hub"))
    assert result.code == 9, result
    assert f"cannot write the cache {ro / 'hub'}" in result.stderr and "read-only" in result.stderr
    assert "internal error" not in result.stderr
    assert hub.count() == 0


def test_a_cache_path_under_a_file_exits_9_before_any_request(prefetch, hub):
    prefetch.manifest([{"repo": make_model(hub, big=MiB).repo_id}])
    (prefetch.tmp / "a-file").write_text("not a folder")
    result = sync(prefetch, env={"HF_HUB_CACHE": str(prefetch.tmp / "a-file" / "hub")})
    assert result.code == 9, result
    assert "a file is in the way where a folder should be" in result.stderr
    assert hub.count() == 0


def test_an_unwritable_lockfile_folder_is_found_before_any_request(prefetch, hub):
    """It used to be found after the whole download."""
    prefetch.manifest([{"repo": make_model(hub, big=MiB).repo_id}])
    with read_only(prefetch.tmp / "locks") as locks:
        result = sync(prefetch, "--lock", str(locks / "models.lock"))
    assert result.code == 9, result
    assert "cannot write the lockfile's folder" in result.stderr
    assert hub.count() == 0


@contextlib.contextmanager
def read_only_view(source: Path, path: Path) -> Iterator[Path]:
    """`source` seen read-only at `path` (a read-only bind mount; needs root: skipped elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    bound = subprocess.run(["mount", "--bind", str(source), str(path)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {bound.stderr.strip()}")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True
        )
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remounted.stderr.strip()}")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_lock_that_stays_the_same_does_not_stop_a_sync(prefetch, hub):
    model = make_model(hub, big=MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    locks = prefetch.tmp / "locks"
    locks.mkdir()
    assert sync(prefetch, "--lock", str(locks / "models.lock")).code == 0
    shutil.rmtree(prefetch.cache_dir)  # files to fetch: the run makes requests, the lock stays the same
    with read_only_view(locks, prefetch.tmp / "ro-locks") as ro:
        result = sync(prefetch, "--lock", str(ro / "models.lock"))
    assert result.code == 0, result
    assert_cache_verifies(prefetch.cache_dir, model)


@pytest.mark.parametrize("frozen", [(), ("--frozen",)])
def test_a_warm_read_only_cache_is_named_not_an_internal_error(prefetch, hub, frozen):
    """A sync rewrites links and refs, so a read-only cache is exit 9 even when warm (no request is made);
    `prefetch verify` is the read-only check."""
    model = make_model(hub, big=MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    assert sync(prefetch).code == 0
    hub.reset_counters()
    with read_only_view(prefetch.cache_dir, prefetch.tmp / "ro-cache") as ro:
        result = sync(prefetch, "--cache-dir", str(ro), *frozen)
    assert result.code == 9, result
    assert "the filesystem is mounted read-only" in result.stderr and "internal error" not in result.stderr
    assert hub.count() == 0


def test_a_file_name_longer_than_the_filesystem_allows_exits_9_before_downloading(prefetch, hub):
    long_name = "x" * 300 + ".json"
    hub.create_repo("org/long").commit({long_name: b"{}", "config.json": b"{}"})
    prefetch.manifest([{"repo": "org/long"}])
    result = sync(prefetch)
    assert result.code == 9, result
    assert "is 305 bytes, the filesystem of" in result.stderr and "allows 255" in result.stderr
    assert hub.count(kind="file") == 0


def hostile_listing(hub: HubEmulator, commit: str, entries: list[dict[str, object]], **headers: str) -> Fault:
    return hub.inject(
        Fault(
            kind="status",
            status=200,
            match=f"/tree/{commit}",
            times=None,
            headers={"Content-Type": "application/json", **headers},
            body=json.dumps(entries).encode(),
        )
    )


def test_a_listing_with_a_file_and_a_folder_of_the_same_name_is_refused(prefetch, hub):
    model = make_model(hub, big=MiB)
    oid = "0" * 40
    hostile_listing(
        hub,
        model.commit,
        [
            {"type": "file", "path": "a", "size": 1, "oid": oid},
            {"type": "file", "path": "a/b", "size": 1, "oid": oid},
        ],
    )
    prefetch.manifest([{"repo": model.repo_id}])
    result = sync(prefetch)
    assert result.code == 5, result
    assert "has both a file 'a' and 'a/b' under it" in result.stderr
    assert hub.count(kind="file") == 0


def test_deeply_nested_json_is_refused_not_an_internal_error(prefetch, hub):
    model = make_model(hub, big=MiB)
    depth = 200_000
    hub.inject(
        Fault(kind="status", status=200, match="/revision/", times=None, body=b"[" * depth + b"]" * depth)
    )
    prefetch.manifest([{"repo": model.repo_id}])
    result = sync(prefetch)
    assert result.code == 5, result
    assert "nested too deeply" in result.stderr and "internal error" not in result.stderr


# ---------------------------------------------------------------------------------------------- bounds
def test_a_listing_whose_next_page_is_itself_stops(prefetch, hub):
    model = make_model(hub, big=MiB)
    url = f"{hub.url}/api/models/{model.repo_id}/tree/{model.commit}?recursive=true&expand=false"
    hostile_listing(hub, model.commit, [], Link=f'<{url}>; rel="next"')
    prefetch.manifest([{"repo": model.repo_id}])
    result = prefetch("sync", str(prefetch.tmp / "models.yaml"), *FAST, timeout=60)
    assert result.code == 5, result
    assert "the Hub's file listing repeats a page" in result.stderr
    assert hub.count(path_contains="/tree/") == 1


def test_a_listing_of_more_pages_than_the_cap_stops(hub, monkeypatch):
    repo = hub.create_repo("org/many")
    commit = repo.commit({f"f{i}.json": b"{}" for i in range(6)})
    hub.page_size = 1
    monkeypatch.setattr(prefetch_settings, "MAX_LISTING_PAGES", 3)
    http = Http(hub.url, [], RetryPolicy(RetrySettings()))
    try:
        with pytest.raises(UnusableAnswer, match="has more than 3 pages"):
            HubApi(http).list_files("org/many", "model", commit, None)
    finally:
        http.close()
    assert hub.count(path_contains="/tree/") == 3


def test_a_listing_of_more_entries_than_the_cap_stops_whatever_its_pages(hub, monkeypatch):
    """Issue 30, item 15: a cap on one listing's entries in all, not only per answer: an endpoint that
    pages on with new entries is stopped long before memory runs out, and says why."""
    repo = hub.create_repo("org/many")
    commit = repo.commit({f"f{i:03d}.json": b"{}" for i in range(100)})
    hub.page_size = 20
    monkeypatch.setattr(prefetch_settings, "MAX_LISTING_ENTRIES", 50)
    http = Http(hub.url, [], RetryPolicy(RetrySettings()))
    try:
        with pytest.raises(UnusableAnswer, match="has more than 50 entries"):
            HubApi(http).list_files("org/many", "model", commit, None)
    finally:
        http.close()
    assert hub.count(path_contains="/tree/") == 3


def test_a_json_answer_over_the_cap_is_refused_without_reading_it(prefetch, hub):
    model = make_model(hub, big=MiB)
    big = b'{"sha": "' + b"0" * (prefetch_settings.MAX_JSON_BYTES + 1) + b'"}'
    hub.inject(Fault(kind="status", status=200, match="/revision/", times=None, body=big))
    prefetch.manifest([{"repo": model.repo_id}])
    result = sync(prefetch)
    assert result.code == 5, result
    assert "refused an answer of" in result.stderr


@pytest.mark.soak
def test_a_drip_fed_body_is_abandoned_and_retry_max_time_caps_the_file(prefetch, hub):
    """200 B/s: below the floor (1 KiB/s over PREFETCH_MIN_RATE_WINDOW), so each attempt is dropped, and
    `retry.max_time` ends the retries (the drip-feed used to hold one attempt for minutes)."""
    model = make_model(hub, big=256 * 1024)
    hub.inject(Fault(kind="slow", origin="cdn", times=None, bytes_per_sec=200))
    prefetch.manifest([{"repo": model.repo_id}], retry={"attempts": 100, "max_time": 4})
    started = time.monotonic()
    result = prefetch(
        "-v",
        "sync",
        str(prefetch.tmp / "models.yaml"),
        *FAST,
        env={"PREFETCH_MIN_RATE_WINDOW": "1"},
        timeout=90,
    )
    assert result.code == 4, result
    assert "too slow" in result.stderr
    assert time.monotonic() - started < 30


def test_a_body_that_recovers_from_a_drip_feed_completes(prefetch, hub):
    model = make_model(hub, big=256 * 1024)
    hub.inject(Fault(kind="slow", origin="cdn", times=1, bytes_per_sec=200))
    prefetch.manifest([{"repo": model.repo_id}])
    result = sync(prefetch, env={"PREFETCH_MIN_RATE_WINDOW": "1"})
    assert result.code == 0, result
    (line,) = retry_lines(result.stderr)
    assert "too slow" in line
    assert_cache_verifies(prefetch.cache_dir, model)


# ---------------------------------------------------------------------------------------------- finding 8
def test_a_location_with_a_space_is_quoted_in_the_request_line(prefetch, hub):
    model = make_model(hub, big=MiB)
    target = f"{hub.url}/{model.repo_id}/resolve/{model.commit}/config.json?note=a b"
    hub.inject(
        Fault(
            kind="status",
            status=302,
            match="/config.json",
            method="GET",
            headers={"Location": target},
            body=b"",
        )
    )
    prefetch.manifest([{"repo": model.repo_id}])
    result = sync(prefetch)
    assert result.code == 0, result
    assert [r.query for r in hub.requests if r.query.get("note")] == [{"note": "a b"}]
    assert_cache_verifies(prefetch.cache_dir, model)


class OverDeclaringServer:
    """Serves `body` with a Content-Length `extra` bytes longer than it, then closes: the body is whole,
    the framing is not. Records every request head."""

    def __init__(self, body: bytes, extra: int) -> None:
        self.body, self.extra = body, extra
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    self.heads.append(head)
                    length = len(self.body) + self.extra
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + self.body)

    def close(self) -> None:
        self.listener.close()


def test_a_body_complete_but_short_of_its_declared_length_is_not_asked_for_again(prefetch, hub):
    """The retry used to ask for the inverted range `bytes=N-(N-1)` and fail."""
    model = make_model(hub, big=300 * 1024)
    server = OverDeclaringServer(model.files["model.safetensors"], extra=100)
    try:
        hub.inject(
            Fault(
                kind="status",
                status=302,
                match="/model.safetensors",
                times=None,
                headers={"Location": f"{server.url}/blob"},
                body=b"",
            )
        )
        prefetch.manifest([{"repo": model.repo_id}])
        result = sync(prefetch)
    finally:
        server.close()
    assert result.code == 0, result
    assert len(server.heads) == 1 and b"range:" not in server.heads[0].lower(), server.heads
    assert_cache_verifies(prefetch.cache_dir, model)


@pytest.mark.parametrize("path", ["model.safetensors", "tokenizer.json"])
def test_a_hand_edited_lock_hash_is_named_before_downloading(prefetch, hub, path):
    model = make_model(hub, big=MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    assert sync(prefetch).code == 0
    lock = prefetch.tmp / "models.lock"
    real = model.etag(path)
    edited = ("f" if real[0] != "f" else "e") + real[1:]
    lock.write_text(lock.read_text().replace(real, edited))
    subprocess.run(["rm", "-rf", str(prefetch.cache_dir)], check=True)
    hub.reset_counters()
    result = sync(prefetch, "--frozen")
    assert result.code == 6, result
    assert f"{model.repo_id}:{path}: the lockfile disagrees with the endpoint" in result.stderr
    assert f"the lock says hash {edited}, the endpoint says hash {real}" in result.stderr
    assert "corrupting" not in result.stderr
    assert hub.bytes_served(path_contains=real) <= (len(model.files[path]) if path == "tokenizer.json" else 0)


def test_a_small_sync_fits_a_small_volume(prefetch, hub):
    """2 MiB into a 5 MiB volume: the fixed 64 MiB margin refused it; the margin now scales with the plan."""
    model = make_model(hub, big=2 * MiB - 400 * 1024)
    prefetch.manifest([{"repo": model.repo_id}])
    with tmpfs(prefetch.tmp / "small", "5m") as small:
        result = sync(prefetch, "--cache-dir", str(small / "hub"))
        assert result.code == 0, result
        assert_cache_verifies(small / "hub", model)


def test_min_free_sets_the_margin_and_sizes_are_human(prefetch, hub):
    model = make_model(hub, big=2 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    with tmpfs(prefetch.tmp / "small", "20m") as small:
        result = sync(prefetch, "--cache-dir", str(small / "hub"), "--min-free", "10G")
    assert result.code == 8, result
    assert "2.3 MiB to fetch (+10.0 GiB kept free)" in result.stderr and "MiB free" in result.stderr
    assert hub.count(kind="file") == 0
    result = sync(prefetch, "--min-free", "ten gigs")
    assert result.code == 2 and "not a size" in result.stderr, result


@pytest.mark.parametrize(
    ("text", "size"), [("4096", 4096), ("10G", 10 << 30), ("512MiB", 512 << 20), ("1.5k", 1536)]
)
def test_parse_size(text, size):
    assert parse_size(text) == size


# ---------------------------------------------------------------------------------------------- tokens over http
@pytest.mark.parametrize("how", ["manifest token_env", "HF_TOKEN"])
def test_a_token_is_never_sent_over_plain_http_off_this_machine(prefetch, how):
    """A manifest arriving in a pull request could point `endpoint:` at any host and name any variable."""
    entry: dict[str, str] = {"repo": "org/model"}
    env: dict[str, str | None] = {"HF_ENDPOINT": "http://example.invalid:1"}
    if how == "HF_TOKEN":
        env["HF_TOKEN"] = OTHER_TOKEN
    else:
        entry["token_env"] = "ANY_VARIABLE"
        env["ANY_VARIABLE"] = OTHER_TOKEN
    manifest = prefetch.tmp / "models.yaml"
    top = {"endpoint": "http://example.invalid:1"} if how != "HF_TOKEN" else {}
    manifest.write_text(yaml.safe_dump({"version": 1, **top, "repos": [entry]}))
    for command in ("sync", "lock", "check"):
        result = prefetch("-v", command, str(manifest), "--retries", "1", env=env, timeout=60)
        assert result.code == 3, result
        assert "refusing to send a token over plain http to example.invalid" in result.stderr
        assert "use an https:// endpoint" in result.stderr
        assert "Connect" not in result.stderr and "retry" not in result.stderr  # no connection was tried


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.8.9.1", True), ("[::1]", True), ("LOCALHOST.", True),
     ("localhost.localdomain", False), ("example.invalid", False), ("10.0.0.1", False), ("::ffff:8.8.8.8", False)],
)  # fmt: skip
def test_loopback_means_the_name_as_written(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_hub_over_http_still_gets_the_token(prefetch, hub, host):
    hub.add_user("alice", token=CANARY_TOKEN)
    model = make_model(hub, big=MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    runner = PrefetchRunner(prefetch.tmp, hub.url.replace("127.0.0.1", host))
    result = runner("sync", str(prefetch.tmp / "models.yaml"), *FAST, env={"HF_TOKEN": CANARY_TOKEN})
    assert result.code == 0, result
    assert all(
        r.headers.get("authorization") == f"Bearer {CANARY_TOKEN}" for r in hub.requests if r.kind == "meta"
    )


def test_too_many_open_files_is_named_with_what_to_do(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """Issue 30, item 16: `ulimit -n 32` with hundreds of files is an ordinary condition (exit 9, named),
    not an internal error."""
    hub.create_repo("org/many").commit({f"data/{i:05d}.json": b'{"i": %d}\n' % i for i in range(300)})
    prefetch.manifest([{"repo": "org/many"}])
    command = " ".join(prefetch.command("sync", *FAST))
    proc = subprocess.run(
        ["sh", "-c", f"ulimit -n 32; exec {command}"],
        cwd=prefetch.tmp, env=prefetch.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 9, proc.stderr
    assert "too many open files: raise the limit (`ulimit -n 4096`) or lower --jobs" in proc.stderr
    assert "internal error" not in proc.stderr and "Errno" not in proc.stderr


@pytest.mark.parametrize("location", ["http://localhost:99999/x", "http://[::1:/x", "http://[::1"])
def test_a_redirect_to_an_unusable_url_is_the_servers_fault_named(
    prefetch: PrefetchRunner, hub: HubEmulator, location: str
) -> None:
    """Issue 30, item 16: not a raw ValueError (exit 1)."""
    make_model(hub)
    prefetch.manifest([{"repo": "org/model"}])
    hub.inject(Fault("status", times=None, match="/resolve/", status=302, headers={"Location": location}))
    result = sync(prefetch)
    assert result.code == 5, result
    assert "redirected to a URL that cannot be used" in result.stderr, result
    assert "internal error" not in result.stderr


def test_a_proxy_password_with_a_stray_bracket_is_refused_plainly(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    make_model(hub)
    prefetch.manifest([{"repo": "org/model"}])
    result = sync(prefetch, "--proxy", "http://user:pa[ss@127.0.0.1:3128")
    assert result.code == 2, result
    assert "percent-encode it (%5B, %5D)" in result.stderr and "pa[ss" not in result.stderr


def test_a_path_longer_than_the_system_allows_is_refused_before_downloading(prefetch, hub):
    """Issue 30, item 17: 20 folders of 250 bytes each: every name fits, the path does not (over 4,096
    bytes); refused up front (exit 9) rather than synced and then failed by `verify`."""
    deep = "/".join(["d" * 250] * 20) + "/config.json"
    hub.create_repo("org/deep").commit({deep: b"{}", "config.json": b"{}"})
    prefetch.manifest([{"repo": "org/deep"}])
    result = sync(prefetch)
    assert result.code == 9, result
    assert "its path in the cache would be" in result.stderr and "the system allows 4095" in result.stderr
    assert hub.count(kind="file") == 0


def test_a_failing_cdn_is_named_not_the_hub(prefetch, hub):
    """Issue 30, item 19: the message names the server whose answer failed (the CDN), not the Hub's."""
    model = make_model(hub, big=2 * MiB)
    prefetch.manifest([{"repo": model.repo_id}])
    hub.inject(Fault("reset", times=None, origin="cdn"))
    result = sync(prefetch)
    assert result.code == 4, result
    cdn = hub.cdn_url.rstrip("/")
    assert f"tried {cdn} (direct)" in result.stderr, result
    assert f"tried {hub.url} (direct)" not in result.stderr


def test_a_folder_where_a_ref_goes_is_named_by_the_ref(prefetch, hub):
    """Issue 30, item 19: not by the temporary file it would have been renamed from."""
    model = make_model(hub)
    prefetch.manifest([{"repo": model.repo_id}])
    (prefetch.cache_dir / "models--org--model" / "refs" / "main").mkdir(parents=True)
    result = sync(prefetch)
    assert result.code == 9, result
    assert "refs/main" in result.stderr and ".tmp" not in result.stderr, result
