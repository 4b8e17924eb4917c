"""Issue 3: a token value (or a proxy password) never appears in any output, file, log or traceback.

conftest scans every CLI output and every file of every test folder for the canary tokens; these tests
add the runs most likely to leak (verbose, JSON, invalid tokens, crashes with tracebacks, proxies with
passwords) and assert locally too, so a leak points at the run that caused it.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from prefetch.access import AccessReport, AccessResult, AccessStatus
from prefetch.auth import Secrets, Token, mask_patterns, redact_url
from prefetch.manifest import Entry
from prefetch.progress import setup_logging
from tests.conftest import CANARY_TOKEN, OTHER_TOKEN, ROOT, CliResult, PrefetchRunner
from tests.hubemu import HubEmulator

FAST = ("--retries", "2", "--max-wait", "0.1")
PASSWORD = "s3cr3tPASS"


def assert_clean(result: CliResult, *secrets: str) -> None:
    for secret in (CANARY_TOKEN, OTHER_TOKEN, *secrets):
        assert secret not in result.output, f"{secret[:6]}... leaked by prefetch {' '.join(result.args)}"


def assert_no_file_has(folder: Path, *secrets: str) -> None:
    """No file prefetch wrote holds a secret (the manifest is the user's input: it may hold a proxy URL)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "models.yaml":
            data = path.read_bytes()
            for secret in (CANARY_TOKEN, OTHER_TOKEN, *secrets):
                assert secret.encode() not in data, f"{secret[:6]}... found in {path}"


@pytest.fixture
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the run's folder (which is scanned) for token files and injected code."""
    return tmp_path_factory.mktemp("secrets")


@pytest.fixture
def gated_hub(hub: HubEmulator) -> HubEmulator:
    """alice (the canary token) may read a gated model with an LFS file, and a private dataset."""
    hub.add_user("alice", token=CANARY_TOKEN)
    model = hub.create_repo("org/gated", gated="manual")
    model.commit({"config.json": b"{}\n", "model.safetensors": b"\x01" * 8192})
    hub.grant_gated("org/gated", "alice")
    data = hub.create_repo("alice/private-data", repo_type="dataset", private=True)
    data.commit({"train.csv": b"a,b\n1,2\n"})
    return hub


MANIFEST: list[dict[str, Any]] = [
    {"repo": "org/gated", "gated": True},
    {"repo": "alice/private-data", "type": "dataset"},
]


# ----------------------------------------------------------------------------------------------- unit
def test_token_repr_and_str_never_show_the_value() -> None:
    token = Token("sekrit-value-1234", "HF_TOKEN", env_var="HF_TOKEN")
    for text in (repr(token), str(token), f"{token}", f"{token!r}", repr([token]), repr({"t": token})):
        assert "sekrit-value-1234" not in text
    assert "HF_TOKEN" in repr(token) and str(token) == "token from HF_TOKEN"
    assert token.replace_hint == "set HF_TOKEN to it"
    assert Token("sekrit-value-5678", "/x", path=Path("/x")).replace_hint == "write it to /x"


def test_redact_removes_the_runs_secrets_urls_and_token_shapes() -> None:
    secrets = Secrets()
    secrets.add("plain-secret-9876")
    redact = secrets.redact
    assert redact("a plain-secret-9876 b") == "a *** b"
    assert redact("x") == "x"
    assert "plain-secret-9876" in Secrets().redact("plain-secret-9876")  # another run's: not its business
    assert redact("http://user:pw@proxy:3128/x") == "http://user:***@proxy:3128/x"
    assert redact("https://me:p%40ss@h") == "https://me:***@h"
    assert redact("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer ***"
    assert CANARY_TOKEN not in redact(f"never registered: {CANARY_TOKEN}.")  # token-shaped
    assert CANARY_TOKEN not in mask_patterns(f"never registered: {CANARY_TOKEN}.")
    assert redact("repo org/hf_model and hf_short stay") == "repo org/hf_model and hf_short stay"
    secrets.add("abc")  # too short to redact safely: ignored
    assert redact("abc") == "abc"


def test_redact_url_masks_the_password_and_the_run_learns_both_forms() -> None:
    url = "http://bob:p%40ss%2Fw0rd-77@127.0.0.1:3128"
    assert redact_url(url) == "http://bob:***@127.0.0.1:3128"
    secrets = Secrets()
    secrets.add_url(url)
    assert secrets.redact("raw p%40ss%2Fw0rd-77 decoded p@ss/w0rd-77") == "raw *** decoded ***"
    assert redact_url("http://127.0.0.1:3128") == "http://127.0.0.1:3128"
    assert redact_url("http://user@[::1]:8080") == "http://user@[::1]:8080"
    assert redact_url("http://u:pw-ipv6-99@[::1]:8080") == "http://u:***@[::1]:8080"


def test_reports_and_logs_are_redacted() -> None:
    secrets = Secrets()
    token = Token("report-secret-2468", "HF_TOKEN")
    secrets.add(token.value)
    row = AccessResult(
        Entry(repo="org/x"),
        AccessStatus.FORBIDDEN,
        token.source,
        problem=f"odd {token.value}",
        remedy=f"see {token.value}",
        warnings=[token.value],
    )
    report = AccessReport([row])
    assert token.value not in secrets.redact(report.render())
    assert token.value not in secrets.redact(json.dumps(row.to_json()))
    assert token.value not in secrets.redact(str(report.error()))

    stream = io.StringIO()
    setup_logging(2, secrets, stream)
    try:
        logging.getLogger("prefetch").debug("header was %s", token.value)
    finally:
        setup_logging(0, Secrets())
    assert "report-secret-2468" not in stream.getvalue() and "***" in stream.getvalue()


# ------------------------------------------------------------------------------------------- CLI runs
# Each CLI run costs ~0.5 s of start-up, so each test picks its (flags, command) runs deliberately.
SUCCESS_RUNS = [
    (("-vv",), "sync"),  # first: the run that really downloads (gated LFS file via the CDN, private dataset)
    (("-v",), "check"),
    (("-vv", "--json"), "check"),
    (("--json",), "sync"),
    (("-vv",), "lock"),
    (("-vv", "--json"), "plan"),
]


def test_successful_runs_never_print_the_token(prefetch: PrefetchRunner, gated_hub: HubEmulator) -> None:
    prefetch.manifest(MANIFEST)
    env: dict[str, str | None] = {"HF_TOKEN": CANARY_TOKEN}
    for flags, command in SUCCESS_RUNS:
        result = prefetch(*flags, command, "models.yaml", *FAST, env=env)
        assert result.code == 0, result
        assert_clean(result)
    assert gated_hub.count(kind="file") > 0  # the token really was used for downloads
    assert_no_file_has(prefetch.tmp)


def test_invalid_token_errors_never_print_it(
    prefetch: PrefetchRunner, gated_hub: HubEmulator, secrets: Path
) -> None:
    gated_hub.revoke_token(CANARY_TOKEN)
    prefetch.manifest(MANIFEST)
    token_file = secrets / "token"
    token_file.write_text(CANARY_TOKEN)
    for flags, command in [
        ((), "check"),
        (("-vv",), "sync"),
        (("--json",), "check"),
        (("-vv", "--json"), "lock"),
    ]:
        result = prefetch(*flags, command, "models.yaml", "--token-file", str(token_file), *FAST)
        assert result.code == 3, result
        assert_clean(result)
        assert str(token_file) in result.output
    assert gated_hub.count(kind="file") == 0
    assert_no_file_has(prefetch.tmp)


def test_malformed_token_file_is_refused_without_printing_it(
    prefetch: PrefetchRunner, gated_hub: HubEmulator, secrets: Path
) -> None:
    prefetch.manifest(MANIFEST)
    token_file = secrets / "two-lines"
    token_file.write_text(f"{CANARY_TOKEN}\n{OTHER_TOKEN}\n")
    result = prefetch("-vv", "sync", "models.yaml", "--token-file", str(token_file), *FAST)
    assert result.code == 2, result
    assert str(token_file) in result.stderr
    assert_clean(result)
    assert gated_hub.count() == 0


CRASH = """
import prefetch.hub


def _crash(self, repo, repo_type, revision, token):
    leaked = {{"auth": token.value}}
    raise RuntimeError("injected crash holding " + token.value + " and " + repr(leaked))


prefetch.hub.HubApi.{method} = _crash
"""


@pytest.mark.parametrize(
    ("method", "flags", "command", "traceback_env"),
    [
        ("repo_info", (), "check", True),  # PREFETCH_TRACEBACK=1
        ("list_files", ("-vv",), "sync", False),  # -vv shows the traceback too
        ("repo_info", ("--json",), "sync", True),
    ],
)
def test_an_internal_error_traceback_never_prints_the_token(
    method: str,
    flags: tuple[str, ...],
    command: str,
    traceback_env: bool,
    prefetch: PrefetchRunner,
    gated_hub: HubEmulator,
    secrets: Path,
) -> None:
    """A bug whose exception message carries the token: the traceback is shown, the token is not."""
    (secrets / "sitecustomize.py").write_text(CRASH.format(method=method))
    prefetch.manifest(MANIFEST)
    env: dict[str, str | None] = {"HF_TOKEN": CANARY_TOKEN, "PYTHONPATH": f"{secrets}{os.pathsep}{ROOT}"}
    if traceback_env:
        env["PREFETCH_TRACEBACK"] = "1"
    result = prefetch(*flags, command, "models.yaml", *FAST, env=env)
    assert result.code == 1, result
    shown = result.stderr
    if "--json" in flags:  # the error is the last event on stdout; stderr stays quiet
        assert result.stderr == "", result
        error = json.loads(result.stdout.splitlines()[-1])
        assert error["event"] == "error" and error["exit_code"] == 1
        shown = error["message"]
    assert "Traceback (most recent call last)" in shown, result
    assert "injected crash holding ***" in shown
    assert_clean(result)
    assert_no_file_has(prefetch.tmp)


# -------------------------------------------------------------------------------------------- proxies
@pytest.mark.parametrize(
    ("mode", "how"),
    [("refuse", "flag"), ("502", "flag"), ("407", "flag"), ("refuse", "env"), ("407", "manifest")],
)
def test_proxy_passwords_are_never_printed(
    mode: str, how: str, prefetch: PrefetchRunner, gated_hub: HubEmulator, proxy_factory: Any
) -> None:
    """A failing proxy is named (host, port, user) in every run's output; its password never is."""
    proxy = proxy_factory(mode, credentials=("user", "the-right-one") if mode == "407" else None)
    url = f"http://user:{PASSWORD}@127.0.0.1:{proxy.port}"
    args: list[str] = []
    env: dict[str, str | None] = {"HF_TOKEN": CANARY_TOKEN}
    top: dict[str, Any] = {}
    if how == "flag":
        args = ["--proxy", url]
    elif how == "env":
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = url
    else:
        top["proxies"] = [url]
    prefetch.manifest(MANIFEST, **top)
    for flags, command in [(("-vv",), "check"), ((), "sync"), (("--json",), "sync")]:
        result = prefetch(*flags, command, "models.yaml", *args, *FAST, env=env)
        assert result.code == 4, result
        assert_clean(result, PASSWORD)
        assert f"user:***@127.0.0.1:{proxy.port}" in result.output, result
    assert gated_hub.count(kind="file") == 0
    assert_no_file_has(prefetch.tmp, PASSWORD)


def test_a_working_authenticated_proxy_never_prints_its_password(
    prefetch: PrefetchRunner, gated_hub: HubEmulator, proxy_factory: Any
) -> None:
    password = "p@ss/w0rd!42"
    proxy = proxy_factory("ok", credentials=("user", password))
    url = f"http://user:{quote(password, safe='')}@127.0.0.1:{proxy.port}"
    prefetch.manifest(MANIFEST)
    result = prefetch("-vv", "sync", "models.yaml", "--proxy", url, *FAST, env={"HF_TOKEN": CANARY_TOKEN})
    assert result.code == 0, result
    assert proxy.count() > 0
    assert_clean(result, password, quote(password, safe=""))
    assert_no_file_has(prefetch.tmp, password, quote(password, safe=""))
