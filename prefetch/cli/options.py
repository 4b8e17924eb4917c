"""The arguments, options and option groups the commands share, and `settings_from`, which turns the
parsed flags into the library's `Settings`.

Each command declares its flags one decorator line per option or option group (`hub_options`,
`transfer_options`, `lock_mode_options`...), so a flag means the same in every command that takes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from prefetch.cli.command import option_group
from prefetch.hfhub import REPO_TYPES
from prefetch.progress import parse_size
from prefetch.run import Settings

DEFAULTS = Settings()
MiB = 1024 * 1024

manifest_arg = click.argument(
    "manifest", type=click.Path(path_type=Path), default="models.yaml", required=False
)
lock_arg = click.argument("lockfile", type=click.Path(path_type=Path), default="models.lock", required=False)
repo_arg = click.argument("repo", metavar="REPO[@REVISION]")
cache_opt = click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="HF cache (default: HF_HUB_CACHE...)."
)
lock_opt = click.option(
    "--lock", "lock_path", type=click.Path(path_type=Path), help="Lockfile (default: MANIFEST.lock)."
)
manifest_opt = click.option(
    "--manifest",
    "-m",
    type=click.Path(path_type=Path),
    default="models.yaml",
    show_default=True,
    help="The manifest to edit.",
)
source_opt = click.option(
    "--source",
    metavar="oci://REGISTRY/REPO[:TAG|@DIGEST] | oci:DIR[:TAG]",
    help="Take the locked files from this OCI artifact (`prefetch push`), not the Hub: the lock as --locked "
    "takes it (or --frozen), no request to the Hub, every byte checked (default: the manifest's `source:`).",
)
type_opt = click.option(
    "--type", "repo_type", type=click.Choice(REPO_TYPES), default="model", show_default=True
)


class SizeType(click.ParamType):
    """A size in human units (512M, 10G), as bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


# Flags of the commands that talk to the Hub (sync, plan, lock, check, add).
hub_options = option_group(
    cache_opt,
    click.option("--endpoint", help="Hub URL (default: manifest, HF_ENDPOINT, https://huggingface.co)."),
    click.option("--token-file", type=click.Path(path_type=Path), help="Read the token from this file."),
    click.option("--proxy", "proxies", multiple=True, help="HTTP(S) proxy URL; repeat for failover order."),
    click.option(
        "--retries", type=click.IntRange(1, 100), help="Attempts per request (manifest retry.attempts)."
    ),
    click.option("--max-wait", type=click.FloatRange(0, 3600), help="Longest backoff wait, seconds."),
)
# Flags of the commands that move bytes (sync only).
transfer_options = option_group(
    click.option(
        "--jobs",
        "-j",
        type=click.IntRange(1, 256),
        default=DEFAULTS.jobs,
        show_default=True,
        help="Most connections at once; per host, prefetch uses fewer where more do not raise the rate.",
    ),
    click.option(
        "--segment-size",
        type=click.IntRange(1, 4096),
        default=DEFAULTS.segment_size // MiB,
        show_default=True,
        help="Big files are fetched as parallel Range segments of this many MiB.",
    ),
    click.option(
        "--segment-threshold",
        type=click.IntRange(1, 1 << 20),
        default=DEFAULTS.segment_threshold // MiB,
        show_default=True,
        help="Files of at least this many MiB are split into segments.",
    ),
    click.option(
        "--min-free",
        type=SizeType(),
        help="Space to keep free after the download, e.g. 10G (default: 1 MiB + 1/16 of it, at most 64 MiB).",
    ),
)
# uv's and Cargo's lock modes.
lock_mode_options = option_group(
    click.option(
        "--locked",
        is_flag=True,
        help="Fail (exit 6) if the lockfile is missing or out of date with the manifest; else use it.",
    ),
    click.option(
        "--frozen",
        is_flag=True,
        help="Use the lockfile as it is, without checking it against the manifest's entries (exit 6 if missing).",
    ),
)
upgrade_options = option_group(
    click.option("--upgrade", is_flag=True, help="Re-resolve every entry instead of keeping locked commits."),
    click.option(
        "--upgrade-repo", "upgrade_repos", multiple=True, help="Re-resolve this repo only (repeatable)."
    ),
)
pattern_options = option_group(
    click.option(
        "--include", multiple=True, help="Glob of files to fetch (repeatable; default: every file)."
    ),
    click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable)."),
)


def settings_from(kw: dict[str, Any], offline_flag: bool = False) -> Settings:
    """The library's `Settings` from a command's parsed `hub_options`, `transfer_options` and `--lock`."""
    return Settings(
        lock_path=kw.get("lock_path"),
        cache_dir=kw.get("cache_dir"),
        endpoint=kw.get("endpoint"),
        token_file=kw.get("token_file"),
        proxies=tuple(kw.get("proxies") or ()),
        jobs=kw.get("jobs") or DEFAULTS.jobs,
        retry_attempts=kw.get("retries"),
        retry_max_wait=kw.get("max_wait"),
        offline=offline_flag,
        segment_size=(kw.get("segment_size") or DEFAULTS.segment_size // MiB) * MiB,
        segment_threshold=(kw.get("segment_threshold") or DEFAULTS.segment_threshold // MiB) * MiB,
        min_free=kw.get("min_free"),
        source=kw.get("source"),
    )
