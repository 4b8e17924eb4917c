"""Manifest parsing: every validation rule, with the exact file:line:col and key path of the error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from prefetch.errors import ExitCode, ManifestError, UsageError
from prefetch.manifest import Entry, Manifest, load_manifest, parse_manifest
from prefetch.settings import RetrySettings

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


def parse(text: str, path: str = "m.yaml") -> Manifest:
    return parse_manifest(textwrap.dedent(text), path)


def error(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse(text)
    return info.value


def check(text: str, line: int, column: int, key_path: str, message: str) -> ManifestError:
    """Assert where an error points, its key path, and a fragment of its message."""
    exc = error(text)
    assert (exc.path, exc.line, exc.column, exc.key_path) == ("m.yaml", line, column, key_path), str(exc)
    assert message in exc.message, str(exc)
    prefix = f"m.yaml:{line}:{column}: {key_path}: " if key_path else f"m.yaml:{line}:{column}: "
    assert str(exc).startswith(prefix)
    return exc


# ---- valid manifests


def test_full_example_with_defaults_applied() -> None:
    m = parse(
        """\
        version: 1
        endpoint: https://hub.example.com/
        proxies: ["http://proxy1:3128", "http://user:pass@proxy2:8080"]
        retry: {attempts: 3, max_wait: 2.5, max_time: 30}
        defaults:
          revision: main
          include: ["*.json", "*.safetensors", "tokenizer*"]
          exclude: ["*.bin", "*.pt"]
          gated: false
          token_env: DEFAULT_TOKEN
        repos:
          - repo: sentence-transformers/all-MiniLM-L6-v2
            revision: v1.0
          - repo: mistralai/Mistral-7B-Instruct-v0.1
            gated: true
            include: ["*.safetensors", "*.json", "tokenizer.model"]
            token_env: ORG_B_TOKEN
          - repo: acme/some-dataset
            type: dataset
            include: null
            exclude: "*.zip"
        """
    )
    assert m.version == 1
    assert m.path == Path("m.yaml")
    assert m.endpoint == "https://hub.example.com"
    assert m.proxies == ("http://proxy1:3128", "http://user:pass@proxy2:8080")
    assert m.retry == RetrySettings(attempts=3, max_wait=2.5, max_time=30.0)
    assert isinstance(m.retry.max_time, float)
    a, b, c = m.entries
    assert a == Entry(
        repo="sentence-transformers/all-MiniLM-L6-v2",
        revision="v1.0",
        include=("*.json", "*.safetensors", "tokenizer*"),
        exclude=("*.bin", "*.pt"),
        gated=False,
        token_env="DEFAULT_TOKEN",
        index=0,
        line=12,
        column=5,
    )
    # An entry's value replaces the default; lists are not merged.
    assert b.include == ("*.safetensors", "*.json", "tokenizer.model")
    assert (b.gated, b.token_env, b.revision, b.exclude) == (True, "ORG_B_TOKEN", "main", ("*.bin", "*.pt"))
    assert (b.index, b.line, b.column) == (1, 14, 5)
    # `include: null` in an entry means every file, despite the default; a string is a one-item list.
    assert (c.type, c.include, c.exclude) == ("dataset", None, ("*.zip",))
    assert c.key == "dataset:acme/some-dataset@main"
    assert c.label == "repos[2] (dataset:acme/some-dataset@main)"


def test_minimal_defaults() -> None:
    m = parse("version: 1\nrepos:\n  - repo: a/b\n")
    (e,) = m.entries
    assert (e.type, e.revision, e.include, e.exclude, e.gated, e.token_env) == (
        "model",
        "main",
        None,
        (),
        None,
        None,
    )
    assert (m.cache_dir, m.endpoint, m.proxies, m.retry) == (None, None, (), RetrySettings())


def test_partial_retry_keeps_other_defaults() -> None:
    assert parse("version: 1\nretry: {max_wait: 5}\nrepos: [{repo: a/b}]\n").retry == RetrySettings(
        max_wait=5.0
    )


def test_optional_top_level_keys_may_be_null() -> None:
    m = parse("version: 1\ncache_dir:\nendpoint:\nproxies:\nretry:\ndefaults:\nrepos: [{repo: a/b}]\n")
    assert (m.cache_dir, m.endpoint, m.proxies, m.retry) == (None, None, (), RetrySettings())


def test_cache_dir_relative_to_manifest_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "models.yaml"
    path.parent.mkdir()
    path.write_text("version: 1\ncache_dir: ../hub\nrepos: [{repo: a/b}]\n")
    assert load_manifest(path).cache_dir == tmp_path / "conf" / ".." / "hub"
    path.write_text("version: 1\ncache_dir: /abs/hub\nrepos: [{repo: a/b}]\n")
    assert load_manifest(path).cache_dir == Path("/abs/hub")


def test_cache_dir_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse("version: 1\ncache_dir: ~/hub\nrepos: [{repo: a/b}]\n").cache_dir == tmp_path / "hub"


def test_digest_ignores_comments_and_formatting() -> None:
    a = parse("version: 1\nrepos: [{repo: a/b, include: x}]\n")
    b = parse("# comment\nversion: 1\nrepos:\n  - repo: a/b   # here\n    include: [x]\n")
    assert a.digest() == b.digest()
    assert a.entries[0].digest() == b.entries[0].digest()


def test_anchors_aliases_and_merge_keys() -> None:
    m = parse(
        """\
        version: 1
        defaults:
          include: &weights ["*.safetensors", "*.json"]
        repos:
          - &base
            repo: acme/base
            exclude: ["*.bin"]
            gated: true
          - <<: *base
            repo: acme/other
          - <<: [*base, {type: dataset, revision: v2}]
            repo: acme/third
            revision: v3
            include: *weights
        """
    )
    base, other, third = m.entries
    assert other.exclude == ("*.bin",) and other.gated is True and other.repo == "acme/other"
    assert (third.type, third.revision, third.include) == ("dataset", "v3", ("*.safetensors", "*.json"))
    assert base.include == ("*.safetensors", "*.json")


def test_revision_forms_accepted() -> None:
    text = "version: 1\nrepos:\n" + "".join(
        f"  - {{repo: a/b, revision: '{r}'}}\n" for r in ("v1.0", "refs/pr/1", "a" * 40, "release-2024_06")
    )
    assert [e.revision for e in parse(text).entries] == ["v1.0", "refs/pr/1", "a" * 40, "release-2024_06"]


def test_same_repo_at_two_revisions_or_types_is_fine() -> None:
    m = parse(
        "version: 1\nrepos:\n  - repo: a/b\n  - {repo: a/b, revision: v1}\n  - {repo: a/b, type: space}\n"
    )
    assert len(m.entries) == 3


# ---- YAML-level errors


def test_yaml_syntax_error_position() -> None:
    exc = check("version: 1\nrepos: [a\n", 3, 1, "", "invalid YAML: while parsing a flow sequence at line 2")
    assert "expected ',' or ']'" in exc.message
    assert exc.__suppress_context__  # no chained YAML traceback


def test_yaml_syntax_error_bad_indentation() -> None:
    check("version: 1\nrepos:\n  - repo: a/b\n   bad: x\n", 4, 4, "", "invalid YAML")


def test_yaml_tab_indentation() -> None:
    check(
        "version: 1\nrepos:\n\t- repo: a/b\n", 3, 1, "", "found character '\\t' that cannot start any token"
    )


def test_yaml_two_documents() -> None:
    check("version: 1\nrepos: [{repo: a/b}]\n---\nx: 1\n", 3, 1, "", "expected a single document")


def test_control_character() -> None:
    check("version: 1\x07\n", 1, 11, "", "character U+0007 is not allowed")


def test_custom_and_python_tags_are_rejected() -> None:
    check(
        "version: 1\nrepos:\n  - repo: !!python/object:os.system a/b\n",
        3,
        11,
        "repos[0].repo",
        "!!python/object",
    )
    check("version: 1\nrepos:\n  - repo: !foo a/b\n", 3, 11, "repos[0].repo", "unsupported YAML tag '!foo'")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    check(text, 1, 1, "", "the manifest is empty")


@pytest.mark.parametrize(("text", "found"), [("- a\n", "got a list"), ("hello\n", "got a string")])
def test_top_level_not_a_mapping(text: str, found: str) -> None:
    check(text, 1, 1, "", found)


def test_non_scalar_key() -> None:
    check("version: 1\n[a]: 1\nrepos: [{repo: a/b}]\n", 2, 1, "", "expected a plain key")


def test_merge_cycle_is_an_error_not_a_hang() -> None:
    check("version: 1\nrepos:\n  - &a {repo: a/b, <<: *a}\n", 3, 5, "repos[0]", "merge key '<<' refers to")


# ---- version


def test_version_missing() -> None:
    check("# hi\nrepos:\n  - repo: a/b\n", 2, 1, "", "missing required key 'version'")


def test_version_unsupported() -> None:
    exc = check("version: 2\nrepos: []\n", 1, 10, "version", "")
    assert exc.message == "unsupported manifest version 2 (this prefetch reads version 1)"


def test_version_checked_before_unknown_keys() -> None:
    check(
        "version: 2\nnew_feature: x\nrepos: [{repo: a/b}]\n",
        1,
        10,
        "version",
        "unsupported manifest version 2",
    )


@pytest.mark.parametrize("value", ["'1'", "1.0", "true", "0"])
def test_version_wrong_type(value: str) -> None:
    check(f"version: {value}\nrepos: [{{repo: a/b}}]\n", 1, 10, "version", "expected an integer")


# ---- unknown and duplicate keys


def test_unknown_key_suggests_close_match() -> None:
    exc = check("version: 1\nrepos:\n  - repo: a/b\n    inlcude: x\n", 4, 5, "repos[0].inlcude", "")
    assert exc.message == "unknown key 'inlcude' (did you mean 'include'?)"


def test_unknown_top_level_key_lists_allowed() -> None:
    exc = check(
        "version: 1\nfoo: 1\nrepos: [{repo: a/b}]\n", 2, 1, "foo", "unknown key 'foo' (allowed keys: "
    )
    assert "version, cache_dir, endpoint, source, proxies, retry, defaults, repos" in exc.message


def test_unknown_key_in_retry_and_defaults() -> None:
    check(
        "version: 1\nretry: {atempts: 3}\nrepos: [{repo: a/b}]\n",
        2,
        9,
        "retry.atempts",
        "did you mean 'attempts'",
    )
    check(
        "version: 1\ndefaults:\n  repo: x/y\nrepos: [{repo: a/b}]\n",
        3,
        3,
        "defaults.repo",
        "unknown key 'repo'",
    )


def test_unknown_key_from_a_merge() -> None:
    check(
        "version: 1\nrepos:\n  - <<: {bogus: 1}\n    repo: a/b\n",
        3,
        10,
        "repos[0].bogus",
        "unknown key 'bogus'",
    )


def test_duplicate_key_reported_at_the_second() -> None:
    text = "version: 1\nrepos:\n  - repo: a/b\n    revision: x\n    revision: y\n"
    exc = check(text, 5, 5, "repos[0].revision", "duplicate key 'revision' (first at line 4")
    assert "keep only the last" in exc.message


def test_duplicate_top_level_key() -> None:
    check("version: 1\nrepos: [{repo: a/b}]\nversion: 1\n", 3, 1, "version", "duplicate key 'version'")


def test_explicit_key_overriding_a_merge_is_not_a_duplicate() -> None:
    m = parse("version: 1\nrepos:\n  - &x {repo: a/b, revision: v1}\n  - <<: *x\n    revision: v2\n")
    assert [e.revision for e in m.entries] == ["v1", "v2"]


# ---- wrong types


def test_revision_float_suggests_quoting() -> None:
    exc = check("version: 1\nrepos:\n  - repo: a/b\n    revision: 1.0\n", 4, 15, "repos[0].revision", "")
    assert exc.message.startswith("expected a string, got a number")
    assert "'1.0'" in exc.message


def test_revision_int() -> None:
    check(
        "version: 1\nrepos:\n  - repo: a/b\n    revision: 123\n",
        4,
        15,
        "repos[0].revision",
        "expected a string",
    )


def test_revision_null() -> None:
    check(
        "version: 1\nrepos:\n  - repo: a/b\n    revision:\n", 4, 14, "repos[0].revision", "expected a string"
    )


def test_include_item_not_a_string() -> None:
    text = "version: 1\ndefaults:\n  include: ['*.json', 3]\nrepos: [{repo: a/b}]\n"
    check(text, 3, 23, "defaults.include[1]", "expected a string")


def test_include_mapping() -> None:
    text = "version: 1\nrepos:\n  - repo: a/b\n    include: {a: 1}\n"
    check(text, 4, 14, "repos[0].include", "expected a list of strings")


def test_include_empty_list_and_empty_pattern() -> None:
    check("version: 1\nrepos:\n  - {repo: a/b, include: []}\n", 3, 26, "repos[0].include", "matches no file")
    check("version: 1\nrepos:\n  - {repo: a/b, exclude: ['']}\n", 3, 27, "repos[0].exclude[0]", "non-empty")


def test_pattern_with_leading_slash() -> None:
    check(
        "version: 1\nrepos:\n  - {repo: a/b, include: /x}\n",
        3,
        26,
        "repos[0].include",
        "drop the leading '/'",
    )


@pytest.mark.parametrize("value", ["'true'", "1", "maybe"])
def test_gated_not_boolean(value: str) -> None:
    text = f"version: 1\nrepos:\n  - repo: a/b\n    gated: {value}\n"
    check(text, 4, 12, "repos[0].gated", "expected true or false")


@pytest.mark.parametrize(
    ("retry", "column", "key", "message"),
    [
        ("{attempts: 0}", 19, "retry.attempts", "expected an integer >= 1"),
        ("{attempts: true}", 19, "retry.attempts", "expected an integer >= 1"),
        ("{attempts: 2.5}", 19, "retry.attempts", "expected an integer >= 1"),
        ("{max_wait: -1}", 19, "retry.max_wait", "expected a number > 0"),
        ("{max_time: 0}", 19, "retry.max_time", "expected a number > 0"),
        ("{max_time: .inf}", 19, "retry.max_time", "expected a number > 0"),
        ("{max_time: '9'}", 19, "retry.max_time", "expected a number > 0"),
        ("[1]", 8, "retry", "expected a mapping, got a list"),
    ],
)
def test_retry_values(retry: str, column: int, key: str, message: str) -> None:
    check(f"version: 1\nretry: {retry}\nrepos: [{{repo: a/b}}]\n", 2, column, key, message)


# ---- repos


def test_repos_missing() -> None:
    check("version: 1\ncache_dir: /x\n", 1, 1, "", "missing required key 'repos'")


@pytest.mark.parametrize(("text", "column"), [("repos: []\n", 8), ("repos:\n", 7)])
def test_repos_empty(text: str, column: int) -> None:
    check("version: 1\n" + text, 2, column, "repos", "needs at least one entry")


def test_repos_not_a_list() -> None:
    check("version: 1\nrepos: {repo: a/b}\n", 2, 8, "repos", "expected a list of entries")


def test_entry_written_as_a_string() -> None:
    check("version: 1\nrepos:\n  - a/b\n", 3, 5, "repos[0]", "expected a mapping: write '- repo: a/b'")


def test_entry_missing_repo_points_at_the_mapping() -> None:
    check("version: 1\nrepos:\n  - repo: a/b\n  - type: model\n    revision: x\n", 4, 5, "repos[1]", "'repo'")


@pytest.mark.parametrize(
    ("repo", "message"),
    [
        ("a--b/c", "invalid repo id: Cannot have -- or .."),
        ("a/b/c", "invalid repo id: Repo id must be in the form"),
        ("-a/b", "invalid repo id: Repo id must use alphanumeric chars"),
        ("a/b.git", "invalid repo id: Repo_id cannot end by '.git'"),
        ("'a/b c'", "invalid repo id"),
        ("gpt2", "needs the 'namespace/name' form"),
    ],
)
def test_repo_id(repo: str, message: str) -> None:
    exc = check(f"version: 1\nrepos:\n  - repo: {repo}\n", 3, 11, "repos[0].repo", message)
    if repo == "gpt2":
        assert "openai-community/gpt2" in exc.message


def test_repo_id_not_a_string() -> None:
    check("version: 1\nrepos:\n  - repo: 42\n", 3, 11, "repos[0].repo", "expected a string")


def test_unknown_type_lists_the_valid_ones() -> None:
    exc = check("version: 1\nrepos:\n  - {repo: a/b, type: datasets}\n", 3, 23, "repos[0].type", "")
    assert "model, dataset, space" in exc.message and "did you mean 'dataset'" in exc.message
    exc = check(
        "version: 1\nrepos:\n  - {repo: a/b, type: foo}\n", 3, 23, "repos[0].type", "model, dataset, space"
    )


@pytest.mark.parametrize(
    ("revision", "message"),
    [
        ("''", "expected a revision"),
        ("'a b'", "whitespace"),
        ('"a\\tb"', "whitespace"),
        ("/main", "must not start with '/'"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("'a\\\\b'", "'\\'"),
    ],
)
def test_revision_rules(revision: str, message: str) -> None:
    text = f"version: 1\nrepos:\n  - repo: a/b\n    revision: {revision}\n"
    check(text, 4, 15, "repos[0].revision", message)


def test_revision_rules_apply_to_defaults() -> None:
    text = "version: 1\ndefaults:\n  revision: ../x\nrepos: [{repo: a/b}]\n"
    check(text, 3, 13, "defaults.revision", "'..'")


@pytest.mark.parametrize("name", ["my-token", "1TOKEN", "A B", "$HF_TOKEN"])
def test_token_env_must_be_a_variable_name(name: str) -> None:
    exc = check(
        f"version: 1\nrepos:\n  - repo: a/b\n    token_env: '{name}'\n", 4, 16, "repos[0].token_env", ""
    )
    assert "expected an environment variable name" in exc.message
    assert name not in str(exc)


def test_token_pasted_into_token_env_is_not_echoed() -> None:
    secret = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"
    exc = check(
        f"version: 1\nrepos:\n  - repo: a/b\n    token_env: {secret}\n", 4, 16, "repos[0].token_env", ""
    )
    assert "looks like an access token" in exc.message
    assert secret not in str(exc) and secret[3:12] not in str(exc)


def test_token_env_wrong_type_is_not_echoed() -> None:
    exc = check("version: 1\nrepos:\n  - {repo: a/b, token_env: 12345}\n", 3, 28, "repos[0].token_env", "")
    assert "expected a string" in exc.message and "12345" not in str(exc)


def test_error_messages_never_contain_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORG_B_TOKEN", "hf_supersecretvalue0123456789abcdef")
    monkeypatch.setenv("HOME", "/home/secret-home-value")
    exc = error("version: 1\ncache_dir: ~/x\nrepos:\n  - {repo: a/b, token_env: ORG_B_TOKEN, gated: 1}\n")
    assert "supersecret" not in str(exc) and "secret-home-value" not in str(exc)


def test_duplicate_entry_names_the_first_line() -> None:
    text = "version: 1\nrepos:\n  - repo: a/b\n  - repo: a/c\n  - repo: a/b\n    revision: main\n"
    exc = check(text, 5, 5, "repos[2]", "duplicate entry model:a/b@main")
    assert "repos[0] (line 3)" in exc.message


def test_duplicate_entry_after_defaults() -> None:
    text = "version: 1\ndefaults: {revision: v1}\nrepos:\n  - {repo: a/b, revision: v1}\n  - {repo: a/b}\n"
    check(text, 5, 5, "repos[1]", "duplicate entry model:a/b@v1")


# ---- endpoint and proxies


@pytest.mark.parametrize(
    "value", ["huggingface.co", "ftp://x", "https://", "https://h/?q=1", "http://h:99999"]
)
def test_endpoint_must_be_http_url(value: str) -> None:
    check(
        f"version: 1\nendpoint: '{value}'\nrepos: [{{repo: a/b}}]\n",
        2,
        11,
        "endpoint",
        "expected an http(s) URL",
    )


def test_endpoint_without_credentials() -> None:
    exc = check(
        "version: 1\nendpoint: https://u:pw@h\nrepos: [{repo: a/b}]\n", 2, 11, "endpoint", "credentials"
    )
    assert "pw" not in str(exc)


def test_proxy_errors_do_not_echo_passwords() -> None:
    text = "version: 1\nproxies:\n  - http://ok:3128\n  - socks5://user:hunter2@p:1\nrepos: [{repo: a/b}]\n"
    exc = check(text, 4, 5, "proxies[1]", "expected an http URL")
    assert "hunter2" not in str(exc)


def test_https_proxies_are_refused_with_the_reason() -> None:
    text = "version: 1\nproxies:\n  - https://user:hunter2@p:3128\nrepos: [{repo: a/b}]\n"
    exc = check(text, 3, 5, "proxies[0]", "talks plain HTTP to proxies")
    assert "hunter2" not in str(exc)


def test_proxies_wrong_type() -> None:
    check(
        "version: 1\nproxies: {a: 1}\nrepos: [{repo: a/b}]\n", 2, 10, "proxies", "expected a list of strings"
    )
    assert parse("version: 1\nproxies: http://p:1\nrepos: [{repo: a/b}]\n").proxies == ("http://p:1",)


def test_cache_dir_errors() -> None:
    check("version: 1\ncache_dir: ''\nrepos: [{repo: a/b}]\n", 2, 12, "cache_dir", "expected a folder path")
    check("version: 1\ncache_dir: [a]\nrepos: [{repo: a/b}]\n", 2, 12, "cache_dir", "expected a string")


# ---- files


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest file") as info:
        load_manifest(tmp_path / "nope.yaml")
    assert isinstance(info.value, UsageError) and info.value.exit_code == ExitCode.USAGE


def test_load_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"version: 1\nrepos:\n  - repo: a/\xff\n")
    with pytest.raises(ManifestError, match="not UTF-8") as info:
        load_manifest(path)
    assert (info.value.line, info.value.column) == (3, 13)


def test_load_with_bom_and_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\nrepos: [{repo: a/b}]\n")
    assert load_manifest(path).entries[0].repo == "a/b"
    path.write_text("version: 1\nrepos: [{repo: a/b, bad: 1}]\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(str(path))
    assert str(info.value).startswith(f"{path}:2:21: repos[0].bad: unknown key 'bad'")


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_manifests_load(path: Path) -> None:
    manifest = load_manifest(path)
    assert manifest.entries


def test_expected_example_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS.glob("*.yaml")}
    assert {"minimal.yaml", "llm-serving.yaml", "datasets.yaml", "corporate.yaml"} <= names
    corporate = load_manifest(MANIFESTS / "corporate.yaml")
    assert corporate.proxies and corporate.cache_dir and any(e.token_env for e in corporate.entries)
    datasets = load_manifest(MANIFESTS / "datasets.yaml")
    assert any(e.type == "dataset" and e.include for e in datasets.entries)
    assert any(len(e.revision) == 40 for e in datasets.entries)
    serving = load_manifest(MANIFESTS / "llm-serving.yaml")
    assert any(e.gated for e in serving.entries) and any(e.revision not in ("main",) for e in serving.entries)


# ---- hostile YAML (the shared reader, `located_yaml`)


@pytest.mark.parametrize(
    ("repos", "column"),
    [
        ("[" * 50_000 + "]" * 50_000, 107),  # flow: the 100th '[' (the top mapping is the first level)
        ("\n  " + "- " * 50_000 + "x", 201),  # block, on one line: the 100th '- '
    ],
    ids=["flow", "block"],
)
def test_nesting_deeper_than_the_bound_is_an_error_at_its_position(repos: str, column: int) -> None:
    line = 2 if repos.startswith("[") else 3
    exc = check(f"version: 1\nrepos: {repos}\n", line, column, "", "")
    assert exc.message == "lists and mappings nested more than 100 levels deep"


def test_aliases_merged_many_times_are_read_once() -> None:
    """Each entry merges the one before twice: read naively, 2**60 mappings for the last."""
    text = "version: 1\nrepos:\n  - &m0 {repo: a/b, gated: true}\n"
    text += "".join(f"  - &m{i} {{<<: [*m{i - 1}, *m{i - 1}], revision: v{i}}}\n" for i in range(1, 61))
    entries = parse(text).entries
    assert len(entries) == 61 and all(e.gated for e in entries) and entries[-1].revision == "v60"


def test_a_merge_chain_deeper_than_the_bound_is_an_error_not_a_crash() -> None:
    """Aliases chain merges without nesting the text: the chain is bounded like nesting."""
    chain = "".join(f"  - &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 200))
    text = "version: 1\nx-anchors:\n  - &m0 {repo: a/b}\n" + chain + "<<: *m199\nrepos: [{repo: a/b}]\n"
    exc = check(text, 103, 5, "", "")  # m100: the 100th mapping merging the next
    assert exc.message == "merge keys '<<' chained more than 100 levels deep"


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!int abc", "!!int"),
        ("!!float abc", "!!float"),
        ("!!timestamp xyz", "!!timestamp"),
        ("!!bool maybe", "!!bool"),
        ("1" * 5000, "!!int"),  # past Python's 4,300 digits for int()
    ],
)
def test_a_value_its_tag_cannot_hold_is_an_error_not_a_crash(value: str, tag: str) -> None:
    check(f"version: {value}\nrepos: [{{repo: a/b}}]\n", 1, 10, "version", f"invalid '{tag}' value")


def test_a_lone_surrogate_is_located() -> None:
    check("version: 1\nrepos: [{repo: 'a/\ud800'}]\n", 2, 19, "", "character U+D800 is not allowed")


def test_no_hint_to_quote_where_a_string_would_not_do() -> None:
    assert error("version: 1\nretry: 5\nrepos: [{repo: a/b}]\n").message == "expected a mapping, got a number"
    assert error("version: 1\nrepos: 5\n").message == "expected a list of entries (- repo: …), got a number"
    assert "quote it" in error("version: 1\nrepos: [{repo: a/b, include: 5}]\n").message  # a string would do


def test_source_is_an_oci_reference_and_a_layout_folder_is_relative_to_the_manifest() -> None:
    from prefetch.oci.reference import LayoutRef, RegistryRef

    registry = parse_manifest(
        "version: 1\nsource: oci://r.io:5000/ml/models:prod\nrepos: [{repo: a/b}]\n", "m.yaml"
    )
    assert registry.source == RegistryRef("r.io:5000", "ml/models", "prod")
    layout = parse_manifest("version: 1\nsource: oci:layout:v1\nrepos: [{repo: a/b}]\n", "/srv/cfg/m.yaml")
    assert layout.source == LayoutRef(Path("/srv/cfg/layout"), "v1")
    assert parse_manifest("version: 1\nrepos: [{repo: a/b}]\n", "m.yaml").source is None
    check(
        "version: 1\nsource: docker://r.io/m\nrepos: [{repo: a/b}]\n", 2, 9, "source", "invalid OCI reference"
    )
