"""stub"""
def verify(*a, **k): raise NotImplementedError
def env_exports(*a, **k): raise NotImplementedError
def sbom(*a, **k): raise NotImplementedError
def prune(*a, **k): raise NotImplementedError
def bundle(*a, **k): raise NotImplementedError
def unbundle(*a, **k): raise NotImplementedError
