"""prefetch: a declarative model-manifest prefetcher for the Hugging Face Hub.

Data flows one way: manifest -> access check -> plan -> transfer -> cache -> lock.
The CLI (`prefetch.cli`) is a thin layer over the library: `prefetch.sync` (`sync`, `lock`,
`check`) and the offline commands in `prefetch.offline`, one module each (`verify.verify`,
`runtime_env.env_exports`, `sbom.sbom`, `prune.prune`, `bundle.bundle`, `unbundle.unbundle`).
"""

__version__ = "0.1.0"
