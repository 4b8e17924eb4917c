"""Issue 3: the access check before any download, through the real CLI against the Hub emulator.

For every row of the issue's table, `prefetch check` and `prefetch sync` must give the exit code, the
remedy (built from the configured endpoint), the token's source (never its value), and, for sync, no
file request at all. The canary scan in conftest covers every output of these runs.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prefetch import access, auth, errors
from prefetch.auth import Secrets, Token, find_token
from prefetch.errors import UsageError
from prefetch.hub import RepoInfo
from prefetch.manifest import Entry
from tests.conftest import CANARY_TOKEN, OTHER_TOKEN, CliResult, PrefetchRunner
from tests.hubemu import Fault, HubEmulator
from tests.hubemu.fixtures import over_both_profiles

FAST = ("--retries", "2", "--max-wait", "0.1")
FG_TOKEN = "hf_CANARYfineGrainedNoGated77Zx9Vb1"


def add_repo(
    hub: HubEmulator,
    repo_id: str,
    *,
    gated: bool | str = False,
    private: bool = False,
    repo_type: str = "model",
    owner: str | None = None,
) -> None:
    """A repo with one regular file and one LFS file, so a download would hit /resolve and the CDN."""
    repo = hub.create_repo(repo_id, repo_type=repo_type, gated=gated, private=private, owner=owner)
    repo.commit({"config.json": b'{"model_type": "tiny"}\n', "model.safetensors": b"\x00" * 4096})


def run(
    prefetch: PrefetchRunner,
    command: str,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    json_out: bool = False,
) -> CliResult:
    """`prefetch [--json] COMMAND models.yaml ARGS --retries 2 --max-wait 0.1`."""
    head = ("--json",) if json_out else ()
    return prefetch(*head, command, "models.yaml", *args, *FAST, env=dict(env) if env else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ one row each
@dataclass
class Case:
    """One row of the issue's table: how to set it up and what the user must be told."""

    status: str
    exit_code: int
    remedy: list[str]  # snippets that must appear (the `{endpoint}` placeholder is the test Hub's URL)
    source: str | None  # the token source the report must name ("no token" when None)
    setup: Callable[
        [HubEmulator, PrefetchRunner, Any], tuple[dict[str, Any], dict[str, str | None], list[str]]
    ]
    extra: list[str] = field(default_factory=list)


def _no_token_gated(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    add_repo(hub, "org/gated", gated="auto")
    return {"repo": "org/gated"}, {}, []


def _invalid_token(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    hub.add_user("alice", token=CANARY_TOKEN)
    hub.revoke_token(CANARY_TOKEN)
    add_repo(hub, "org/public")
    return {"repo": "org/public"}, {"HF_TOKEN": CANARY_TOKEN}, []


def _gated_not_accepted(gated: str) -> Callable[..., Any]:
    def setup(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
        hub.add_user("alice", token=CANARY_TOKEN)
        add_repo(hub, "org/gated", gated=gated)
        return {"repo": "org/gated", "gated": True}, {"HF_TOKEN": CANARY_TOKEN}, []

    return setup


def _gated_pending(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "org/gated", gated="manual")
    hub.grant_gated("org/gated", "alice", status="pending")
    return {"repo": "org/gated", "gated": True}, {"HF_TOKEN": CANARY_TOKEN}, []


def _fine_grained(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    hub.add_user("alice", token=CANARY_TOKEN, role="fineGrained", can_read_gated=False)
    add_repo(hub, "org/gated", gated="auto")
    hub.grant_gated("org/gated", "alice")
    return {"repo": "org/gated", "gated": True}, {"HF_TOKEN": CANARY_TOKEN}, []


def _private_with_token(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "bob/secret", private=True)
    return {"repo": "bob/secret"}, {"HF_TOKEN": CANARY_TOKEN}, []


def _private_no_token(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    add_repo(hub, "bob/secret", private=True)
    return {"repo": "bob/secret"}, {}, []


def _unknown_dataset(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "org/thing")  # a model: asking for it as a dataset is "unknown"
    return {"repo": "org/thing", "type": "dataset"}, {"HF_TOKEN": CANARY_TOKEN}, []


def _revision_not_found(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    add_repo(hub, "org/public")
    repo = hub.repo("org/public")
    repo.create_branch("dev")
    repo.create_tag("v1.0")
    return {"repo": "org/public", "revision": "v9-missing"}, {}, []


def _proxy(mode: str) -> Callable[..., Any]:
    def setup(hub: HubEmulator, prefetch: PrefetchRunner, proxy_factory: Any) -> Any:
        add_repo(hub, "org/public")
        proxy = proxy_factory(mode)
        return {"repo": "org/public"}, {}, ["--proxy", proxy.url]

    return setup


def _hub_answers(status: int, **headers: str) -> Callable[..., Any]:
    """The Hub answers every request about the repo so (its answers for a disabled repo, an egress limit)."""

    def setup(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
        add_repo(hub, "org/public")
        hub.inject(Fault("status", times=None, match="org/public", status=status, headers=headers))
        return {"repo": "org/public"}, {}, []

    return setup


def _dead_endpoint(hub: HubEmulator, prefetch: PrefetchRunner, _: Any) -> Any:
    port = free_port()
    return {"repo": "org/public"}, {"HF_ENDPOINT": f"http://127.0.0.1:{port}"}, []


LOGIN = ["hf auth login", "HF_TOKEN", "$HF_HOME/token", "~/.cache/huggingface/token", "BuildKit secret"]
CASES = {
    "no-token-gated": Case("no-token", 3, LOGIN, None, _no_token_gated),
    "invalid-token": Case(
        "invalid-token",
        3,
        ["{endpoint}/settings/tokens", "invalid or revoked", "HF_TOKEN"],
        "HF_TOKEN",
        _invalid_token,
    ),
    "gated-auto-not-accepted": Case(
        "gated-not-accepted",
        3,
        ["open {endpoint}/org/gated", "accept the conditions", "account that owns the token", "propagate"],
        "HF_TOKEN",
        _gated_not_accepted("auto"),
    ),
    "gated-manual-not-on-list": Case(
        "gated-not-accepted",
        3,
        [
            "open {endpoint}/org/gated",
            "accept the conditions",
            "account that owns the token",
            "propagate",
            "alice",
        ],
        "HF_TOKEN",
        _gated_not_accepted("manual"),
    ),
    "gated-pending": Case("gated-pending", 3, ["wait for the authors' approval"], "HF_TOKEN", _gated_pending),
    "fine-grained": Case(
        "fine-grained-token",
        3,
        ["read access to contents of all public gated repos you can access", "{endpoint}/settings/tokens"],
        "HF_TOKEN",
        _fine_grained,
    ),
    "private-with-token": Case(
        "not-found",
        3,
        ["check the repo id and type", "alice", "can see it"],
        "HF_TOKEN",
        _private_with_token,
    ),
    "private-no-token": Case(
        "not-found",
        3,
        ["check the repo id and type", "hf auth login"],
        None,
        _private_no_token,
    ),
    "unknown-type": Case(
        "not-found",
        3,
        ["org/thing is a model repo on this Hub: write `type: model` in its entry (it says `type: dataset`"],
        "HF_TOKEN",
        _unknown_dataset,
    ),
    "revision-not-found": Case(
        "revision-not-found",
        3,
        ["'v9-missing'", "branches: dev, main", "tags: v1.0"],
        None,
        _revision_not_found,
    ),
    "disabled": Case(
        "disabled",
        3,
        [
            "the Hub has disabled model repo org/public",
            "Access to this resource is disabled.",
            "remove the entry",
        ],
        None,
        _hub_answers(403, **{"X-Error-Message": "Access to this resource is disabled."}),
    ),
    "egress-limit": Case(
        "egress-limit",
        10,
        ["refuses downloads of org/public", "allowance", "another token does not help"],
        None,
        _hub_answers(
            403, **{"X-Error-Code": "EgressLimitReached", "X-Error-Message": "Egress limit reached."}
        ),
    ),
    "proxy-refused": Case("network", 4, ["{endpoint}", "proxy http://127.0.0.1:"], None, _proxy("refuse")),
    "proxy-502": Case("network", 4, ["{endpoint}", "proxy http://127.0.0.1:", "502"], None, _proxy("502")),
    "endpoint-down": Case("network", 4, ["http://127.0.0.1:", "direct"], None, _dead_endpoint),
}


def test_a_repo_not_found_under_its_type_is_looked_for_under_the_others_once(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """Only an entry found nowhere costs one request per other type; a readable entry costs none."""
    add_repo(hub, "org/data", repo_type="dataset")
    add_repo(hub, "org/model")
    prefetch.manifest([{"repo": "org/data"}, {"repo": "org/nowhere"}, {"repo": "org/model"}])
    result = run(prefetch, "check")
    assert result.code == 3, result
    assert "org/data is a dataset repo on this Hub: write `type: dataset`" in result.stdout, result
    assert "check the repo id and type" in result.stdout  # org/nowhere: not found as any type
    for repo, asked in (
        ("org/data", ["models", "datasets"]),
        ("org/nowhere", ["models", "datasets", "spaces"]),
    ):
        for kind in ("models", "datasets", "spaces"):
            count = hub.count(path_contains=f"/api/{kind}/{repo}/revision/")
            assert count == (kind in asked), (repo, kind, count)
    assert (
        hub.count(path_contains="/api/datasets/org/model") + hub.count(path_contains="/api/spaces/org/model")
        == 0
    )


def test_a_warning_is_said_once_when_another_entry_fails(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """A gated repo the manifest does not mark gated (a warning) beside a missing one (a failure): the
    failing report lists the warning with its row; it used to be printed before the report too."""
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "org/gated", gated="auto")
    hub.grant_gated("org/gated", "alice")
    prefetch.manifest([{"repo": "org/gated"}, {"repo": "org/missing"}])
    result = run(prefetch, "sync", env={"HF_TOKEN": CANARY_TOKEN})
    assert result.code == 3, result
    assert result.output.count("the Hub reports this repo as gated (auto)") == 1, result
    fine = prefetch.manifest([{"repo": "org/gated"}])
    result = run(prefetch, "sync", env={"HF_TOKEN": CANARY_TOKEN})
    assert result.code == 0, (fine, result)
    assert result.output.count("the Hub reports this repo as gated (auto)") == 1, result
    add_repo(hub, "org/public")
    prefetch.manifest([{"repo": "org/public"}], name="other.yaml")
    added = prefetch("add", "org/gated", "-m", "other.yaml", env={"HF_TOKEN": CANARY_TOKEN})
    assert added.code == 0, added
    assert added.stdout.count("warning: the Hub reports this repo as gated (auto)") == 1, added


def _expect(case: Case, endpoint: str) -> list[str]:
    return [s.replace("{endpoint}", endpoint) for s in case.remedy]


def _endpoint(hub: HubEmulator, env: dict[str, str | None]) -> str:
    return env.get("HF_ENDPOINT") or hub.url


@pytest.mark.parametrize("name", list(CASES))
def test_check_reports_each_case_with_its_remedy(
    name: str, prefetch: PrefetchRunner, hub: HubEmulator, proxy_factory: Any
) -> None:
    case = CASES[name]
    entry, env, args = case.setup(hub, prefetch, proxy_factory)
    prefetch.manifest([entry])
    endpoint = _endpoint(hub, env)

    result = run(prefetch, "check", *args, env=env)
    assert result.code == case.exit_code, result
    assert "FAIL  repos[0]" in result.stdout, result
    for snippet in _expect(case, endpoint):
        assert snippet in result.stdout, (snippet, result)
    assert (f"[token: {case.source}]" if case.source else "[no token]") in result.stdout, result
    assert hub.count(kind="file") == 0
    if case.status == "network":
        assert "not an access problem" in result.stdout

    as_json = run(prefetch, "check", *args, env=env, json_out=True)
    assert as_json.code == case.exit_code, as_json
    data = json.loads(as_json.stdout)
    assert data["ok"] is False and data["exit_code"] == case.exit_code
    [row] = data["entries"]
    assert row["status"] == case.status, row
    assert row["token_source"] == case.source
    for snippet in _expect(case, endpoint):
        assert snippet in row["problem"] + " " + row["remedy"], (snippet, row)


@pytest.mark.parametrize("name", list(CASES))
def test_sync_fails_before_any_file_byte_with_the_same_remedy(
    name: str, prefetch: PrefetchRunner, hub: HubEmulator, proxy_factory: Any
) -> None:
    case = CASES[name]
    entry, env, args = case.setup(hub, prefetch, proxy_factory)
    prefetch.manifest([entry])

    result = run(prefetch, "sync", *args, env=env)
    assert result.code == case.exit_code, result
    for snippet in _expect(case, _endpoint(hub, env)):
        assert snippet in result.stderr, (snippet, result)
    assert (f"[token: {case.source}]" if case.source else "[no token]") in result.stderr, result
    assert hub.count(kind="file") == 0, [r.path for r in hub.requests]
    assert not (prefetch.tmp / "models.lock").exists()
    if case.status == "network":
        assert "could not reach the Hub" in result.stderr and "not an access problem" in result.stderr
    assert (
        not any(p.is_file() for p in prefetch.cache_dir.rglob("*")) if prefetch.cache_dir.exists() else True
    )

    as_json = run(prefetch, "sync", *args, env=env, json_out=True)
    assert as_json.code == case.exit_code
    events = [json.loads(line) for line in as_json.stdout.splitlines() if line.strip()]
    [error] = [e for e in events if e.get("event") == "error"]
    assert error["exit_code"] == case.exit_code
    assert hub.count(kind="file") == 0


# ------------------------------------------------------------------------------ manifest-level behaviour
def test_gated_true_without_token_fails_before_any_request(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    add_repo(hub, "org/gated", gated="manual")
    prefetch.manifest(
        [
            {"repo": "org/gated", "gated": True},
            {"repo": "org/other", "gated": True, "token_env": "ORG_B_TOKEN"},
        ]
    )
    for command in ("check", "sync"):
        result = run(prefetch, command)
        assert result.code == 3, result
        text = result.output
        assert "repos[0] (org/gated@main)" in text and "repos[1] (org/other@main)" in text
        assert "hf auth login" in text
        assert "ORG_B_TOKEN" in text  # the entry's own variable is the one to set
    assert hub.count() == 0, [r.path for r in hub.requests]


def test_several_failures_are_all_reported_in_one_run(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    hub.add_user("alice", token=CANARY_TOKEN)
    hub.add_user("fg", token=FG_TOKEN, role="fineGrained", can_read_gated=False)
    add_repo(hub, "org/public")
    add_repo(hub, "org/gated", gated="manual")
    add_repo(hub, "org/pending", gated="manual")
    hub.grant_gated("org/pending", "alice", status="pending")
    add_repo(hub, "org/fg-gated", gated="auto")
    hub.grant_gated("org/fg-gated", "fg")
    add_repo(hub, "bob/secret", private=True)
    prefetch.manifest(
        [
            {"repo": "org/public"},
            {"repo": "org/gated", "gated": True},
            {"repo": "org/pending", "gated": True},
            {"repo": "org/fg-gated", "gated": True, "token_env": "FG_TOKEN"},
            {"repo": "bob/secret"},
            {"repo": "org/public", "revision": "nope"},
        ]
    )
    env = {"HF_TOKEN": CANARY_TOKEN, "FG_TOKEN": FG_TOKEN}
    expected = [
        "gated-not-accepted",
        "gated-pending",
        "fine-grained-token",
        "not-found",
        "revision-not-found",
    ]

    result = run(prefetch, "check", env=env, json_out=True)
    assert result.code == 3, result
    rows = json.loads(result.stdout)["entries"]
    assert [r["status"] for r in rows] == ["ok", *expected]
    assert [r["token_source"] for r in rows] == [
        "HF_TOKEN",
        "HF_TOKEN",
        "HF_TOKEN",
        "FG_TOKEN",
        "HF_TOKEN",
        "HF_TOKEN",
    ]

    text = run(prefetch, "check", env=env)
    assert text.stdout.count("FAIL  ") == 5 and "1 of 6 entries readable" in text.stdout

    synced = run(prefetch, "sync", env=env)
    assert synced.code == 3, synced
    for label in (
        "org/gated@main",
        "org/pending@main",
        "org/fg-gated@main",
        "bob/secret@main",
        "org/public@nope",
    ):
        assert label in synced.stderr, (label, synced)
    assert synced.stderr.count("FAIL  ") == 5
    assert hub.count(kind="file") == 0
    assert hub.count(path_contains="/api/whoami-v2") <= 4  # once per token per run, 2 tokens, 2 runs...


def test_whoami_at_most_once_per_token_per_run(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    hub.add_user("alice", token=CANARY_TOKEN)
    hub.add_user("bob", token=OTHER_TOKEN)
    for name in ("a", "b", "c", "d"):
        add_repo(hub, f"org/{name}", gated="manual")  # alice never accepted: four failures, one token
    hub.grant_gated("org/d", "bob")
    add_repo(hub, "org/public")
    add_repo(hub, "bob/secret", private=True)
    hub.revoke_token(OTHER_TOKEN)
    prefetch.manifest(
        [
            {"repo": "org/a"},
            {"repo": "org/b"},
            {"repo": "org/c"},
            {"repo": "org/public"},
            {"repo": "bob/secret"},
            {"repo": "org/d", "token_env": "ORG_B_TOKEN"},
            {"repo": "org/public", "type": "dataset", "token_env": "ORG_B_TOKEN"},
        ]
    )
    env = {"HF_TOKEN": CANARY_TOKEN, "ORG_B_TOKEN": OTHER_TOKEN}
    for command in ("check", "sync"):
        hub.reset_counters()
        result = run(prefetch, command, env=env)
        assert result.code == 3, result
        assert hub.count(path_contains="/api/whoami-v2") <= 1, command  # the revoked token needs none
        assert hub.count(kind="file") == 0


def test_gated_on_the_hub_but_not_in_the_manifest_warns(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "org/gated", gated="auto")
    hub.grant_gated("org/gated", "alice")
    add_repo(hub, "org/public")
    prefetch.manifest([{"repo": "org/gated"}, {"repo": "org/public", "gated": True}])
    env = {"HF_TOKEN": CANARY_TOKEN}

    checked = run(prefetch, "check", env=env)
    assert checked.code == 0, checked
    assert "warning: the Hub reports this repo as gated" in checked.stdout
    assert "add `gated: true`" in checked.stdout
    assert "the manifest says `gated: true` but the Hub reports this repo as not gated" in checked.stdout
    rows = json.loads(run(prefetch, "check", env=env, json_out=True).stdout)["entries"]
    assert rows[0]["gated"] == "auto" and rows[0]["warnings"] and rows[1]["warnings"]

    synced = run(prefetch, "sync", env=env)
    assert synced.code == 0, synced
    assert "warning: repos[0] (org/gated@main): the Hub reports this repo as gated" in synced.stderr
    assert hub.count(kind="file") > 0


@over_both_profiles
def test_a_sync_that_passes_the_check_downloads(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """The check must not block legitimate access (gated accepted, private member, token_env account)."""
    hub.add_user("alice", token=CANARY_TOKEN)
    hub.add_user("bob", token=OTHER_TOKEN)
    add_repo(hub, "org/gated", gated="manual")
    hub.grant_gated("org/gated", "alice")
    add_repo(hub, "bob/secret", private=True)
    add_repo(hub, "org/data", repo_type="dataset", gated="auto")
    hub.grant_gated("org/data", "alice")
    prefetch.manifest(
        [
            {"repo": "org/gated", "gated": True},
            {"repo": "bob/secret", "token_env": "ORG_B_TOKEN"},
            {"repo": "org/data", "type": "dataset", "gated": True},
        ]
    )
    env = {"HF_TOKEN": CANARY_TOKEN, "ORG_B_TOKEN": OTHER_TOKEN}
    checked = run(prefetch, "check", env=env)
    assert checked.code == 0, checked
    assert "ok    repos[1] (bob/secret@main) [token: ORG_B_TOKEN]" in checked.stdout
    assert "ok    repos[0] (org/gated@main) [token: HF_TOKEN]" in checked.stdout
    synced = run(prefetch, "sync", env=env)
    assert synced.code == 0, synced
    assert (prefetch.tmp / "models.lock").exists()
    assert hub.count(path_contains="/api/whoami-v2") == 0  # nothing to explain: no whoami at all


def test_one_failing_entry_stops_the_download_of_all(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    add_repo(hub, "org/public")
    add_repo(hub, "bob/secret", private=True)
    prefetch.manifest([{"repo": "org/public"}, {"repo": "bob/secret"}])
    result = run(prefetch, "sync")
    assert result.code == 3, result
    assert hub.count(kind="file") == 0


def test_locked_entry_with_missing_files_is_checked_again(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """A locked entry skips resolution, but bytes still to fetch go through the access check."""
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "org/gated", gated="manual")
    hub.grant_gated("org/gated", "alice")
    prefetch.manifest([{"repo": "org/gated"}])
    env = {"HF_TOKEN": CANARY_TOKEN}
    assert run(prefetch, "lock", env=env).code == 0
    hub.grant_gated("org/gated", "alice", status="rejected")
    hub.reset_counters()
    result = run(prefetch, "sync", env=env)
    assert result.code == 3, result
    assert "open " + hub.url + "/org/gated" in result.stderr
    assert result.stderr.count("warning: the Hub reports this repo as gated") == 1, result  # in the report
    assert hub.count(kind="file") == 0


def test_a_fresh_entry_is_resolved_once(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """The check reuses the gating the resolution saw: one revision request per entry, not two."""
    add_repo(hub, "org/gated", gated="auto")
    prefetch.manifest([{"repo": "org/gated"}])
    result = run(prefetch, "sync")
    assert result.code == 3 and "the Hub reports this repo as gated" in result.stderr
    assert hub.count(path_contains="/revision/") == 1


def test_locked_and_cached_entry_makes_no_request(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "org/gated", gated="manual")
    hub.grant_gated("org/gated", "alice")
    prefetch.manifest([{"repo": "org/gated", "gated": True}])
    assert run(prefetch, "sync", env={"HF_TOKEN": CANARY_TOKEN}).code == 0
    hub.reset_counters()
    result = run(prefetch, "sync")  # no token now: nothing to fetch, so no access problem either
    assert result.code == 0, result
    assert hub.count() == 0


def test_verdicts_do_not_depend_on_whoami(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """whoami only enriches messages: a mirror without it (or a rate-limited one) gives the same rows."""
    hub.inject(
        Fault("status", times=None, match=r"/api/whoami-v2$", status=429, headers={"Retry-After": "3600"})
    )
    hub.add_user("alice", token=CANARY_TOKEN)
    hub.add_user("fg", token=FG_TOKEN, role="fineGrained", can_read_gated=False)
    add_repo(hub, "org/gated", gated="manual")
    add_repo(hub, "org/fg", gated="auto")
    hub.grant_gated("org/fg", "fg")
    add_repo(hub, "bob/secret", private=True)
    prefetch.manifest(
        [{"repo": "org/gated"}, {"repo": "org/fg", "token_env": "FG_TOKEN"}, {"repo": "bob/secret"}]
    )
    result = run(prefetch, "check", env={"HF_TOKEN": CANARY_TOKEN, "FG_TOKEN": FG_TOKEN}, json_out=True)
    assert result.code == 3, result
    rows = json.loads(result.stdout)["entries"]
    assert [r["status"] for r in rows] == ["gated-not-accepted", "fine-grained-token", "not-found"]
    assert hub.count(path_contains="/api/whoami-v2") <= 2  # one attempt per token: no Retry-After wait


def test_a_locked_commit_that_vanished_is_reported_before_any_byte(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    add_repo(hub, "org/model")
    prefetch.manifest([{"repo": "org/model"}])
    assert prefetch("lock", "models.yaml").code == 0
    hub.delete_repo("org/model")  # history rewritten: same repo, new commits
    hub.create_repo("org/model").commit({"config.json": b"{}"})
    hub.reset_counters()
    result = run(prefetch, "sync")
    assert result.code == 3, result
    assert "no longer exists" in result.stderr and "--upgrade-repo org/model" in result.stderr
    assert "branches: main" in result.stderr
    assert hub.count(kind="file") == 0


# ----------------------------------------------------------------------------------------- mirror fallback
def test_mirror_without_auth_check_falls_back_to_a_file_probe(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    hub.inject(Fault("status", times=None, match=r"/auth-check$", status=404))
    hub.add_user("alice", token=CANARY_TOKEN)
    add_repo(hub, "org/ok", gated="manual")
    hub.grant_gated("org/ok", "alice")
    add_repo(hub, "org/no", gated="manual")
    add_repo(hub, "org/wait", gated="manual")
    hub.grant_gated("org/wait", "alice", status="pending")
    prefetch.manifest([{"repo": "org/ok"}, {"repo": "org/no"}, {"repo": "org/wait"}])
    env = {"HF_TOKEN": CANARY_TOKEN}

    result = run(prefetch, "check", env=env, json_out=True)
    assert result.code == 3, result
    assert [r["status"] for r in json.loads(result.stdout)["entries"]] == [
        "ok",
        "gated-not-accepted",
        "gated-pending",
    ]
    probes = [r for r in hub.requests if "/resolve/" in r.path]
    assert probes and all(r.method == "HEAD" and r.body_bytes == 0 for r in probes), [
        (r.method, r.path) for r in probes
    ]
    assert hub.bytes_served() == 0

    hub.reset_counters()
    synced = run(prefetch, "sync", env=env)
    assert synced.code == 3, synced
    assert all(r.method == "HEAD" for r in hub.requests if "/resolve/" in r.path)
    assert hub.bytes_served() == 0


# -------------------------------------------------------------------------------------------- token sources
SOURCES = ("--token-file", "HF_TOKEN", "HF_TOKEN_PATH", "HF_HOME")


@pytest.fixture
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token files live here, outside the run's folder (whose every file is scanned for the canary)."""
    folder = tmp_path_factory.mktemp("secrets")
    (folder / "hf_home").mkdir()
    return folder


def _offer(secrets: Path, sources: tuple[str, ...], good: str) -> tuple[list[str], dict[str, str]]:
    """Put a token in each named source: the `good` one gets alice's token, the others a revoked one."""
    args: list[str] = []
    env: dict[str, str] = {"HF_HOME": str(secrets / "hf_home")}
    for source in sources:
        value = CANARY_TOKEN if source == good else OTHER_TOKEN
        if source == "--token-file":
            path = secrets / "flag-token"
            path.write_text(value + "\n")
            args += ["--token-file", str(path)]
        elif source == "HF_TOKEN":
            env["HF_TOKEN"] = value
        elif source == "HF_TOKEN_PATH":
            path = secrets / "path-token"
            path.write_text(value)
            env["HF_TOKEN_PATH"] = str(path)
        else:
            (secrets / "hf_home" / "token").write_text(value)
    return args, env


@pytest.mark.parametrize("winner", SOURCES)
def test_token_source_order(winner: str, prefetch: PrefetchRunner, hub: HubEmulator, secrets: Path) -> None:
    """The first source in the order wins even when later ones hold a (revoked) token."""
    hub.add_user("alice", token=CANARY_TOKEN)
    hub.add_user("mallory", token=OTHER_TOKEN)
    hub.revoke_token(OTHER_TOKEN)
    add_repo(hub, "org/gated", gated="manual")
    hub.grant_gated("org/gated", "alice")
    prefetch.manifest([{"repo": "org/gated", "gated": True}])
    offered = SOURCES[SOURCES.index(winner) :]
    args, env = _offer(secrets, offered, good=winner)
    expected = {
        "--token-file": f"--token-file {secrets / 'flag-token'}",
        "HF_TOKEN": "HF_TOKEN",
        "HF_TOKEN_PATH": f"HF_TOKEN_PATH ({secrets / 'path-token'})",
        "HF_HOME": str(secrets / "hf_home" / "token"),
    }[winner]
    result = run(prefetch, "check", *args, env=env)
    assert result.code == 0, result
    assert f"[token: {expected}]" in result.stdout
    assert run(prefetch, "sync", *args, env=env).code == 0


@pytest.mark.parametrize("source", SOURCES)
def test_a_bad_token_names_its_source(
    source: str, prefetch: PrefetchRunner, hub: HubEmulator, secrets: Path
) -> None:
    hub.add_user("alice", token=CANARY_TOKEN)
    hub.revoke_token(CANARY_TOKEN)
    add_repo(hub, "org/public")
    prefetch.manifest([{"repo": "org/public"}])
    args, env = _offer(secrets, (source,), good=source)
    where = {
        "--token-file": str(secrets / "flag-token"),
        "HF_TOKEN": "HF_TOKEN",
        "HF_TOKEN_PATH": str(secrets / "path-token"),
        "HF_HOME": str(secrets / "hf_home" / "token"),
    }[source]
    for command in ("check", "sync"):
        result = run(prefetch, command, *args, env=env)
        assert result.code == 3, result
        assert "invalid or revoked" in result.output
        assert where in result.output and f"{hub.url}/settings/tokens" in result.output
    assert hub.count(kind="file") == 0


def test_token_env_names_its_own_variable(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    hub.add_user("bob", token=OTHER_TOKEN)
    hub.revoke_token(OTHER_TOKEN)
    add_repo(hub, "bob/secret", private=True)
    prefetch.manifest([{"repo": "bob/secret", "token_env": "ORG_B_TOKEN"}])
    result = run(prefetch, "check", env={"ORG_B_TOKEN": OTHER_TOKEN})
    assert result.code == 3 and "[token: ORG_B_TOKEN]" in result.stdout
    assert "ORG_B_TOKEN" in result.stdout.split("fix:")[1]

    unset = run(prefetch, "check")  # named but not set: the private repo's row says which variable to set
    assert unset.code == 3 and "ORG_B_TOKEN" in unset.stdout, unset


def test_missing_token_file_is_a_usage_error(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    prefetch.manifest([{"repo": "org/public"}])
    result = run(prefetch, "check", "--token-file", str(prefetch.tmp / "nope"))
    assert result.code == 2 and "--token-file" in result.stderr
    assert hub.count() == 0


def test_find_token_order_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every source, including /run/secrets/hf_token (redirected here: the real /run is not touched)."""
    secret = tmp_path / "run-secrets-hf_token"
    monkeypatch.setattr(auth, "DOCKER_SECRET_PATH", secret)
    home = tmp_path / "hf"
    home.mkdir()
    env: dict[str, str] = {"HF_HOME": str(home)}
    assert find_token(Secrets(), env=env) is None

    secret.write_text("hf_from_docker_secret\n")
    token = find_token(Secrets(), env=env)
    assert token is not None and token.source == str(secret) and token.value == "hf_from_docker_secret"

    (home / "token").write_text("hf_from_hf_home")
    assert find_token(Secrets(), env=env).source == str(home / "token")  # type: ignore[union-attr]

    (tmp_path / "p").write_text("hf_from_token_path")
    env["HF_TOKEN_PATH"] = str(tmp_path / "p")
    assert find_token(Secrets(), env=env).source == f"HF_TOKEN_PATH ({tmp_path / 'p'})"  # type: ignore[union-attr]

    env["HF_TOKEN"] = "  hf_from_env \n"
    token = find_token(Secrets(), env=env)
    assert token is not None and token.source == "HF_TOKEN" and token.value == "hf_from_env"

    (tmp_path / "f").write_text("hf_from_flag")
    assert find_token(Secrets(), tmp_path / "f", env=env).source == f"--token-file {tmp_path / 'f'}"  # type: ignore[union-attr]

    env["HF_TOKEN"] = "   "  # blank: skipped, not an empty token
    assert find_token(Secrets(), env=env).source.startswith("HF_TOKEN_PATH")  # type: ignore[union-attr]


def test_default_hf_home_token_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "DOCKER_SECRET_PATH", tmp_path / "absent")
    monkeypatch.setenv("HOME", str(tmp_path))
    target = tmp_path / ".cache" / "huggingface" / "token"
    target.parent.mkdir(parents=True)
    target.write_text("hf_default_location")
    assert find_token(Secrets(), env={"HOME": str(tmp_path)}).source == str(target)  # type: ignore[union-attr]
    xdg = tmp_path / "xdg"
    (xdg / "huggingface").mkdir(parents=True)
    (xdg / "huggingface" / "token").write_text("hf_xdg")
    found = find_token(Secrets(), env={"XDG_CACHE_HOME": str(xdg)})
    assert found is not None and found.value == "hf_xdg"


@pytest.mark.parametrize("value", ["hf_two\nhf_lines", "hf_with space", "hf_tab\there", "hf_ctl\x01x"])
def test_a_malformed_token_is_refused_without_printing_it(tmp_path: Path, value: str) -> None:
    path = tmp_path / "t"
    path.write_text(value)
    with pytest.raises(UsageError) as info:
        find_token(Secrets(), path, env={})
    assert value not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(UsageError) as info:
        find_token(Secrets(), env={"HF_TOKEN": value})
    assert value not in str(info.value) and "HF_TOKEN" in str(info.value)


# ------------------------------------------------------------------------------------------- concurrency
class _FakeHub:
    """Counts how many checks run at once; every repo is readable."""

    endpoint = "https://hub.example"

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def repo_info(self, repo: str, repo_type: str, revision: str, token: Token | None) -> Any:
        import time

        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.05)
        with self.lock:
            self.active -= 1
        return RepoInfo(commit="0" * 40, gated=False)

    def auth_check(self, repo: str, repo_type: str, token: Token | None) -> None:
        return None


def test_entries_are_checked_concurrently_and_bounded() -> None:
    hub = _FakeHub()
    entries = [(Entry(repo=f"org/r{i}", index=i), None) for i in range(12)]
    report = access.check_entries(hub, entries, concurrency=4)  # type: ignore[arg-type]
    assert report.ok and len(report.results) == 12
    assert [r.entry.repo for r in report.results] == [f"org/r{i}" for i in range(12)]
    assert 1 < hub.peak <= 4


# ------------------------------------------------------------------------------- the error translator
@pytest.mark.parametrize(
    ("headers", "status", "kind", "exit_code"),
    [
        ({"X-Error-Code": "GatedRepo"}, 401, errors.GatedRepoError, 3),
        ({"X-Error-Code": "GatedRepo"}, 403, errors.GatedRepoError, 3),
        ({"X-Error-Code": "RepoNotFound"}, 404, errors.RepoNotFoundError, 3),
        ({"X-Error-Code": "RevisionNotFound"}, 404, errors.RevisionNotFoundError, 3),
        ({"X-Error-Code": "EntryNotFound"}, 404, errors.EntryNotFoundError, 3),
        ({"X-Error-Message": "Access to this resource is disabled."}, 403, errors.DisabledRepoError, 3),
        ({"X-Error-Code": "EgressLimitReached"}, 429, errors.EgressLimitError, 10),
        ({}, 401, errors.RepoNotFoundError, 3),  # on an https API route, as huggingface_hub reads it
        (
            {"X-Error-Message": "Invalid credentials in Authorization header"},
            401,
            errors.UnauthorizedError,
            3,
        ),
        ({}, 403, errors.ForbiddenError, 3),
        ({"X-Error-Code": "SomethingNew"}, 404, errors.NotFoundError, 3),
        ({}, 429, errors.RateLimitedError, 10),
        ({}, 500, errors.HubServerError, 4),
        ({}, 410, errors.HubHttpError, 4),
    ],
)
def test_hub_answers_become_typed_errors_whose_class_decides_the_exit_code(
    headers: dict[str, str], status: int, kind: type, exit_code: int
) -> None:
    """Read as huggingface_hub's `hf_raise_for_status` reads them; the class alone gives the exit code."""
    error = errors.hub_http_error("https://hub/api/models/org/x", status, list(headers.items()), b"")
    assert type(error) is kind and error.status == status
    assert errors.exit_code_for(error) == exit_code == kind.exit_code
    assert type(error.in_context("downloading x")) is kind


def test_hub_error_message_from_header_else_bounded_body_and_the_request_id() -> None:
    def translate(headers: dict[str, str], body: bytes) -> errors.HubHttpError:
        return errors.hub_http_error("https://hub/api/x", 403, list(headers.items()), body)

    assert translate({"x-error-message": "from header"}, b'{"error": "from body"}').message.startswith(
        "from header"
    )
    assert translate({}, b'{"error": "from body"}').message == "from body"
    assert translate({"content-type": "text/html"}, b"<html>oops</html>").message == ""
    assert len(translate({}, b'{"error": "%s"}' % (b"x" * 5000)).message) == 500
    assert str(translate({}, b'{"error": "no"}')) == "403 from /api/x: no"
    assert str(translate({"x-request-id": "Root=1-abc"}, b'{"error": "no"}')) == (
        "403 from /api/x: no (request id Root=1-abc)"
    )


def test_check_exits_through_the_shared_mapping(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    """`check` prints its report (text or one JSON object) and nothing else; the exit code is errors'."""
    prefetch.manifest([{"repo": "org/missing"}])
    text = run(prefetch, "check")
    assert text.code == errors.ExitCode.ACCESS and "FAIL  repos[0]" in text.stdout, text
    assert "prefetch: error" not in text.stderr, text
    as_json = run(prefetch, "check", json_out=True)
    assert as_json.code == errors.ExitCode.ACCESS
    assert json.loads(as_json.stdout)["entries"][0]["status"] == "not-found"
