"""Pytest fixtures for the Hub emulator and the test proxy.

Import them into a conftest or a test module::

    from tests.hubemu.fixtures import hub, proxy_factory, tls_hub  # noqa: F401

`hub` is the Hub's profile unless parametrized indirectly; `@over_both_profiles` runs a test (and every
fixture built on `hub`, such as `prefetch`) once against the Hub profile and once against the mirror one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .hub import PROFILES, HubEmulator
from .proxy import ForwardProxy

ProxyFactory = Callable[..., ForwardProxy]
over_both_profiles = pytest.mark.parametrize("hub", PROFILES, indirect=True)


@pytest.fixture
def hub(request: pytest.FixtureRequest) -> Iterator[HubEmulator]:
    """A started HubEmulator (function-scoped, no repos, no users), stopped at teardown.

    Its profile is "hub" unless the test parametrizes `hub` indirectly (see `over_both_profiles`).
    """
    emulator = HubEmulator(profile=getattr(request, "param", "hub"))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def tls_hub() -> Iterator[HubEmulator]:
    """Like `hub`, but both origins speak HTTPS; trust `tls_hub.ca_file` (e.g. via SSL_CERT_FILE)."""
    emulator = HubEmulator(tls=True)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def proxy_factory() -> Iterator[ProxyFactory]:
    """`proxy_factory(mode="ok", credentials=None, **kw)` -> a *started* ForwardProxy, stopped at teardown."""
    proxies: list[ForwardProxy] = []

    def make(mode: str = "ok", credentials: tuple[str, str] | None = None, **kwargs: object) -> ForwardProxy:
        proxy = ForwardProxy(mode=mode, credentials=credentials, **kwargs)  # type: ignore[arg-type]
        proxies.append(proxy)
        return proxy.start()

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.stop()
