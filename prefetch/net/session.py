"""The run's HTTP session: routes and failover, retries, redirects, and the rule that tokens stay on
the Hub's origin (redirects are followed by hand, so the `Authorization` header never reaches a CDN)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from prefetch import __version__
from prefetch.auth import Credential, Token
from prefetch.errors import (
    AccessError,
    CertificateError,
    ConnectError,
    HubHttpError,
    NetworkError,
    PrefetchError,
    ProxyError,
    ProxyRoutesFailed,
    QuotaClosed,
    QuotaWaitTooLong,
    TooManyRedirects,
    TransportError,
    UnusableAnswer,
    hub_http_error,
)
from prefetch.net.connection import Body, Headers, Pool, Response, Sent, SessionTls
from prefetch.net.proxies import Route, Routes, checked_proxy_url, credentials_hint, is_proxy_failure
from prefetch.net.ratelimit import RateGate
from prefetch.net.retry import RetryPolicy, describe, retry_after_seconds
from prefetch.settings import RetrySettings
from prefetch.terminal import printable
from prefetch.urls import loggable_url, origin_key, origin_of, plain_http_token_problem, same_origin

log = logging.getLogger("prefetch")

FILE_HEADERS = {"accept-encoding": "identity"}  # byte offsets and hashes are of the stored bytes
CONNECT_TIMEOUT = 10.0  # seconds to connect (TLS handshake and proxy tunnel included)
READ_TIMEOUT = 60.0  # seconds without a byte from the server
MAX_REDIRECTS = 5
MAX_QUOTA_WAITS = 50  # windows one request may wait for (other clients may share its quota), then it fails
ERROR_BODY_LIMIT = 64 * 1024  # of an error answer's body, what is read (for its message); the rest is not


@dataclass(frozen=True)
class InFlight:
    """A GET sent by `Http.send`, its answer not read yet; `ticket`: its place in its rate-limit bucket."""

    route: Route
    sent: Sent
    ticket: int = 0


@dataclass(frozen=True)
class HttpRecipe:
    """What another process needs to open the same session (`Http.recipe`, `Http.from_recipe`)."""

    endpoint: str
    proxies: tuple[str, ...]
    retry: RetrySettings
    no_proxy: str
    pool_size: int
    offline: bool
    answered: frozenset[
        tuple[str, str, int]
    ]  # origins that answered: their connect failures are not a first contact


class Http:
    """HTTP for the whole run: routes, retries, and the rule that tokens stay on the Hub's origin."""

    def __init__(
        self,
        endpoint: str,
        proxies: list[str],
        retry: RetryPolicy,
        *,
        no_proxy: str = "",
        pool_size: int = 16,
        offline: bool = False,
        gate: RateGate | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.retry = retry
        self.offline = offline
        self.gate = gate  # the endpoint's rate-limit buckets (None: not paced, e.g. a registry)
        self._answered: set[tuple[str, str, int]] = set()  # origins that answered this run
        self._made_with = (tuple(proxies), no_proxy, pool_size)

        tls = SessionTls().context  # this session's: SSL_CERT_FILE / SSL_CERT_DIR as at its first https://

        def pool(proxy: str | None) -> Pool:
            return Pool(
                tls,
                proxy,
                user_agent=f"prefetch/{__version__}",
                max_idle=pool_size,
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
            )

        proxies = [checked_proxy_url(p, "proxy URL") for p in proxies]
        self.routes = Routes([Route(p, pool(p)) for p in proxies], Route(None, pool(None)), no_proxy)

    def recipe(self) -> HttpRecipe:
        proxies, no_proxy, pool_size = self._made_with
        return HttpRecipe(
            self.endpoint,
            proxies,
            self.retry.settings,
            no_proxy,
            pool_size,
            self.offline,
            frozenset(self._answered),
        )

    @classmethod
    def from_recipe(cls, recipe: HttpRecipe, retry: RetryPolicy, gate: RateGate | None = None) -> Http:
        """The session `recipe` describes, with this process's own pools, `retry` (its settings) and
        `gate`."""
        http = cls(
            recipe.endpoint,
            list(recipe.proxies),
            retry,
            no_proxy=recipe.no_proxy,
            pool_size=recipe.pool_size,
            offline=recipe.offline,
            gate=gate,
        )
        http._answered.update(recipe.answered)
        return http

    def close(self) -> None:
        self.routes.close()

    def describe_routes(self, origin: str = "") -> str:
        """`http://host (direct)` or `http://host via proxy ...`: the routes to `origin` (default: the Hub's)."""
        return self.routes.describe(origin or self.endpoint)

    def _send_once(
        self, method: str, url: str, headers: dict[str, str], body: Body | None = None
    ) -> Response:
        """One attempt, in its rate-limit bucket's window: a 429 of the Hub's quota (the window closed
        while the request was on its way) is not a failure, and the request is sent again when the
        window opens."""
        self._check_online(method, url)
        for _ in range(MAX_QUOTA_WAITS):
            ticket = self.gate.take(url) if self.gate else 0
            response = self._over_routes(method, url, headers, body)
            wait = (
                self.gate.observe(url, ticket or 0, response.status_code, response.headers)
                if self.gate
                else None
            )
            if wait is None:
                return response
            response.close()
        raise QuotaWaitTooLong(
            f"{method} {urlsplit(url).path}: the Hub's rate limit refused it in {MAX_QUOTA_WAITS} windows in a row "
            "(other clients share this quota: anonymous limits are per IP address); run again later, or use a token"
        )

    def _over_routes(self, method: str, url: str, headers: dict[str, str], body: Body | None) -> Response:
        """One attempt over the routes: a failing proxy hands over to the next one.

        A proxy fails when it cannot be reached, breaks the connection or tunnel before an answer,
        or answers 407 / a 502-504 of its own; an answer relayed from the origin is not its failure.
        """
        failures: list[tuple[str, str]] = []
        needs_credentials = 0
        for route in self.routes.for_url(url):
            try:
                response = route.pool.request(method, url, headers, body)
            except TransportError as e:
                e.origin = origin_of(url)
                if route.proxy is None and isinstance(e, ConnectError):
                    e.first_contact = origin_key(url) not in self._answered
                # Not a proxy's failure: no route left to try, or a certificate no other proxy verifies either.
                if route.proxy is None or isinstance(e, CertificateError):
                    raise
                reason = describe(e)
                if isinstance(e, ProxyError) and e.status == 407:  # CONNECT refused (https)
                    needs_credentials += 1
                    reason += credentials_hint(route.proxy)
                failures.append((route.label, reason))
                continue
            refused = self._proxy_failure(route, response)
            if refused is not None:
                if response.status_code == 407:
                    needs_credentials += 1
                    refused += credentials_hint(route.proxy)
                failures.append((route.label, refused))
                continue
            self.routes.stick_to(route, failures)
            self._answered.add(origin_key(url))
            _log_answer(method, url, response, route)
            return response
        failed = ProxyRoutesFailed(failures, permanent=needs_credentials == len(failures))
        failed.origin = origin_of(url)
        raise failed

    def _check_online(self, method: str, url: str) -> None:
        if self.offline:
            raise PrefetchError(f"internal: network request attempted in offline mode: {method} {url}")

    @staticmethod
    def _proxy_failure(route: Route, response: Response) -> str | None:
        """Why `response` is `route`'s proxy failing (a 407 or a 502-504 of its own), then closed; None:
        it is the origin's answer (or there is no proxy)."""
        if route.proxy is None or not is_proxy_failure(response):
            return None
        response.close()
        return f"answered {response.status_code} {response.reason_phrase}"

    def open(
        self,
        url: str,
        token: Credential | None,
        headers: dict[str, str] | None = None,
        on_redirect: Callable[[Headers], None] | None = None,
    ) -> Response:
        """GET `url` (one attempt), following redirects by hand; the token only goes to the Hub's origin.

        `on_redirect` sees the headers of the first redirect (the Hub's, which state an LFS file's hash
        and size) before it is followed. Returns a streaming response with a 2xx status; raises
        HubHttpError otherwise.
        """
        response = self._send_once("GET", url, {**(headers or {}), **self._auth(url, token)})
        return self.follow(url, response, token, headers, on_redirect)

    def request(
        self,
        method: str,
        url: str,
        token: Credential | None,
        headers: dict[str, str] | None = None,
        body: Body | None = None,
    ) -> Response:
        """One request of any method, with `body` if any, over the routes (`_send_once`): redirects not
        followed and the status not checked, for a protocol whose answers say more than 2xx or not
        (a registry's 201, 202, 416...). The answer is the caller's to read and close."""
        return self._send_once(method, url, {**(headers or {}), **self._auth(url, token)}, body)

    def send(
        self,
        url: str,
        token: Credential | None,
        headers: dict[str, str] | None = None,
        *,
        connect: bool = True,
        ticket: int = 0,
    ) -> InFlight | None:
        """GET `url` on the route it takes now, without waiting for the answer (`answer`, then `follow`,
        take it from there): for a thread that keeps several requests in flight. No failover: a
        failure is the caller's to retry, through `open`. `connect=False`: only on a kept-alive
        connection, else None (`Pool.send`). `ticket`: its place in its rate-limit bucket, which the
        caller took (`gate.take`): a thread with requests in flight must not wait for a window."""
        self._check_online("GET", url)
        route = self.routes.for_url(url)[0]
        fields = {**(headers or {}), **self._auth(url, token)}
        try:
            sent = route.pool.send("GET", url, fields, connect=connect)
        except TransportError as e:
            e.origin = origin_of(url)
            raise
        return None if sent is None else InFlight(route, sent, ticket)

    def answer(self, request: InFlight) -> Response:
        """The head of the answer to a request `send` made; a proxy's own failure is a ProxyError, a 429 of
        the Hub's quota a QuotaClosed (send it again once the window opens)."""
        url = request.sent.url
        try:
            response = request.sent.answer()
            reason = self._proxy_failure(request.route, response)
            if reason is not None:
                raise ProxyError(f"{request.route.label} {reason}", response.status_code)
        except TransportError as e:
            e.origin = origin_of(url)
            raise
        self._answered.add(origin_key(url))
        _log_answer("GET", url, response, request.route)
        gate = self.gate
        if (
            gate is not None
            and gate.observe(url, request.ticket, response.status_code, response.headers) is not None
        ):
            response.close()
            raise QuotaClosed(f"GET {urlsplit(url).path}: the Hub's rate-limit window closed")
        return response

    def follow(
        self,
        url: str,
        response: Response,
        token: Credential | None,
        headers: dict[str, str] | None = None,
        on_redirect: Callable[[Headers], None] | None = None,
    ) -> Response:
        """`open`'s rest, from the answer to the GET of `url`: its redirects, then its status."""
        hop = 0
        while (target := redirect_target(url, response, hop, on_redirect)) is not None:
            url, hop = target, hop + 1
            response = self._send_once("GET", url, {**(headers or {}), **self._auth(url, token)})
        return response

    def head(self, url: str, token: Credential | None) -> Headers:
        """HEAD `url` with retries, redirects not followed (a 3xx is an answer); HubHttpError if >= 400."""

        def attempt() -> Headers:
            response = self._send_once("HEAD", url, self._auth(url, token))
            if response.status_code >= 400:
                raise http_status_error(url, response)
            response.close()
            return response.headers

        return self.retry.call(attempt, f"HEAD {urlsplit(url).path}")

    def _auth(self, url: str, token: Credential | None) -> dict[str, str]:
        """The Authorization header: a Hub token for the Hub's own origin only (never a CDN or another
        host), an `Authorizer`'s wherever it says; never in clear text to a host off this machine."""
        if token is None:
            return {}
        if isinstance(token, Token):
            value = f"Bearer {token.value}" if same_origin(url, self.endpoint) else None
        else:
            value = token.authorization(url)
        if value is None:
            return {}
        problem = plain_http_token_problem(url)
        if problem is not None:
            raise AccessError(f"{problem}: use an https:// endpoint")
        return {"authorization": value}

    def get_json(self, url: str, token: Credential | None) -> tuple[Any, Headers]:
        """GET a Hub API URL and parse its JSON, with retries."""

        def attempt() -> tuple[Any, Headers]:
            with contextlib.closing(self.open(url, token)) as response:
                try:
                    return response.json(), response.headers
                except UnusableAnswer as e:
                    raise UnusableAnswer(f"GET {urlsplit(url).path}: {e}") from None

        return self.retry.call(attempt, f"GET {urlsplit(url).path}")


def redirect_target(
    url: str, response: Response, hop: int, on_redirect: Callable[[Headers], None] | None = None
) -> str | None:
    """Where the answer to the GET of `url` (after `hop` redirects) leads, once closed (`on_redirect`
    sees the first redirect's headers); None: it is the answer itself. HubHttpError for a status
    >= 400 or past MAX_REDIRECTS."""
    if not response.is_redirect:
        if response.status_code >= 400:
            raise http_status_error(url, response)
        return None
    location = response.headers.get("location", "")
    response.close()
    if hop == 0 and on_redirect is not None:
        on_redirect(response.headers)
    try:
        target = urljoin(url, location)
        parts = urlsplit(target)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port out of range, a broken IPv6 literal...
        usable = False
    if not usable:
        raise UnusableAnswer(
            f"GET {urlsplit(url).path}: the server redirected to a URL that cannot be used: "
            f"{printable(location[:200])!r}"
        )
    if hop + 1 >= MAX_REDIRECTS:
        raise TooManyRedirects(
            f"GET {urlsplit(url).path}: more than {MAX_REDIRECTS} redirects; last to {target}"
        )
    return target


def _log_answer(method: str, url: str, response: Response, route: Route) -> None:
    """-vv: every request, with its answer and its route (the URL without its query: a CDN's signed
    URL carries its signature there)."""
    if log.isEnabledFor(logging.DEBUG):
        via = f" via {route.label}" if route.proxy else ""
        log.debug(
            "%s %s -> %d %s%s", method, loggable_url(url), response.status_code, response.reason_phrase, via
        )


def http_status_error(
    url: str, response: Response, code_in_body: Callable[[bytes], str | None] | None = None
) -> HubHttpError:
    """The error for an HTTP answer >= 400, through `errors.hub_http_error` (the one translator), with the
    wait a 429 / 503 asked for. (Reads, bounded, and closes the response.) `code_in_body`: the error
    code a protocol states in its body rather than in `X-Error-Code` (a registry's `errors[0].code`)."""
    try:
        body = response.read(ERROR_BODY_LIMIT)
    except (UnusableAnswer, TransportError):
        body = b""
    finally:
        response.close()
    headers = response.headers
    retry_after = retry_after_seconds(headers) if response.status_code in (429, 503) else None
    error = hub_http_error(
        url,
        response.status_code,
        headers.items(),
        body,
        reason=response.reason_phrase,
        retry_after=retry_after,
    )
    if code_in_body is not None:
        error.error_code = code_in_body(body) or error.error_code
    return error


def network_error(exc: BaseException, http: Http, what: str) -> PrefetchError:
    """The typed error (its class decides the exit code) for a network call that failed for good."""
    attempts = getattr(exc, "prefetch_attempts", None)
    gave_up = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}; " if attempts else ""
    if isinstance(exc, HubHttpError):
        return exc.in_context(what, f" ({gave_up}tried {http.describe_routes()})" if attempts else "")
    if isinstance(exc, ProxyRoutesFailed):
        lines = "\n".join(f"  - {route}: {reason}" for route, reason in exc.failures)
        return NetworkError(f"{what}: every proxy failed (endpoint {http.endpoint}):\n{lines}")
    origin = getattr(exc, "origin", "")  # the server the failing request was for: the Hub's, or a CDN's
    return NetworkError(f"{what}: {describe(exc)} ({gave_up}tried {http.describe_routes(origin)})")
