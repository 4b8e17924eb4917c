"""Shared HTTP/1.1 plumbing for the Hub emulator and the test proxy.

Why not plain ``http.server``: we need (a) loopback-only binding, (b) daemon threads that never keep pytest
alive, (c) a way to cut every open keep-alive connection when a server stops, (d) a self-destruct timer, and
(e) a fast body writer (1 MiB ``sendall`` slices from a memoryview) with optional throttling, corruption and
TCP reset injection, and (f) optional TLS: the accept loop only accepts, each handler thread does its own
handshake (a slow or hostile client never blocks `accept`), and the wrapped socket replaces the raw one in the
set of live connections so `close_all_connections` and resets keep working over TLS.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
FAST_SLICE = 1 << 20  # 1 MiB: large enough to approach socket speed on loopback
THROTTLE_SLICE = 64 << 10  # 64 KiB: fine-grained enough for smooth bandwidth caps
SMALL_BODY = 64 << 10  # bodies up to this size go out in the same sendall as the headers


class SharedLink:
    """A link of `rate` bytes/s that every connection shares (an uplink, not a per-connection cap):
    each slice sent waits for its turn on it, so more connections get no more bytes through."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at = 0.0
        self._lock = threading.Lock()

    def turn(self, nbytes: int) -> float:
        """The monotonic time at which a slice of `nbytes` may go (the link is busy until then)."""
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + nbytes / self.rate
            return start


HANDSHAKE_TIMEOUT = 10.0  # seconds a client gets to finish the TLS handshake


def reason_phrase(status: int) -> str:
    """Standard reason phrase, so clients that print it see something sensible."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def build_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """Serialize a status line and header block (we write it ourselves to control every byte and syscall)."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def http_date() -> str:
    """RFC 7231 date for the Date header."""
    return email.utils.formatdate(usegmt=True)


@dataclass(frozen=True)
class HandshakeRecord:
    """One TLS handshake attempt seen by a server (`error` is None when it succeeded)."""

    origin: str
    client_port: int
    error: str | None
    time: float

    @property
    def ok(self) -> bool:
        return self.error is None


class LoopbackServer(ThreadingHTTPServer):
    """Threading HTTP server bound to 127.0.0.1 that tracks live connections so `stop` can cut them.

    With `ssl_context` it speaks HTTPS: `get_request` still only accepts (the handshake happens in the handler
    thread, see `FastHandler.setup` and `start_tls`), and every handshake is recorded in `handshakes`.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512  # benchmarks open many connections at once; a backlog of 5 drops SYNs

    def __init__(
        self,
        handler_cls: type[BaseHTTPRequestHandler],
        port: int = 0,
        owner: Any = None,
        origin: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.owner = owner
        self.origin = origin
        self.ssl_context = ssl_context
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.handshakes: list[HandshakeRecord] = []
        self._conns: set[socket.socket] = set()
        self._tls: dict[socket.socket, ssl.SSLSocket] = {}  # raw accepted socket -> its TLS wrapper
        self._conns_lock = threading.Lock()
        self.stopping = threading.Event()  # wakes throttled writers so stop() is immediate
        super().__init__((LOOPBACK, port), handler_cls)

    def server_bind(self) -> None:
        """Bind without HTTPServer's getfqdn() call, which can stall for seconds when DNS is unreachable."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept, disable Nagle (small responses must not wait for delayed ACKs) and remember the socket."""
        sock, addr = self.socket.accept()
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conns_lock:
            self._conns.add(sock)
        return sock, addr

    def start_tls(self, sock: socket.socket, client_address: Any) -> ssl.SSLSocket:
        """Wrap an accepted socket and run the server-side handshake (called from the handler thread).

        `wrap_socket` detaches `sock` (its fd now belongs to the wrapper), so the wrapper takes its place among
        the live connections: otherwise `close_all_connections` would shut down a dead object.
        """
        assert self.ssl_context is not None
        with self._conns_lock:
            if sock not in self._conns:  # close_all_connections already cut it: do not resurrect it
                raise ConnectionAbortedError("server stopping")
            tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            self._conns.discard(sock)
            self._conns.add(tls)
            self._tls[sock] = tls
        port = int(client_address[1]) if isinstance(client_address, tuple) else 0
        tls.settimeout(self.handshake_timeout)
        try:
            tls.do_handshake()
        except (OSError, ValueError) as exc:
            self._note_handshake(port, f"{type(exc).__name__}: {exc}")
            raise
        self._note_handshake(port, None)
        return tls

    def _note_handshake(self, port: int, error: str | None) -> None:
        with self._conns_lock:
            self.handshakes.append(HandshakeRecord(self.origin, port, error, time.time()))

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection (and its TLS wrapper) before the stock close logic runs."""
        with self._conns_lock:
            self._conns.discard(request)
            tls = self._tls.pop(request, None)
            if tls is not None:
                self._conns.discard(tls)
        if tls is not None:
            super().shutdown_request(tls)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        """Wake every handler blocked on a keep-alive read; each handler thread then closes its own socket."""
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for sock in conns:
            with contextlib.suppress(OSError):
                # The plain socket method, also for TLS sockets: SSLSocket.shutdown would drop the SSL state
                # under the feet of the handler thread still reading from it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client disconnects are routine in fault tests; stay quiet about them."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)


class ServerRunner:
    """Runs one LoopbackServer in a daemon thread with a self-stop safety timer."""

    def __init__(self, server: LoopbackServer, max_lifetime: float, name: str) -> None:
        self.server = server
        self._name = name
        self._max_lifetime = max_lifetime
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self, on_expire: Callable[[], None] | None = None) -> None:
        """Serve in the background; `on_expire` (default: stop this server) fires after max_lifetime."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name=self._name, daemon=True
        )
        self._thread.start()
        if self._max_lifetime and self._max_lifetime > 0:
            self._timer = threading.Timer(self._max_lifetime, on_expire or self.stop)
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        """Idempotent: stop accepting, close the listener and cut live connections."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if self._thread is not None and self._thread.is_alive():
            self.server.shutdown()  # only safe when serve_forever is running, else it blocks forever
        self.server.stopping.set()
        self.server.server_close()
        self.server.close_all_connections()


class FastHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler base with a zero-copy body writer and fault helpers."""

    protocol_version = "HTTP/1.1"
    server_version = "hubemu/1.0"
    timeout = 300  # idle keep-alive connections eventually free their thread

    def setup(self) -> None:
        """On a TLS server, handshake here, in this connection's own thread, before the stock setup."""
        server = self.server
        if isinstance(server, LoopbackServer) and server.ssl_context is not None:
            self.request = server.start_tls(self.request, self.client_address)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging (it would dominate benchmark time and test output)."""

    def read_request_body(self) -> bytes:
        """Consume the request body so the next keep-alive request parses cleanly."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.connection.sendall(data)

    def write_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: memoryview,
        *,
        send_body: bool = True,
        rate: float | None = None,
        corrupt: bool = False,
        link: SharedLink | None = None,
        limit: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Send headers then (part of) the body; returns body bytes handed to the kernel.

        `rate` throttles in slices of 64 KiB (less at slow rates), `link` paces them through a link shared
        with the other connections, `corrupt` flips the byte in the middle of
        what is sent, `limit` truncates the body (the caller then aborts the connection). `on_progress` is told
        about each slice *before* it is sent, so counters are already up to date when the client sees the last
        byte.
        """
        head = build_head(status, headers)
        n = len(body) if send_body else 0
        if limit is not None:
            n = min(n, max(limit, 0))
        if n == 0:
            self.send_all(head)
            return 0
        if n <= SMALL_BODY and not rate and not corrupt and link is None:
            if on_progress:
                on_progress(n)
            try:
                self.send_all(head + body[:n].tobytes())
            except OSError:
                if on_progress:
                    on_progress(-n)
                raise
            return n
        self.send_all(head)
        corrupt_at = n // 2 if corrupt else -1
        # a slow rate sends a tenth of a second's worth at a time: a drip-feed, not 64 KiB bursts
        step = max(1, min(THROTTLE_SLICE, int(rate / 10))) if rate else THROTTLE_SLICE if link else FAST_SLICE
        pos = 0
        t0 = time.monotonic()
        while pos < n:
            end = min(pos + step, n)
            chunk: bytes | bytearray | memoryview = body[pos:end]
            if pos <= corrupt_at < end:
                patched = bytearray(chunk)
                patched[corrupt_at - pos] ^= 0xFF
                chunk = patched
            if link is not None:  # the slice waits for its turn on the shared link, then goes
                self._sleep_until(link.turn(end - pos))
            if on_progress:
                on_progress(end - pos)
            try:
                self.send_all(chunk)
            except OSError:
                if on_progress:
                    on_progress(-(end - pos))
                raise
            pos = end
            if rate:
                self._sleep_until(t0 + pos / rate)
        return pos

    def _sleep_until(self, due: float) -> None:
        """Wait until the monotonic time `due`; a server that is stopping aborts the answer."""
        delay = due - time.monotonic()
        stopping: threading.Event | None = getattr(self.server, "stopping", None)
        if delay > 0 and stopping is not None and stopping.wait(delay):
            raise ConnectionAbortedError("server stopping")
        if delay > 0 and stopping is None:
            time.sleep(delay)

    def abort_connection(self) -> None:
        """Close with SO_LINGER 0 so the peer gets a TCP RST (a 'connection reset by peer')."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):  # the makefile() reader holds a ref that would delay the close
            self.rfile.close()
        with contextlib.suppress(OSError):
            sock.close()
