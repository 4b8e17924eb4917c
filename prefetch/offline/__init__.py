"""The offline lockfile commands, one module each; none of them uses the network.

    verify.py         `verify`: every locked file is in the cache, intact, with its links and refs
    runtime_env.py    `env_exports` (`prefetch env`): the exports that point a runtime at the cache
    sbom.py           `sbom`: a CycloneDX SBOM of the lockfile
    prune.py          `prune`: remove what no given lockfile needs
    bundle.py         `bundle`: a tar of exactly the locked part of the cache, for an air gap
    unbundle.py       `unbundle`: merge a bundle into a cache, treating it as hostile
    bundle_layout.py  the members a bundle holds (what bundle writes and unbundle accepts)
    shared.py         the cache a lockfile names, its blobs, problem lists, the reports' JSON form

Each reads a lockfile and works on the cache only through `prefetch.cache` (the owner of the layout).
"""
