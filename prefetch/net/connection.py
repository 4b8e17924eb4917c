"""Keep-alive HTTP/1.1 connections per route (a proxy, or direct) and origin, on `http.client`.

Why not httpx2, which huggingface_hub brings: its parser (h11) copies every body byte three times
in Python and httpcore2 a fourth, and a cold download is CPU-bound on that path. Here a body is read
with one socket read per `readinto`, straight into the caller's buffer (a reused one, or a small
file's memory): a cold 1 GiB download takes a quarter of the CPU time (docs/benchmarks.md).

Over TLS, Python's `ssl` returns one 16 KiB record per read and gives up the interpreter lock at each:
with 32 connections, 32 threads took turns at it once per record. So a read, once its first record
is in, also takes the records that have already arrived, without waiting, with at most `TLS_READERS`
threads doing so at once; the others wait for data in the kernel, wanting no lock (`Response.readinto`).

What it speaks is http.client's: any method, with a request body of bytes or read from a file
(`FileBody`: streamed, never whole in memory); answers framed by Content-Length, chunked, or the
connection's close; http and https (the system's trust store, or SSL_CERT_FILE / SSL_CERT_DIR, as
huggingface_hub); http:// proxies, in absolute form for http URLs and through CONNECT tunnels
(`set_tunnel`) for https ones, with Basic credentials from the proxy URL. Retries, redirects and
failover belong to `prefetch.net.session`.

Network failures are raised as `TransportError`s, so the engine can tell them (retry, or another
proxy) from local ones (a full disk is not retried).
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import re
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, overload
from urllib.parse import quote, unquote, urlsplit

from prefetch import settings
from prefetch.errors import (
    CertificateError,
    ConnectError,
    ConnectTimeout,
    ProxyError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TransportError,
    UnusableAnswer,
)
from prefetch.urls import origin_of

READ_SIZE = 64 * 1024  # `Response.read` collects a whole (small) body in reads of this size
DRAIN_LIMIT = 64 * 1024  # a body left unread up to this size is read at `close`, to keep the connection
DRAIN_SECONDS = 1.0  # ... if it arrives within this time (else the connection is closed instead)
DEFAULT_PORTS = {"http": 80, "https": 443}
FIELD_LINE_LIMIT = 65536  # an answer's header line longer than this is refused (as http.client does)
FIELDS_LIMIT = 100  # ... and so is an answer with more header lines than this
# What may stay as it is in a request target: RFC 3986's reserved and unreserved characters and `%`
# (escapes already made). Anything else (a space or a control character from a server's `Location`,
# non-ASCII) is percent-encoded, never sent raw into the request line.
_TARGET_SAFE = "!$%&'()*+,/:;=?@[]~"
# The whitespace around a field's value (RFC 9110's OWS, and the line's end); not `str.strip`'s, which
# would also take a value's trailing latin-1 byte 0x85 or 0xA0.
_OWS = " \t\r\n"
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # visible ASCII but ':' (a token, more loosely: as email reads one)
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})\b ?(.*)")  # http.client's CONNECT failure

BODY_BLOCK = 1024 * 1024  # a `FileBody` is sent in blocks of this size


@dataclass(frozen=True)
class FileBody:
    """A request body of `length` bytes read from `file` at `offset`: streamed block by block (a
    256 MiB blob is never in memory), from `offset` again at each send (a retry, another proxy).
    Exactly `length` bytes go out, so a file that grew cannot overrun the stated Content-Length;
    one that ends sooner fails the request (ValueError) rather than hang the server."""

    file: IO[bytes]
    offset: int
    length: int

    def blocks(self) -> Iterator[bytes]:
        self.file.seek(self.offset)
        left = self.length
        while left:
            block = self.file.read(min(BODY_BLOCK, left))
            if not block:
                raise ValueError(f"the request body's file ended {left} bytes before its stated length")
            left -= len(block)
            yield block


Body = bytes | FileBody


# ---------------------------------------------------------------------------------------------- TLS
def tls_context() -> ssl.SSLContext:
    """The system's trust store; OpenSSL reads SSL_CERT_FILE / SSL_CERT_DIR when set (as huggingface_hub
    does through httpx2). certifi's bundle only where the system has no CA certificates at all. One per
    HTTP session (made at its first https:// connection: `SessionTls`), so a process's next run sees a
    changed SSL_CERT_FILE."""
    context = ssl.create_default_context()
    if not context.cert_store_stats()["x509_ca"] and not context.get_ca_certs():
        try:
            import certifi
        except ImportError:
            return context
        context.load_verify_locations(certifi.where())
    return context


class SessionTls:
    """A session's TLS context, made at its first https:// connection (`context`): reading the system's
    trust store costs ~30 ms, which a run that speaks only plain HTTP (an in-cluster mirror, a registry
    on the node) need not pay."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = tls_context()
            return self._context


def basic_auth(username: str | None, password: str | None) -> str | None:
    """The Proxy-Authorization value for the (percent-encoded) credentials of a proxy URL."""
    if not username:
        return None
    raw = f"{unquote(username)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


# Threads that take arrived TLS records at once (per pool): over HTTPS, 4 × 256 MiB took 0.80 × the time
# and 0.81 × the CPU of reading record by record with 4 such threads, 0.93 × that again with 2, and
# nearly as long as before with 8 (docs/benchmarks.md, seventh round). Decryption runs outside the
# interpreter lock, so two overlap on two cores.
TLS_READERS = 2


# ---------------------------------------------------------------------------------------------- wire
class _OneReadPerCall:
    """An answer's buffered socket reader whose `readinto` makes at most one socket read.

    `HTTPResponse.readinto` asks its reader to fill the whole buffer: a trickling server's bytes
    would wait until a megabyte arrived (stalling progress, resume state and cancellation), and be
    lost when the read then times out. `readinto1` returns what has arrived. Everything else (status
    line, headers, chunk framing) reads through the wrapped reader unchanged.
    """

    def __init__(self, reader: io.BufferedReader) -> None:
        self._reader = reader
        self.readline = reader.readline  # the status line and each header (no `__getattr__` per line)

    def readinto(self, buffer: memoryview) -> int:
        return self._reader.readinto1(buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class Headers:
    """An answer's header fields: by case-insensitive name, the first one's value (`get`, `in`, `[]`:
    what http.client and email.message answer) or all of them (`get_all`), and in order (`items`,
    `keys`, iteration: by name, as a Mapping is read).

    Read without the `email` package (`read_fields`): http.client's parser and `Message.get`'s scans
    cost ~25 µs per answer, a tenth of a small file's CPU when thousands of them are fetched."""

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = list(fields)
        first: dict[str, str] = {}
        for name, value in self._fields:
            first.setdefault(name.lower(), value)
        self._first = first

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        key = name.lower()
        return [value for field, value in self._fields if field.lower() == key] or default

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def keys(self) -> list[str]:
        return [name for name, _ in self._fields]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        """The names only: an answer may carry a token (the Xet token route's `X-Xet-Access-Token`)."""
        return f"Headers({self.keys()!r})"


def read_fields(fp: Any) -> Headers:
    """The header fields after a status line, up to the empty line: `Name: value`, the value without
    the whitespace around it; a line folded onto the next (obsolete, RFC 9112 5.2) joined with a space.
    A line that is not a field ends them, as in http.client (whose email parser makes the rest a body).
    Lines are bounded in length and number (`http.client.LineTooLong`, `HTTPException`)."""
    fields: list[tuple[str, str]] = []
    ended = False
    for _ in range(FIELDS_LIMIT + 1):
        line = fp.readline(FIELD_LINE_LIMIT + 1)
        if len(line) > FIELD_LINE_LIMIT:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return Headers(fields)
        if ended:
            continue
        text = line.decode("iso-8859-1")
        if text[0] in " \t" and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {text.strip(_OWS)}".strip(_OWS))
            continue
        name, colon, value = text.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            ended = True
            continue
        fields.append((name, value.strip(_OWS)))
    raise http.client.HTTPException(f"got more than {FIELDS_LIMIT} headers")


class _Answer(http.client.HTTPResponse):
    """http.client's response, reading its body one socket read per `readinto`, its fields by
    `read_fields`."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = _OneReadPerCall(self.fp)  # type: ignore[assignment]

    def begin(self) -> None:
        """http.client's `begin` (status line, then framing: chunked, Content-Length, or the
        connection's close), with the fields read by `read_fields`."""
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            read_fields(self.fp)  # an interim 100 answer's fields
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        headers = read_fields(self.fp)
        self.headers = self.msg = headers
        self.chunked = (headers.get("transfer-encoding") or "").lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        length = headers.get("content-length")
        self.length = (
            int(length) if length and length.isascii() and length.isdigit() and not self.chunked else None
        )
        if (
            status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
            or status < 200
            or self._method == "HEAD"
        ):
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # read until the connection closes

    def _safe_readinto(self, b: memoryview) -> int:
        """A chunked body's reads: http.client wants the part of a chunk it asks for in full (a short
        read is its IncompleteRead), so they go to the buffered reader, which waits for all of it."""
        n: int = self.fp._reader.readinto(b)  # type: ignore[attr-defined]
        if n < len(b):
            raise http.client.IncompleteRead(bytes(b[:n]), len(b) - n)
        return n


class _HTTPConnection(http.client.HTTPConnection):
    response_class = _Answer


class _HTTPSConnection(http.client.HTTPSConnection):
    response_class = _Answer


Connection = http.client.HTTPConnection


def _is_idle_and_open(conn: Connection) -> bool:
    """Can this kept-alive connection carry another request? (The server may have closed it.)"""
    sock = conn.sock
    if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)  # readable while idle: closed by the server, or garbage


def _caused_by(e: BaseException, kind: type[BaseException]) -> bool:
    """Is `kind` in the chain of exceptions `e` was raised while handling? (http.client re-raises.)"""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__context__
    return False


def _body_error(e: Exception, timeout: float) -> TransportError:
    if isinstance(e, http.client.IncompleteRead) and _caused_by(e, ValueError):  # int(line, 16) failed
        return RemoteProtocolError("bad chunk size line (or the connection closed before one)")
    if isinstance(e, http.client.IncompleteRead):
        return RemoteProtocolError("the server closed the connection before the end of the body")
    if isinstance(e, http.client.HTTPException):
        return RemoteProtocolError(f"bad body framing: {e}")
    if isinstance(e, TimeoutError):
        return ReadTimeout(f"no data for {timeout:.0f}s")
    return ReadError(str(e))


class Response:
    """A response whose body is read on demand.

    `close()` hands the connection back for the next request when the body was read to its end and
    the server keeps the connection alive; otherwise the connection is closed.
    """

    def __init__(
        self,
        conn: Connection,
        answer: http.client.HTTPResponse,
        release: Callable[[Connection], None],
        read_timeout: float,
        url: str,
        tls_readers: threading.Semaphore | None = None,
    ) -> None:
        self.status_code, self.reason_phrase = answer.status, answer.reason
        self.headers: Headers = answer.headers  # type: ignore[assignment]  # (an `_Answer`'s)
        self.url = url  # what was asked for (after `Http.open`'s redirects: where the body comes from)
        self._conn: Connection | None = conn
        self._answer = answer
        self._release = release
        self._read_timeout = read_timeout
        # Decided once, not per read: plain HTTP reads never take this path.
        self._tls_sock = (
            conn.sock if tls_readers is not None and isinstance(conn.sock, ssl.SSLSocket) else None
        )
        self._tls_readers = tls_readers
        self._failed: Exception | None = None  # while taking arrived records: raised at the next read
        self._broken = False
        self._started = False  # the caller read some of the body: what it left is not drained
        self._content: bytes | None = None

    @property
    def is_redirect(self) -> bool:
        return self.status_code in (301, 302, 303, 307, 308) and "location" in self.headers

    def readinto(self, buffer: memoryview) -> int:
        """Read up to len(buffer) body bytes into `buffer`, with one socket read for a body of known
        length (over TLS, and the records that have arrived meanwhile); 0 at the end. A body cut short
        raises RemoteProtocolError after what arrived."""
        if not len(buffer):
            return 0
        self._started = True
        answer = self._answer
        try:
            if self._failed is not None:
                failed, self._failed = self._failed, None
                raise failed
            n = answer.readinto(buffer)
            if n and n < len(buffer) and answer.length and self._tls_sock is not None:
                n += self._take_arrived(self._tls_sock, buffer[n:])
        except (OSError, http.client.HTTPException) as e:
            self._broken = True
            error = _body_error(e, self._read_timeout)
            error.origin = origin_of(self.url)
            raise error from e
        if not n and answer.length:  # http.client ends a body cut short quietly; its length tells
            self._broken = True
            cut = RemoteProtocolError("the server closed the connection before the end of the body")
            cut.origin = origin_of(self.url)
            raise cut
        return n

    def _take_arrived(self, sock: ssl.SSLSocket, buffer: memoryview) -> int:
        """Over TLS, the body's records already arrived, without waiting for more (the socket is
        non-blocking meanwhile), by at most `TLS_READERS` threads at once. A failure here is raised
        by the next read, after the bytes taken before it were returned."""
        assert self._tls_readers is not None  # (set together with the socket)
        n = 0
        with self._tls_readers:
            sock.settimeout(0)
            try:
                while n < len(buffer) and self._answer.length:
                    m = self._answer.readinto(buffer[n:])
                    if not m:
                        break
                    n += m
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass  # nothing more has arrived
            except (OSError, http.client.HTTPException) as e:
                self._failed = e
            finally:
                sock.settimeout(self._read_timeout)
        return n

    def read(self, limit: int = settings.MAX_JSON_BYTES) -> bytes:
        """The whole body, up to `limit` bytes (more: UnusableAnswer, without reading it all); read once,
        then kept: `json()` after `read()` parses the same bytes."""
        if self._content is None:
            if (self._answer.length or 0) > limit:
                raise UnusableAnswer(f"refused an answer of {self._answer.length} bytes (the cap is {limit})")
            data = bytearray()
            buffer = memoryview(bytearray(READ_SIZE))
            while n := self.readinto(buffer):
                data += buffer[:n]
                if len(data) > limit:
                    raise UnusableAnswer(f"refused an answer of more than {limit} bytes")
            self._content = bytes(data)
        return self._content

    def json(self) -> Any:
        """The body as JSON; UnusableAnswer when it is not JSON, too big, or nested too deep to parse."""
        try:
            return json.loads(self.read())
        except RecursionError:
            raise UnusableAnswer("refused a JSON answer nested too deeply") from None
        except ValueError as e:  # also UnicodeDecodeError
            raise UnusableAnswer(f"the answer is not JSON ({str(e)[:80]})") from None

    def close(self) -> None:
        """Hand the connection back, after reading what is left of a small body the caller did not read
        (a redirect's, a HEAD's): closing instead would cost a new connection per redirect, one per LFS
        file. A body the caller started and left (a failed attempt: too slow, bytes that cannot be the
        file) is not read to its end: a server drip-feeding it would hold the caller for as long."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        answer = self._answer
        if (
            not (answer.isclosed() or answer.will_close or self._broken or self._started)
            and (answer.length or 0) <= DRAIN_LIMIT
        ):
            self._drain(conn)
        if answer.isclosed() and not answer.will_close and not self._broken:
            self._release(conn)
        else:
            answer.close()
            conn.close()

    def _drain(self, conn: Connection) -> None:
        """Read the rest of a small unread body, within DRAIN_SECONDS (else the connection is broken)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        buffer = memoryview(bytearray(READ_SIZE))
        try:
            if conn.sock is not None:
                conn.sock.settimeout(DRAIN_SECONDS)
            while self._answer.readinto(buffer):
                if time.monotonic() > deadline:
                    self._broken = True
                    return
        except (OSError, http.client.HTTPException):
            self._broken = True
        finally:
            if conn.sock is not None and not self._broken:
                conn.sock.settimeout(self._read_timeout)


class Sent:
    """A request on its way (`Pool.send`): its answer's head is read by `answer`, or the connection
    closed by `abandon`."""

    def __init__(
        self,
        conn: Connection,
        url: str,
        release: Callable[[Connection], None],
        read_timeout: float,
        tls_readers: threading.Semaphore,
    ) -> None:
        self.url = url
        self._conn, self._release = conn, release
        self._read_timeout, self._tls_readers = read_timeout, tls_readers

    def answer(self) -> Response:
        conn = self._conn
        try:
            answer = conn.getresponse()
        except BaseException as e:
            conn.close()
            error = _answer_error(e, self._read_timeout)
            if error is e:
                raise
            raise error from e
        return Response(conn, answer, self._release, self._read_timeout, self.url, self._tls_readers)

    def abandon(self) -> None:
        self._conn.close()


def _answer_error(e: BaseException, timeout: float) -> BaseException:
    """A failure to read an answer's head, as the `TransportError` that says what it was."""
    if isinstance(e, http.client.RemoteDisconnected):
        return RemoteProtocolError("the server closed the connection without answering")
    if isinstance(e, http.client.BadStatusLine):
        return RemoteProtocolError(f"not an HTTP/1.1 answer: {str(e)[:40]!r}")
    if isinstance(e, http.client.HTTPException):
        return RemoteProtocolError(f"bad headers: {e}")
    if isinstance(e, TimeoutError):
        return ReadTimeout(f"no answer for {timeout:.0f}s")
    if isinstance(e, OSError):
        return ReadError(str(e))
    return e


# ---------------------------------------------------------------------------------------------- pool
class Pool:
    """Keep-alive connections through one route: an http:// proxy URL, or None for direct."""

    def __init__(
        self,
        tls: Callable[[], ssl.SSLContext],
        proxy: str | None,
        *,
        user_agent: str,
        max_idle: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.tls = tls
        self.proxy = urlsplit(proxy) if proxy else None
        if self.proxy is not None and (self.proxy.scheme != "http" or not self.proxy.hostname):
            raise ValueError(
                "only http:// proxies are supported (an https:// origin is still tunnelled over TLS)"
            )
        self._proxy_auth = basic_auth(self.proxy.username, self.proxy.password) if self.proxy else None
        self.user_agent = user_agent
        self.max_idle = max_idle
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._lock = threading.Lock()
        self._tls_readers = threading.Semaphore(TLS_READERS)

    def request(self, method: str, url: str, headers: dict[str, str], body: Body | None = None) -> Response:
        """Send one request (with `body`, if any) and read the answer's head; the answer's body is the
        caller's to read and close."""
        sent = self.send(method, url, headers, body=body)
        assert sent is not None  # (it connects)
        return sent.answer()

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        connect: bool = True,
        body: Body | None = None,
    ) -> Sent | None:
        """Send one request without waiting for its answer (`Sent.answer` reads its head later): one
        thread may have several in flight, each on a connection of its own. `connect=False`: only on
        a kept-alive connection (None if there is none), so that the caller never waits for a
        connection to be made."""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        if scheme not in DEFAULT_PORTS or not host:
            raise ConnectError(f"cannot fetch {scheme or '?'}:// URLs")
        port = parts.port or DEFAULT_PORTS[scheme]
        key = (scheme, host, port)
        absolute = self.proxy is not None and scheme == "http"  # plain http goes through the proxy as-is
        target = quote(
            url.split("#", 1)[0]
            if absolute
            else (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            safe=_TARGET_SAFE,
        )
        fields = {"user-agent": self.user_agent, **headers}
        data: bytes | Iterator[bytes] | None = None
        if body is not None:  # Content-Length always: http.client would frame a stream as chunked
            fields["content-length"] = str(len(body) if isinstance(body, bytes) else body.length)
            data = body if isinstance(body, bytes) else body.blocks()
        if absolute and self._proxy_auth:
            fields["proxy-authorization"] = self._proxy_auth
        conn = self._checkout(key)
        if conn is None:
            if not connect:
                return None
            conn = self._connect(scheme, host, port)
        try:
            conn.request(method, target, body=data, headers=fields)
        except BaseException as e:
            conn.close()
            if isinstance(e, TimeoutError):
                raise ReadTimeout(f"timed out sending the request: {e}") from e
            if isinstance(e, OSError):
                raise ReadError(str(e)) from e
            raise
        return Sent(conn, url, functools.partial(self._checkin, key), self.read_timeout, self._tls_readers)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _checkout(self, key: tuple[str, str, int]) -> Connection | None:
        while True:
            with self._lock:
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn = conns.pop()
            if _is_idle_and_open(conn):
                return conn
            conn.close()

    def _checkin(self, key: tuple[str, str, int], conn: Connection) -> None:
        with self._lock:
            conns = self._idle.setdefault(key, [])
            if len(conns) < self.max_idle:
                conns.append(conn)
                return
        conn.close()

    def _new_connection(self, scheme: str, host: str, port: int) -> Connection:
        """Not connected yet: to the origin, or to the proxy (with a CONNECT tunnel for https)."""
        address = (host, port) if self.proxy is None else (self.proxy.hostname or "", self.proxy.port or 80)
        if scheme == "http":
            return _HTTPConnection(*address, timeout=self.connect_timeout)
        conn = _HTTPSConnection(*address, timeout=self.connect_timeout, context=self.tls())
        if self.proxy is not None:
            tunnel = {"User-Agent": self.user_agent}
            if self._proxy_auth:
                tunnel["Proxy-Authorization"] = self._proxy_auth
            conn.set_tunnel(host, port, headers=tunnel)
        return conn

    def _connect(self, scheme: str, host: str, port: int) -> Connection:
        conn = self._new_connection(scheme, host, port)
        try:
            conn.connect()  # TCP, then the proxy tunnel and the TLS handshake: all within the connect timeout
            assert conn.sock is not None
            conn.sock.settimeout(self.read_timeout)
        except ssl.SSLCertVerificationError as e:
            conn.close()
            raise CertificateError(
                f"the TLS certificate of {host} could not be verified ({e.verify_message}); if a proxy or a "
                "private Hub uses its own certificate authority, point SSL_CERT_FILE at a CA bundle that "
                "includes it"
            ) from e
        except TimeoutError as e:
            conn.close()
            raise ConnectTimeout(
                f"connecting to {conn.host}:{conn.port} (for {host}:{port}) timed out"
            ) from e
        except http.client.RemoteDisconnected as e:
            conn.close()
            raise RemoteProtocolError("the proxy closed the connection without answering CONNECT") from e
        except http.client.HTTPException as e:
            conn.close()
            raise RemoteProtocolError(f"bad answer to CONNECT: {e}") from e
        except ssl.SSLError as e:
            conn.close()
            raise ConnectError(f"TLS handshake with {host}:{port} failed: {e}") from e
        except OSError as e:
            conn.close()
            refused = _TUNNEL_REFUSED.match(str(e))
            if refused:
                status, reason = int(refused.group(1)), refused.group(2)
                raise ProxyError(f"the proxy answered CONNECT with {status} {reason}".rstrip(), status) from e
            raise ConnectError(str(e)) from e
        return conn
