"""Issue 16: `prefetch init`, `add`, `remove`, `status` and `path`, through the real CLI against the test Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import PrefetchRunner
from tests.hubemu.hub import HubEmulator

HAND_WRITTEN = """\
# Our models (reviewed by the platform team).
version: 1

defaults:
    revision: main          # follow main until we pin

repos:
    # The encoder.
    -   repo: org/encoder
        include: ['*.json']   # configs only
"""


def make_repos(hub: HubEmulator) -> dict[str, str]:
    files = {"config.json": b"{}", "model.safetensors": b"w" * 4096}
    return {
        "org/encoder": hub.create_repo("org/encoder").commit(files),
        "org/decoder": hub.create_repo("org/decoder").commit(files),
        "org/data": hub.create_repo("org/data", repo_type="dataset").commit(
            {"data/train.csv": b"a,b\n1,2\n"}
        ),
    }


def test_init_writes_a_valid_commented_manifest_and_never_overwrites(prefetch: PrefetchRunner) -> None:
    result = prefetch("init")
    assert result.code == 0, result
    text = (prefetch.tmp / "models.yaml").read_text()
    assert text.count("#") > 5 and "version: 1" in text
    assert prefetch("check", "models.yaml", "--help").code == 0
    again = prefetch("init")
    assert again.code == 2, again
    assert "already exists" in again.stderr
    assert (prefetch.tmp / "models.yaml").read_text() == text
    assert prefetch("init", "other.yaml").code == 0


def test_init_manifest_syncs(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    from tests.hubemu.demo import populate_quickstart

    populate_quickstart(hub)
    assert prefetch("init").code == 0
    result = prefetch("sync")
    assert result.code == 0, result


def test_add_keeps_comments_and_layout_checks_the_hub_and_updates_the_lock(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    commits = make_repos(hub)
    manifest = prefetch.tmp / "models.yaml"
    manifest.write_text(HAND_WRITTEN)
    result = prefetch("add", "org/decoder@main", "--include", "*.safetensors", "--include", "*.json")
    assert result.code == 0, result
    text = manifest.read_text()
    assert text.startswith(HAND_WRITTEN), text  # every byte of the hand-written file kept
    assert text[len(HAND_WRITTEN) :] == (
        "    -   repo: org/decoder\n        revision: main\n        include: ['*.safetensors', '*.json']\n"
    )
    lock = yaml.safe_load((prefetch.tmp / "models.lock").read_text())
    assert {e["repo"]: e["commit"] for e in lock["entries"]} == {
        "org/encoder": commits["org/encoder"],
        "org/decoder": commits["org/decoder"],
    }

    added = prefetch("add", "org/data", "--type", "dataset", "--token-env", "DATA_TOKEN", "--json")
    assert added.code == 0, added
    assert json.loads(added.stdout)["entry"] == "dataset:org/data@main"
    assert "type: dataset" in manifest.read_text() and "token_env: DATA_TOKEN" in manifest.read_text()
    assert prefetch("sync", "--locked", "-q").code == 0  # manifest and lock agree


QUOTED = """\
version: 1
defaults:
  include: [ "*.json", "*.safetensors" ]   # both kinds
repos:
  - repo: org/encoder
    revision:  "main"
    include: ["*.json",
              "*.safetensors"]

  - repo: "org/data"
    type: dataset
    include: [ 'data/*.csv' ]
  # - repo: org/later   (not yet)
"""


def test_add_and_remove_keep_every_other_entrys_quotes_and_spacing(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """Quotes, spaces inside flow lists and after a colon, a flow list over two lines, blank lines
    between entries, a commented-out entry at the end: `add` leaves every byte of them (ruamel's dump
    wrote `['*.json', ...]` and `main` unquoted), writes its entry as the file writes its lists, and
    `remove` takes exactly that entry out again."""
    make_repos(hub)
    manifest = prefetch.tmp / "models.yaml"
    manifest.write_text(QUOTED)
    result = prefetch("add", "org/decoder@main", "--include", "*.json")
    assert result.code == 0, result
    head, tail = QUOTED.split("  # - repo: org/later")
    assert manifest.read_text() == (
        head
        + '\n  - repo: org/decoder\n    revision: main\n    include: ["*.json"]\n  # - repo: org/later'
        + tail
    )
    removed = prefetch("remove", "org/decoder")
    assert removed.code == 0, removed
    assert manifest.read_text() == QUOTED
    data = prefetch("remove", "org/data", "--type", "dataset")
    assert data.code == 0, data
    assert manifest.read_text() == QUOTED.replace(
        "\n  - repo: \"org/data\"\n    type: dataset\n    include: [ 'data/*.csv' ]\n", ""
    )


def test_add_refuses_what_the_hub_does_not_have_and_changes_nothing(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    make_repos(hub)
    manifest = prefetch.tmp / "models.yaml"
    manifest.write_text(HAND_WRITTEN)
    for args, code in (
        (("org/missing",), 3),
        (("org/decoder@no-such-branch",), 3),
        (("org/decoder", "--include", "*.safetensor"), 2),
        (("org/encoder",), 2),  # already listed
        (("not a repo",), 2),
    ):
        result = prefetch("add", *args)
        assert result.code == code, result
        assert manifest.read_text() == HAND_WRITTEN
    assert not (prefetch.tmp / "models.lock").exists()

    offline = prefetch("add", "org/missing", "--no-check", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert offline.code == 0, offline
    assert "repo: org/missing" in manifest.read_text() and "prefetch lock" in offline.stdout


def test_a_failed_add_names_the_entry_it_would_have_added_not_a_line_of_the_restored_file(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """The manifest is restored when `add` fails: an error located at a line of the edited file would
    point past the end of the file the user then opens. It names the command's entry instead."""
    make_repos(hub)
    manifest = prefetch.tmp / "models.yaml"
    manifest.write_text(HAND_WRITTEN)
    result = prefetch("add", "org/decoder", "--include", "*.safetensor")
    assert result.code == 2, result
    assert manifest.read_text() == HAND_WRITTEN
    assert "models.yaml:" not in result.stderr, result
    assert (
        "prefetch add org/decoder: include[0]: pattern '*.safetensor' matches no file of the repo "
        "(closest file names: model.safetensors); models.yaml was left as it was"
    ) in result.stderr, result


def test_remove_drops_the_entry_from_manifest_and_lock_offline(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    make_repos(hub)
    manifest = prefetch.tmp / "models.yaml"
    manifest.write_text(HAND_WRITTEN)
    assert prefetch("add", "org/decoder").code == 0
    result = prefetch("remove", "org/decoder", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.code == 0, result
    assert manifest.read_text() == HAND_WRITTEN
    assert prefetch("sync", "--locked", "-q").code == 0  # the lock was updated to match
    missing = prefetch("remove", "org/decodr")
    assert missing.code == 2 and "does not list org/decodr" in missing.stderr
    last = prefetch("remove", "org/encoder")
    assert last.code == 2 and "only entry" in last.stderr


def test_status_rows_and_exit_codes(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repos(hub)
    prefetch.manifest([{"repo": "org/encoder"}, {"repo": "org/decoder"}])
    result = prefetch("status")
    assert result.code == 6, result  # no lock yet: stale
    assert "not locked" in result.stdout

    assert prefetch("lock").code == 0
    result = prefetch("status", "--json")
    assert result.code == 7, result  # locked, nothing cached
    rows = json.loads(result.stdout)["entries"]
    assert [(r["repo"], r["cache"], r["stale"], r["files"], r["bytes"]) for r in rows] == [
        ("org/encoder", "missing", False, 2, 4098),
        ("org/decoder", "missing", False, 2, 4098),
    ]

    assert prefetch("sync", "-q").code == 0
    blob = next((prefetch.cache_dir / "models--org--decoder" / "blobs").iterdir())
    blob.unlink()
    hub.reset_counters()
    result = prefetch("status")
    assert result.code == 7, result
    decoder = next(line for line in result.stdout.splitlines() if line.startswith("org/decoder"))
    assert "partial" in decoder
    assert hub.count() == 0  # offline

    assert prefetch("sync", "-q").code == 0
    result = prefetch("status")
    assert result.code == 0, result
    assert result.stdout.count(" cached ") == 2

    prefetch.manifest([{"repo": "org/encoder", "include": ["*.json"]}, {"repo": "org/decoder"}])
    result = prefetch("status", "--json")
    assert result.code == 6, result
    report = json.loads(result.stdout)
    assert [r["stale"] for r in report["entries"]] == [True, False] and report["stale"]


def test_path_is_the_folder_huggingface_hub_gives(prefetch: PrefetchRunner, hub: HubEmulator) -> None:
    make_repos(hub)
    prefetch.manifest([{"repo": "org/encoder"}, {"repo": "org/data", "type": "dataset"}])
    assert prefetch("path", "org/encoder").code == 2  # no lock yet
    assert prefetch("sync", "-q").code == 0
    hub.reset_counters()
    result = prefetch("path", "org/data", "--type", "dataset")
    assert result.code == 0, result
    folder = Path(result.stdout.strip())
    assert (folder / "data" / "train.csv").read_text() == "a,b\n1,2\n"
    model = prefetch("path", "org/encoder@main").stdout.strip()
    assert hub.count() == 0

    code = (
        "import sys; from huggingface_hub import snapshot_download as s; "
        "print(s('org/encoder', local_files_only=True)); "
        "print(s('org/data', repo_type='dataset', local_files_only=True))"
    )
    env = {**prefetch.env, "HF_HUB_OFFLINE": "1"}
    expected = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert expected.stdout.splitlines() == [model, str(folder)]
    assert os.path.isdir(model)

    wrong = prefetch("path", "org/unknown")
    assert wrong.code == 2 and "does not lock org/unknown" in wrong.stderr


def test_quickstart_manifest_syncs_its_pinned_commit_without_a_token(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """The README's first command (tests/test_docs_commands.py runs it verbatim, too)."""
    from tests.conftest import ROOT
    from tests.hubemu.demo import QUICKSTART_COMMIT, populate_quickstart

    populate_quickstart(hub)
    (prefetch.tmp / "manifests").mkdir()
    quickstart = prefetch.tmp / "manifests" / "quickstart.yaml"
    quickstart.write_text((ROOT / "manifests" / "quickstart.yaml").read_text())
    result = prefetch("sync", "manifests/quickstart.yaml", env={"HF_TOKEN": None})
    assert result.code == 0, result
    lock = yaml.safe_load((prefetch.tmp / "manifests" / "quickstart.lock").read_text())
    assert [e["commit"] for e in lock["entries"]] == [QUICKSTART_COMMIT]
    snapshot = prefetch.cache_dir / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots"
    assert [p.name for p in snapshot.iterdir()] == [QUICKSTART_COMMIT]
    assert (
        prefetch("path", "sentence-transformers/all-MiniLM-L6-v2", "--lock", "manifests/quickstart.lock").code
        == 0
    )


def test_init_then_add_on_an_endpoint_without_the_sample_model(
    prefetch: PrefetchRunner, hub: HubEmulator
) -> None:
    """Issue 30, item 6: `init`'s sample entry is not on a private mirror or in an air gap; adding another
    entry must not fail on it. The added entry is checked and locked; the sample is left out of the lock,
    and the note says so."""
    make_repos(hub)
    assert prefetch("init").code == 0
    result = prefetch("add", "org/decoder")
    assert result.code == 0, result
    assert "not locked" in result.stdout and "sentence-transformers/all-MiniLM-L6-v2" in result.stdout, result
    lock = yaml.safe_load((prefetch.tmp / "models.lock").read_text())
    assert [e["repo"] for e in lock["entries"]] == ["org/decoder"]
    assert prefetch("remove", "sentence-transformers/all-MiniLM-L6-v2").code == 0
    assert prefetch("sync", "--locked", "-q").code == 0
