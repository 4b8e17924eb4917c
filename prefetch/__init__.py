"""prefetch: a declarative model-manifest prefetcher for the Hugging Face Hub.

Data flows one way: manifest -> access check -> plan -> transfer -> cache -> lock.
The CLI (`prefetch.cli`) is a thin layer over the library: `prefetch.sync` (`sync`, `lock`,
`check`) and `prefetch.offline` (`verify`, `env_exports`, `sbom`, `prune`, `bundle`, `unbundle`).
"""

__version__ = "0.1.0"
