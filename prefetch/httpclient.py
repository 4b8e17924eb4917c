"""A minimal HTTP/1.1 client on sockets: keep-alive connections per route (a proxy, or direct) and origin.

Why not httpx2, which huggingface_hub brings: its parser (h11) copies every body byte three times
in Python and httpcore2 a fourth, and a cold download is CPU-bound on that path. Here a body is read
with one `recv_into` per read straight into the caller's buffer (a reused one, or a small file's
memory): a cold 1 GiB download takes a quarter of the CPU time (docs/benchmarks.md).

What it speaks: GET and HEAD; bodies framed by Content-Length, chunked, or the connection's close;
http and https (the system's trust store, or SSL_CERT_FILE / SSL_CERT_DIR, as huggingface_hub);
http:// proxies, in absolute form for http URLs and through CONNECT tunnels for https ones, with
Basic credentials from the proxy URL. Retries, redirects and failover belong to `prefetch.transfer`.

Network failures are raised as `TransportError`s, so the engine can tell them (retry, or another
proxy) from local ones (a full disk is not retried).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import select
import socket
import ssl
import threading
from email.message import Message
from http.client import HTTPException, parse_headers
from typing import Any, cast
from urllib.parse import unquote, urlsplit

READER_BUFFER = 64 * 1024  # head lines and small reads go through this; larger reads bypass it
MAX_LINE = 64 * 1024  # a longer status, header or chunk-size line is not HTTP we want to parse
DEFAULT_PORTS = {"http": 80, "https": 443}

Headers = Message  # case-insensitive `get` and `in`, as `http.client.parse_headers` returns them


# ---------------------------------------------------------------------------------------------- errors
class TransportError(Exception):
    """The request did not complete over the network: worth a retry, or another proxy."""


class ConnectError(TransportError):
    """No connection: refused, unreachable, no such host, or the TLS handshake failed."""


class ConnectTimeout(ConnectError):
    """The connection (or its TLS handshake, or its proxy tunnel) took longer than the connect timeout."""


class ReadError(TransportError):
    """The connection broke while sending the request or receiving the answer."""


class ReadTimeout(ReadError):
    """The server sent nothing for longer than the read timeout."""


class RemoteProtocolError(TransportError):
    """The peer closed early or sent something that is not HTTP/1.1."""


class ProxyError(TransportError):
    """A proxy refused to open a CONNECT tunnel; `status` is its answer."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class CertificateError(ConnectError):
    """The server's TLS certificate did not verify. Retrying cannot help, so it is not retried."""


# ---------------------------------------------------------------------------------------------- TLS
@functools.cache
def tls_context() -> ssl.SSLContext:
    """The system's trust store; OpenSSL reads SSL_CERT_FILE / SSL_CERT_DIR when set (as huggingface_hub
    does through httpx2). certifi's bundle only where the system has no CA certificates at all."""
    context = ssl.create_default_context()
    if not context.cert_store_stats()["x509_ca"] and not context.get_ca_certs():
        try:
            import certifi
        except ImportError:
            return context
        context.load_verify_locations(certifi.where())
    return context


def _host_header(host: str, port: int, scheme: str) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if DEFAULT_PORTS.get(scheme) == port else f"{name}:{port}"


def _basic_auth(username: str | None, password: str | None) -> str | None:
    if not username:
        return None
    raw = f"{unquote(username)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


# ---------------------------------------------------------------------------------------------- wire
class _Connection:
    """One socket and its buffered reader; every socket failure comes out as a TransportError."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = cast(io.BufferedReader, sock.makefile("rb", buffering=READER_BUFFER))

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError as e:
            raise ReadTimeout(f"timed out sending the request: {e}") from e
        except OSError as e:
            raise ReadError(str(e)) from e

    def readinto1(self, buffer: memoryview) -> int:
        """At most one socket read: what has arrived, up to len(buffer); 0 when the peer closed."""
        try:
            return self.reader.readinto1(buffer)
        except TimeoutError as e:
            raise ReadTimeout(f"no data for {self.sock.gettimeout():.0f}s") from e
        except OSError as e:
            raise ReadError(str(e)) from e

    def readline(self) -> bytes:
        try:
            line = self.reader.readline(MAX_LINE + 1)
        except TimeoutError as e:
            raise ReadTimeout(f"no answer for {self.sock.gettimeout():.0f}s") from e
        except OSError as e:
            raise ReadError(str(e)) from e
        if len(line) > MAX_LINE:
            raise RemoteProtocolError("a line of the answer is too long")
        return line

    def read_head(self) -> tuple[str, int, str, Headers]:
        """Read a status line and headers, skipping interim 1xx answers."""
        while True:
            line = self.readline()
            if not line:
                raise RemoteProtocolError("the server closed the connection without answering")
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise RemoteProtocolError(f"not an HTTP/1.1 answer: {line[:40]!r}")
            try:
                headers = parse_headers(self.reader)  # type: ignore[arg-type]
            except TimeoutError as e:
                raise ReadTimeout("timed out reading the answer's headers") from e
            except OSError as e:
                raise ReadError(str(e)) from e
            except HTTPException as e:
                raise RemoteProtocolError(f"bad headers: {e}") from e
            status = int(parts[1])
            if not 100 <= status < 200 or status == 101:
                return parts[0], status, parts[2] if len(parts) > 2 else "", headers

    def idle_and_open(self) -> bool:
        """Can this kept-alive connection carry another request? (The server may have closed it.)"""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)  # readable while idle: closed by the server, or garbage

    def close(self) -> None:
        for thing in (self.reader, self.sock):
            with contextlib.suppress(OSError):
                thing.close()


class Response:
    """A response whose body is read on demand.

    `close()` hands the connection back for the next request when the body was read to its end and
    the server keeps the connection alive; otherwise the connection is closed.
    """

    def __init__(
        self,
        conn: _Connection,
        release: Any,
        method: str,
        version: str,
        status: int,
        reason: str,
        headers: Headers,
    ) -> None:
        self.status_code, self.reason_phrase, self.headers = status, reason, headers
        self._conn: _Connection | None = conn
        self._release = release
        connection = (headers.get("connection") or "").lower()
        self._keep_alive = version == "HTTP/1.1" and "close" not in connection
        self._chunked = False
        self._remaining: int | None = None  # body bytes still to read; None: until the server closes
        self._chunk_left = 0
        if method == "HEAD" or status in (204, 304):
            self._remaining = 0
        elif "chunked" in (headers.get("transfer-encoding") or "").lower():
            self._chunked = True
        else:
            length = (headers.get("content-length") or "").strip()
            if length.isdigit():
                self._remaining = int(length)
            else:
                self._keep_alive = False
        self._finished = self._remaining == 0
        self._content: bytes | None = None

    @property
    def is_redirect(self) -> bool:
        return self.status_code in (301, 302, 303, 307, 308) and "location" in self.headers

    def readinto(self, buffer: memoryview) -> int:
        """Read up to len(buffer) body bytes into `buffer` with at most one socket read; 0 at the end."""
        conn = self._conn
        if conn is None or self._finished or not len(buffer):
            return 0
        if self._chunked and not self._chunk_left and not self._next_chunk(conn):
            return 0
        want = len(buffer)
        if self._chunked:
            want = min(want, self._chunk_left)
        elif self._remaining is not None:
            want = min(want, self._remaining)
        n = conn.readinto1(buffer[:want])
        if n == 0:
            if self._remaining is None and not self._chunked:  # the close ends a body without a length
                self._finished = True
                return 0
            raise RemoteProtocolError("the server closed the connection before the end of the body")
        if self._chunked:
            self._chunk_left -= n
            if not self._chunk_left and conn.readline() not in (b"\r\n", b"\n"):
                raise RemoteProtocolError("a chunk of the body is not followed by CRLF")
        elif self._remaining is not None:
            self._remaining -= n
            self._finished = not self._remaining
        return n

    def _next_chunk(self, conn: _Connection) -> bool:
        """Read the next chunk's size line; False (and the trailers read) at the last chunk."""
        line = conn.readline()
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise RemoteProtocolError(f"bad chunk size line {line[:20]!r}") from None
        if size:
            self._chunk_left = size
            return True
        while conn.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        self._finished = True
        return False

    def read(self) -> bytes:
        """The whole body (read once, then kept: `json()` after `read()` parses the same bytes)."""
        if self._content is None:
            data = bytearray()
            buffer = memoryview(bytearray(READER_BUFFER))
            while n := self.readinto(buffer):
                data += buffer[:n]
            self._content = bytes(data)
        return self._content

    def json(self) -> Any:
        return json.loads(self.read())

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._finished and self._keep_alive:
            self._release(conn)
        else:
            conn.close()


# ---------------------------------------------------------------------------------------------- pool
class Pool:
    """Keep-alive connections through one route: an http:// proxy URL, or None for direct."""

    def __init__(
        self,
        proxy: str | None,
        *,
        user_agent: str,
        max_idle: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.proxy = urlsplit(proxy) if proxy else None
        if self.proxy is not None and (self.proxy.scheme != "http" or not self.proxy.hostname):
            raise ValueError(
                "only http:// proxies are supported (an https:// origin is still tunnelled over TLS)"
            )
        self._proxy_auth = _basic_auth(self.proxy.username, self.proxy.password) if self.proxy else None
        self.user_agent = user_agent
        self.max_idle = max_idle
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._lock = threading.Lock()

    def request(self, method: str, url: str, headers: dict[str, str]) -> Response:
        """Send one request and read the answer's head; the body is the caller's to read and close."""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        if scheme not in DEFAULT_PORTS or not host:
            raise ConnectError(f"cannot fetch {scheme or '?'}:// URLs")
        port = parts.port or DEFAULT_PORTS[scheme]
        key = (scheme, host, port)
        absolute = self.proxy is not None and scheme == "http"  # plain http goes through the proxy as-is
        target = (
            url.split("#", 1)[0]
            if absolute
            else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        )
        lines = [f"{method} {target} HTTP/1.1", f"host: {_host_header(host, port, scheme)}"]
        lines.append(f"user-agent: {self.user_agent}")
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if absolute and self._proxy_auth:
            lines.append(f"proxy-authorization: {self._proxy_auth}")
        conn = self._checkout(key) or self._connect(scheme, host, port)
        try:
            conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            version, status, reason, head = conn.read_head()
        except BaseException:
            conn.close()
            raise
        return Response(conn, functools.partial(self._checkin, key), method, version, status, reason, head)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _checkout(self, key: tuple[str, str, int]) -> _Connection | None:
        while True:
            with self._lock:
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn = conns.pop()
            if conn.idle_and_open():
                return conn
            conn.close()

    def _checkin(self, key: tuple[str, str, int], conn: _Connection) -> None:
        with self._lock:
            conns = self._idle.setdefault(key, [])
            if len(conns) < self.max_idle:
                conns.append(conn)
                return
        conn.close()

    def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        address = (self.proxy.hostname or "", self.proxy.port or 80) if self.proxy else (host, port)
        try:
            sock = socket.create_connection(address, timeout=self.connect_timeout)
        except TimeoutError as e:
            raise ConnectTimeout(f"connecting to {address[0]}:{address[1]} timed out") from e
        except OSError as e:
            raise ConnectError(str(e)) from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.proxy is not None and scheme == "https":
                self._tunnel(sock, host, port)
            if scheme == "https":
                sock = tls_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(self.read_timeout)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise CertificateError(
                f"the TLS certificate of {host} could not be verified ({e.verify_message}); if a proxy or a "
                "private Hub uses its own certificate authority, point SSL_CERT_FILE at a CA bundle that "
                "includes it"
            ) from e
        except TimeoutError as e:
            sock.close()
            raise ConnectTimeout(f"TLS handshake or proxy tunnel to {host}:{port} timed out") from e
        except (TransportError, OSError) as e:
            sock.close()
            if isinstance(e, TransportError):
                raise
            raise ConnectError(f"TLS handshake with {host}:{port} failed: {e}") from e
        return _Connection(sock)

    def _tunnel(self, sock: socket.socket, host: str, port: int) -> None:
        """Open a CONNECT tunnel through the proxy to host:port (over which TLS then runs)."""
        authority = _host_header(host, port, "")
        lines = [f"CONNECT {authority} HTTP/1.1", f"host: {authority}", f"user-agent: {self.user_agent}"]
        if self._proxy_auth:
            lines.append(f"proxy-authorization: {self._proxy_auth}")
        conn = _Connection(sock)
        try:
            conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            _, status, reason, _ = conn.read_head()
        finally:
            conn.reader.close()  # the socket stays open: TLS takes it over
        if status != 200:
            raise ProxyError(f"the proxy answered CONNECT with {status} {reason}".rstrip(), status)
