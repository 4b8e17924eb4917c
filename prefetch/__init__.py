"""prefetch: a declarative model-manifest prefetcher for the Hugging Face Hub.

Data flows one way: manifest -> access check -> plan -> transfer -> cache -> lock.
The CLI (`prefetch.cli`) is a thin layer over the functions in `prefetch.api`.
"""

__version__ = "0.1.0"
