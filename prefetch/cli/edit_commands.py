"""The commands that edit the manifest: `init`, `add`, `remove`, each one call into `prefetch.manifest_edit`.

Loaded only when one of them runs (see `prefetch.cli.lazy_group`): `manifest_edit`'s ruamel.yaml import
costs ~0.1 s, which `sync` and the offline commands would otherwise pay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from prefetch import manifest_edit
from prefetch.cli.command import command
from prefetch.cli.context import Context, pass_ctx
from prefetch.cli.options import (
    hub_options,
    lock_opt,
    manifest_opt,
    pattern_options,
    repo_arg,
    settings_from,
    type_opt,
)


@command(
    "prefetch init                     # writes models.yaml",
    "prefetch init serving.yaml",
)
@click.argument("manifest", type=click.Path(path_type=Path), default="models.yaml", required=False)
@pass_ctx
def init(c: Context, manifest: Path) -> None:
    """Write a commented starter manifest (never overwrites a file)."""
    manifest_edit.init_manifest(manifest)
    if c.as_json:
        c.emit({"manifest": str(manifest)})
    c.say(f"wrote {manifest}; add repos with `prefetch add ORG/NAME`, then run `prefetch sync {manifest}`")


@command(
    "prefetch add sentence-transformers/all-MiniLM-L6-v2",
    "prefetch add org/model@v1.0 --include '*.safetensors' --include '*.json'",
    "prefetch add org/data --type dataset --token-env ORG_TOKEN",
    "prefetch add org/private-model --no-check # offline: no lock update",
)
@repo_arg
@manifest_opt
@type_opt
@pattern_options
@click.option("--gated", is_flag=True, help="The repo is gated (fail early when no token is available).")
@click.option("--token-env", help="Name of the environment variable holding this entry's token.")
@click.option("--no-check", is_flag=True, help="Do not contact the Hub: no validation, no lock update.")
@lock_opt
@hub_options
@pass_ctx
def add(
    c: Context,
    repo: str,
    manifest: Path,
    repo_type: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    gated: bool,
    token_env: str | None,
    no_check: bool,
    **kw: Any,
) -> None:
    """Add an entry to the manifest (comments and layout kept), check it against the Hub, update the lock."""
    request = manifest_edit.EntryRequest.parse(
        repo, repo_type, include=include or None, exclude=exclude, gated=gated or None, token_env=token_env
    )
    result = manifest_edit.add_entry(
        manifest, request, settings=None if no_check else settings_from(kw), cancel=c.cancel
    )
    c.show(result)


@command(
    "prefetch remove org/model",
    "prefetch remove org/model@v1.0 -m serving.yaml",
    "prefetch remove org/data --type dataset",
)
@repo_arg
@manifest_opt
@type_opt
@lock_opt
@pass_ctx
def remove(c: Context, repo: str, manifest: Path, repo_type: str, lock_path: Path | None) -> None:
    """Remove an entry from the manifest (comments and layout kept) and from the lockfile, offline."""
    request = manifest_edit.EntryRequest.parse(repo, repo_type)
    result = manifest_edit.remove_entry(manifest, request, lock_path=lock_path)
    c.show(result)
