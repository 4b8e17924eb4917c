"""The offline commands, which read a lockfile and the cache: `status`, `path`, `verify`, `env`, `sbom`,
`prune`, `bundle`, `unbundle`, each one call into its module of `prefetch.offline`.

Each command imports its library module when it runs, not this module: `prefetch env` runs in an
application container's start-up, and should pay for reading a lockfile, not for hashing, tar archives
or (`verify --repair`, `path`) the network stack and ruamel.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from prefetch.cli.command import command
from prefetch.cli.context import Context, pass_ctx
from prefetch.cli.options import cache_opt, lock_arg, lock_opt, manifest_arg, repo_arg, type_opt


@command(
    "prefetch status                   # one row per entry",
    "prefetch status models.yaml --json",
    "prefetch status || prefetch sync  # CI gate: exit 6 stale, 7 not cached",
)
@manifest_arg
@lock_opt
@cache_opt
@pass_ctx
def status(c: Context, manifest: Path, lock_path: Path | None, cache_dir: Path | None) -> None:
    """Offline: per entry, the requested revision, the locked commit, and what the cache holds."""
    from prefetch.offline import status as status_mod

    report = status_mod.status(manifest, lock_path=lock_path, cache_dir=cache_dir)
    c.show(report)
    if not report.ok:
        raise report.error()


@command(
    "prefetch path org/model           # its snapshot folder",
    "prefetch path org/data@main --type dataset --lock models.lock",
    "prefetch path org/data --type dataset --json",
)
@repo_arg
@type_opt
@click.option(
    "--lock",
    "lock_path",
    type=click.Path(path_type=Path),
    default="models.lock",
    show_default=True,
    help="The lockfile that names the entry.",
)
@cache_opt
@pass_ctx
def path(c: Context, repo: str, repo_type: str, lock_path: Path, cache_dir: Path | None) -> None:
    """Offline: print the snapshot folder of a locked entry, for tools that take a folder."""
    from prefetch.manifest_edit import EntryRequest
    from prefetch.offline.status import snapshot_path

    request = EntryRequest.parse(repo, repo_type)
    folder = snapshot_path(lock_path, request.repo, request.type, request.revision, cache_dir=cache_dir)
    if c.as_json:
        c.emit({"repo": request.repo, "type": request.type, "path": str(folder)})
    else:
        click.echo(str(folder))


@command(
    "prefetch verify                   # models.lock against the cache",
    "prefetch verify models.lock --fast # sizes only",
    "prefetch verify --cache-dir /models/hub --json",
)
@lock_arg
@cache_opt
@click.option("--fast", is_flag=True, help="Check sizes only, not hashes.")
@click.option(
    "--jobs", "-j", type=click.IntRange(1, 256), help="Files hashed in parallel (default: CPU count)."
)
@click.option(
    "--repair",
    is_flag=True,
    help="Fetch again from the Hub what is missing or corrupt (needs the network and the manifest), then verify.",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="With --repair: the manifest whose settings fetch (default: LOCKFILE with .yaml).",
)
@pass_ctx
def verify(
    c: Context,
    lockfile: Path,
    cache_dir: Path | None,
    fast: bool,
    jobs: int | None,
    repair: bool,
    manifest: Path | None,
) -> None:
    """Check, offline, that every locked file is in the cache intact (exit 7 if not)."""
    if repair:
        from prefetch import repair as repair_mod

        progress = c.progress()
        try:
            report = repair_mod.repair(
                lockfile, manifest_path=manifest, cache_dir=cache_dir, progress=progress, cancel=c.cancel
            )
        finally:
            progress.close()
    else:
        from prefetch.offline import verify as verify_mod

        report = verify_mod.verify(lockfile, cache_dir=cache_dir, fast=fast, jobs=jobs)
    c.show(report)


@command(
    "prefetch env                      # export HF_HUB_CACHE=... lines",
    'eval "$(prefetch env models.lock)" && python serve.py',
)
@lock_arg
@cache_opt
def env(lockfile: Path, cache_dir: Path | None) -> None:
    """Print the `export` lines a runtime container needs (HF_HUB_CACHE, HF_HUB_OFFLINE=1)."""
    from prefetch.offline.runtime_env import env_exports

    for line in env_exports(lockfile, cache_dir=cache_dir):
        click.echo(line)


@command(
    "prefetch sbom > sbom.json",
    "prefetch sbom models.lock -o sbom.json",
)
@lock_arg
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here instead of stdout.")
def sbom(lockfile: Path, output: Path | None) -> None:
    """A CycloneDX JSON SBOM of the locked repos and files."""
    from prefetch.files import atomic_write
    from prefetch.offline import sbom as sbom_mod

    text = json.dumps(sbom_mod.sbom(lockfile), indent=2, sort_keys=True) + "\n"
    if output:
        atomic_write(output, text.encode())
    else:
        click.echo(text, nl=False)


@command(
    "prefetch prune --dry-run          # what models.lock does not need",
    "prefetch prune --lock serving.lock --lock batch.lock",
    "prefetch prune --unlocked         # also the repos no lockfile names (after `prefetch remove`)",
)
@click.option(
    "--lock",
    "lock_paths",
    multiple=True,
    default=("models.lock",),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Keep what this lockfile needs (repeatable).",
)
@cache_opt
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option(
    "--unlocked",
    is_flag=True,
    help="Also remove, whole, the cached repos that no given lockfile names (the cache may be shared: "
    "give every lockfile whose repos must stay).",
)
@pass_ctx
def prune(
    c: Context, lock_paths: tuple[Path, ...], cache_dir: Path | None, dry_run: bool, unlocked: bool
) -> None:
    """Remove cached revisions and blobs that no given lockfile needs."""
    from prefetch.offline import prune as prune_mod

    report = prune_mod.prune(list(lock_paths), cache_dir=cache_dir, dry_run=dry_run, unlocked=unlocked)
    c.show(report)


@command(
    "prefetch bundle models.lock -o models.tar",
    "prefetch bundle -o models.tar --cache-dir /models/hub",
)
@lock_arg
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Tar file to write.")
@cache_opt
@pass_ctx
def bundle(c: Context, lockfile: Path, output: Path, cache_dir: Path | None) -> None:
    """Pack exactly the locked subset of the cache into a tar, for an air gap."""
    from prefetch.offline import bundle as bundle_mod

    report = bundle_mod.bundle(lockfile, output, cache_dir=cache_dir)
    c.show(report)


@command(
    "prefetch unbundle models.tar --lock-out models.lock",
    "prefetch unbundle models.tar --cache-dir /models/hub --json",
)
@click.argument("archive", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@cache_opt
@click.option(
    "--lock-out",
    type=click.Path(path_type=Path),
    help="Also write the bundled lockfile here (e.g. models.lock).",
)
@pass_ctx
def unbundle(c: Context, archive: Path, cache_dir: Path | None, lock_out: Path | None) -> None:
    """Verify and merge a bundle into a cache."""
    from prefetch.offline import unbundle as unbundle_mod

    report = unbundle_mod.unbundle(archive, cache_dir=cache_dir, lock_out=lock_out)
    c.show(report)
