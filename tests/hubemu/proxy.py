"""A small HTTP forward proxy for tests: relays absolute-form requests and CONNECT tunnels to loopback.

Why: prefetch must honour HTTP(S)_PROXY, authenticate to proxies and fail over or report clearly when a proxy
misbehaves (407, 502/503/504, resets, nothing listening). Each of those behaviours is a runtime-switchable
`mode`. The proxy only ever connects onward to 127.0.0.1/localhost, so tests can never leak to the network.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading
from typing import Any
from urllib.parse import quote, urlsplit

from ._httpbase import FastHandler, LoopbackServer, ServerRunner, build_head

MODES = ("ok", "refuse", "407", "502", "503", "504", "reset")
VIA = "1.1 prefetch-test-proxy"
PROXY_STATUS = "prefetch-test-proxy; error=destination_unavailable"
ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
RELAY_CHUNK = 1 << 20


class _ProxyHandler(FastHandler):
    server: LoopbackServer

    def setup(self) -> None:
        super().setup()
        self._upstreams: dict[tuple[str, int], http.client.HTTPConnection] = {}

    def finish(self) -> None:
        for conn in self._upstreams.values():
            conn.close()
        self._upstreams.clear()
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        proxy: ForwardProxy = self.server.owner
        if proxy.mode == "reset":  # accept, then reset before reading anything
            proxy._log("", "", 0)
            self.abort_connection()
            return
        super().handle()

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_CONNECT = do_GET

    # ------------------------------------------------------------------------------------------------
    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        headers = [*headers, ("Content-Length", str(len(body)))]
        if self.close_connection:
            headers.append(("Connection", "close"))
        self.send_all(build_head(status, headers) + (b"" if self.command == "HEAD" else body))

    def _html_error(self, status: int, extra: list[tuple[str, str]] | None = None) -> None:
        from ._httpbase import reason_phrase

        body = (
            f"<html><head><title>{status} {reason_phrase(status)}</title></head><body>"
            f"<h1>{status} {reason_phrase(status)}</h1><p>prefetch-test-proxy</p></body></html>"
        ).encode()
        self._reply(status, [("Content-Type", "text/html; charset=utf-8"), *(extra or [])], body)

    def _authorized(self, proxy: ForwardProxy) -> bool:
        if proxy.credentials is None:
            return True
        value = self.headers.get("Proxy-Authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token.strip()).decode("utf-8").partition(":")
        except ValueError:
            return False
        return (user, password) == proxy.credentials

    def _dispatch(self) -> None:
        proxy: ForwardProxy = self.server.owner
        method, target = self.command, self.path
        mode = proxy.mode
        if mode == "reset":
            proxy._log(method, target, 0)
            self.abort_connection()
            return
        if method != "CONNECT":
            body = self.read_request_body()
        if mode == "407" or (mode == "ok" and not self._authorized(proxy)):
            proxy._log(method, target, 407)
            self._html_error(407, [("Proxy-Authenticate", 'Basic realm="test"')])
            return
        if mode in ("502", "503", "504"):
            proxy._log(method, target, int(mode))
            self._html_error(int(mode), [("Proxy-Status", PROXY_STATUS)])
            return
        if method == "CONNECT":
            self._tunnel(proxy, target)
        else:
            self._forward(proxy, method, target, body)

    # ------------------------------------------------------------------------------------------ CONNECT
    def _tunnel(self, proxy: ForwardProxy, target: str) -> None:
        host, _, port_s = target.rpartition(":")
        host = host.strip("[]")
        if host.lower() not in ALLOWED_HOSTS or not port_s.isdigit():
            proxy._log("CONNECT", target, 403)
            self._html_error(403)
            return
        try:
            upstream = socket.create_connection((host, int(port_s)), timeout=10)
        except OSError:
            proxy._log("CONNECT", target, 502)
            self._html_error(502, [("Proxy-Status", PROXY_STATUS)])
            return
        upstream.settimeout(None)
        proxy._log("CONNECT", target, 200)
        self.send_all(build_head(200, [("Via", VIA)]).replace(b"200 OK", b"200 Connection established", 1))
        self.close_connection = True

        def client_to_upstream() -> None:
            try:
                while True:
                    data = self.rfile.read1(RELAY_CHUNK)  # read1 also drains bytes buffered after CONNECT
                    if not data:
                        break
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)

        pump = threading.Thread(target=client_to_upstream, daemon=True, name="proxy-tunnel")
        pump.start()
        try:
            buf = bytearray(RELAY_CHUNK)
            view = memoryview(buf)
            while True:
                n = upstream.recv_into(view)
                if not n:
                    break
                self.send_all(view[:n])
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
            pump.join(timeout=5)
            upstream.close()

    # ------------------------------------------------------------------------------------ absolute-form
    def _upstream(self, host: str, port: int, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        key = (host, port)
        conn = self._upstreams.get(key)
        if conn is not None and not fresh:
            return conn, True
        if conn is not None:
            conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=300, blocksize=RELAY_CHUNK)
        self._upstreams[key] = conn
        return conn, False

    def _forward(self, proxy: ForwardProxy, method: str, target: str, body: bytes) -> None:
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            proxy._log(method, target, 400)
            self._html_error(400)
            return
        host, port = url.hostname, url.port or 80
        if host.lower() not in ALLOWED_HOSTS:
            proxy._log(method, target, 403)
            self._html_error(403)
            return
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        drop = HOP_BY_HOP | {h.strip().lower() for h in (self.headers.get("Connection") or "").split(",")}
        drop |= {"content-length"}
        fwd = [(k, v) for k, v in self.headers.items() if k.lower() not in drop]
        if not any(k.lower() == "host" for k, _ in fwd):
            fwd.append(("Host", url.netloc.rpartition("@")[2]))
        if body or self.headers.get("Content-Length") is not None:
            fwd.append(("Content-Length", str(len(body))))
        resp: http.client.HTTPResponse | None = None
        for attempt in range(2):
            conn, reused = self._upstream(host, port, fresh=attempt > 0)
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in fwd:
                    conn.putheader(k, v)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused and attempt == 0:
                    continue  # stale keep-alive connection to the origin: retry once on a fresh one
                proxy._log(method, target, 502)
                self._html_error(502, [("Proxy-Status", PROXY_STATUS)])
                return
        assert resp is not None
        self._relay(proxy, method, target, resp, (host, port))

    def _relay(
        self,
        proxy: ForwardProxy,
        method: str,
        target: str,
        resp: http.client.HTTPResponse,
        key: tuple[str, int],
    ) -> None:
        status = resp.status
        proxy._log(method, target, status)
        drop = HOP_BY_HOP | {h.strip().lower() for h in (resp.getheader("Connection") or "").split(",")}
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in drop]
        headers.append(("Via", VIA))
        has_body = method != "HEAD" and status not in (204, 304) and status >= 200
        chunked = has_body and bool(resp.chunked)
        if chunked:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Transfer-Encoding", "chunked"))
        elif has_body and resp.length is None:
            self.close_connection = True  # body delimited by connection close: we must do the same
        if self.close_connection:
            headers.append(("Connection", "close"))
        try:
            self.send_all(build_head(status, headers))
            if has_body:
                buf = bytearray(RELAY_CHUNK)
                view = memoryview(buf)
                while True:
                    n = resp.readinto(view)
                    if not n:
                        break
                    if chunked:
                        self.send_all(b"%x\r\n" % n + view[:n].tobytes() + b"\r\n")
                    else:
                        self.send_all(view[:n])
                if chunked:
                    self.send_all(b"0\r\n\r\n")
                if resp.length:  # origin closed before sending the whole body: propagate as a reset
                    raise ConnectionResetError("origin truncated the response")
        except (OSError, http.client.HTTPException):
            self._upstreams.pop(key, None)
            resp.close()
            self.abort_connection()
            return
        if not resp.isclosed():
            resp.read()  # body-less (HEAD/304...): mark it done so the upstream connection can be reused
        if resp.will_close:
            conn = self._upstreams.pop(key, None)
            if conn is not None:
                conn.close()


class ForwardProxy:
    """Loopback-only forward proxy whose failure `mode` can be switched at runtime."""

    def __init__(
        self,
        mode: str = "ok",
        credentials: tuple[str, str] | None = None,
        max_lifetime: float = 900.0,
        *,
        port: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.credentials = credentials
        self.max_lifetime = max_lifetime
        self._mode = mode
        self._port = port
        self._runner: ServerRunner | None = None
        self._timer: threading.Timer | None = None
        self._started = False
        self._stopped = False
        self._lock = threading.RLock()
        self._log_lock = threading.Lock()
        self._requests: list[tuple[str, str, int]] = []

    # --------------------------------------------------------------------------------------- lifecycle
    def _listen(self) -> None:
        server = LoopbackServer(_ProxyHandler, self._port, owner=self, origin="proxy")
        self._port = int(server.server_address[1])
        self._runner = ServerRunner(server, 0, "hubemu-proxy")
        self._runner.start()

    def start(self) -> ForwardProxy:
        """Reserve the port (and listen unless mode is "refuse"); idempotent."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            self._listen()
            if self._mode == "refuse":
                self._close_listener()
            if self.max_lifetime and self.max_lifetime > 0:
                self._timer = threading.Timer(self.max_lifetime, self.stop)
                self._timer.daemon = True
                self._timer.start()
        return self

    def _close_listener(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._close_listener()
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        """Switch behaviour. "refuse" closes the listener (ECONNREFUSED); leaving it re-listens, same port."""
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        with self._lock:
            old, self._mode = self._mode, value
            if not self._started or self._stopped or old == value:
                return
            if value == "refuse":
                self._close_listener()
            elif old == "refuse":
                self._listen()

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("ForwardProxy not started")
        return self._port

    @property
    def url(self) -> str:
        if self.credentials is not None:
            user, password = self.credentials
            return f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------------------------------- counters
    def _log(self, method: str, target: str, status: int) -> None:
        with self._log_lock:
            self._requests.append((method, target, status))

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, target, status) per request; a reset connection is logged with status 0."""
        with self._log_lock:
            return list(self._requests)

    def count(self) -> int:
        with self._log_lock:
            return len(self._requests)

    def reset_counters(self) -> None:
        with self._log_lock:
            self._requests.clear()

    def __repr__(self) -> str:
        port: Any = self._port if self._started else "?"
        return f"ForwardProxy(mode={self._mode!r}, port={port})"
