"""prefetch.net.connection (on http.client) against a scripted server on real sockets: framing, keep-alive,
errors, proxies.

The Hub emulator always answers well-formed, Content-Length-framed HTTP; servers in the wild also send
chunked and close-delimited bodies, interim 1xx answers, garbage, and close idle connections. Each
test scripts the exact bytes a server sends and checks what the client makes of them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message

import pytest

from prefetch.errors import ConnectError, ProxyError, ReadTimeout, RemoteProtocolError
from prefetch.net.connection import Pool, Response, SessionTls, tls_context
from tests.hubemu import HubEmulator
from tests.hubemu.fixtures import tls_hub  # noqa: F401  (a fixture)

Answer = Callable[[socket.socket, bytes], bool]  # (connection, request head) -> keep the connection open?


@dataclass
class ScriptedServer:
    """Answers each request with the next scripted answer; records request heads and connections."""

    answers: list[Answer]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with contextlib.suppress(OSError):
            while self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                self.requests.append(head)
                if not self.answers.pop(0)(conn, head):
                    conn.close()
                    return

    def close(self) -> None:
        self.answers.clear()
        self.listener.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()


def send(raw: bytes, keep: bool = True) -> Answer:
    def answer(conn: socket.socket, head: bytes) -> bool:
        conn.sendall(raw)
        return keep

    return answer


def ok(body: bytes, extra: str = "") -> Answer:
    return send(f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body)


@pytest.fixture
def server() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(*answers: Answer) -> ScriptedServer:
        servers.append(ScriptedServer(list(answers)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def make_pool(proxy: str | None = None, read_timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> Pool:
    return Pool(
        (lambda: tls) if tls else tls_context,
        proxy,
        user_agent="test",
        max_idle=4,
        connect_timeout=5.0,
        read_timeout=read_timeout,
    )


def fields_of(head: bytes) -> Message:
    """A request head's header fields, by case-insensitive name (as a server reads them)."""
    return http.client.parse_headers(io.BytesIO(head.split(b"\r\n", 1)[1]))


def read_all(response: Response, size: int = 7) -> bytes:
    """Read the body in small pieces, as the engine reads a big one (many reads per response)."""
    data, buffer = bytearray(), memoryview(bytearray(size))
    while n := response.readinto(buffer):
        data += buffer[:n]
    response.close()
    return bytes(data)


def test_header_fields_by_any_case_first_value_all_values_and_folded(
    server: Callable[..., ScriptedServer],
) -> None:
    s = server(
        send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Dup: one\r\nx-dup: two \r\n"
            b"X-Folded: a\r\n \t b\r\nX-Empty:\r\n\r\nhi"
        )
    )
    response = make_pool().request("GET", f"{s.url}/a", {})
    headers = response.headers
    assert (headers.get("X-DUP"), headers["x-dup"], headers.get_all("X-Dup")) == (
        "one",
        "one",
        ["one", "two"],
    )
    assert headers["x-folded"] == "a b" and headers.get("x-empty") == "" and "CONTENT-LENGTH" in headers
    assert (
        headers.get("x-missing") is None and headers.get("x-missing", "") == "" and "x-missing" not in headers
    )
    assert [name for name in headers] == ["Content-Length", "X-Dup", "x-dup", "X-Folded", "X-Empty"]
    assert "one" not in repr(headers) and "X-Dup" in repr(headers)  # names only: a value may be a token
    assert read_all(response) == b"hi"


def test_a_header_value_keeps_bytes_that_are_not_http_whitespace(
    server: Callable[..., ScriptedServer],
) -> None:
    """Only spaces and tabs surround a value (RFC 9110 OWS): latin-1 0x85 and 0xA0 are part of it."""
    s = server(send(b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \t"abc"\xa0\x85 \r\n\r\n'))
    response = make_pool().request("GET", f"{s.url}/a", {})
    assert response.headers["etag"] == '"abc"\xa0\x85'
    read_all(response)


def test_a_line_that_is_not_a_header_field_ends_the_fields(server: Callable[..., ScriptedServer]) -> None:
    """As http.client's email parser reads it: what follows such a line is not a field."""
    s = server(send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nnot a field\r\nX-B: 2\r\n\r\nok"))
    response = make_pool().request("GET", f"{s.url}/a", {})
    assert response.headers.get("x-a") == "1" and "x-b" not in response.headers
    assert read_all(response) == b"ok"


def test_an_answer_with_too_many_header_lines_is_refused(server: Callable[..., ScriptedServer]) -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    s = server(send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + fields + b"\r\n", keep=False))
    with pytest.raises(RemoteProtocolError, match="bad headers: got more than 100 headers"):
        make_pool().request("GET", f"{s.url}/a", {})


def test_a_content_length_of_other_than_digits_is_no_length(server: Callable[..., ScriptedServer]) -> None:
    """`int()` reads `1_0` as 10 (and `+5` as 5): the body would be cut short. It is read until the
    connection closes instead, as for no Content-Length."""
    s = server(send(b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\nhello", keep=False))
    response = make_pool().request("GET", f"{s.url}/a", {})
    assert read_all(response) == b"hello"


def test_an_interim_100_answer_is_passed_over(server: Callable[..., ScriptedServer]) -> None:
    s = server(
        send(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    )
    response = make_pool().request("GET", f"{s.url}/a", {})
    assert response.status_code == 200 and "x-interim" not in response.headers
    assert read_all(response) == b"ok"


def test_content_length_bodies_reuse_one_connection(server: Callable[..., ScriptedServer]) -> None:
    s = server(ok(b"hello world"), ok(b"again"))
    pool = make_pool()
    first = pool.request("GET", f"{s.url}/a?x=1", {"range": "bytes=0-"})
    assert (first.status_code, first.headers["Content-Length"]) == (200, "11")
    assert read_all(first) == b"hello world"
    assert read_all(pool.request("GET", f"{s.url}/b", {})) == b"again"
    assert s.connections == 1
    assert s.requests[0].startswith(b"GET /a?x=1 HTTP/1.1\r\n")
    sent = fields_of(s.requests[0])
    assert sent["host"] == f"127.0.0.1:{s.port}" and sent["range"] == "bytes=0-"


def test_the_trust_store_is_read_at_the_first_https_connection_only(
    server: Callable[..., ScriptedServer],
    tls_hub: HubEmulator,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading the system's trust store costs ~30 ms: a run that speaks only plain HTTP (an in-cluster
    mirror) does not pay it; the first https:// connection does, once for the session."""
    reads: list[str | None] = []
    monkeypatch.setenv("SSL_CERT_FILE", tls_hub.ca_file)
    real = ssl.SSLContext.set_default_verify_paths
    monkeypatch.setattr(
        ssl.SSLContext, "set_default_verify_paths", lambda ctx: reads.append("read") or real(ctx)
    )
    tls = SessionTls()
    pool = Pool(tls.context, None, user_agent="test", max_idle=4, connect_timeout=5.0, read_timeout=5.0)
    s = server(ok(b"plain"))
    assert read_all(pool.request("GET", f"{s.url}/a", {})) == b"plain"
    assert reads == []
    tls_hub.create_repo("org/tls").commit({"a.txt": b"over tls"})
    for _ in range(2):
        assert read_all(pool.request("GET", f"{tls_hub.url}/org/tls/resolve/main/a.txt", {})) == b"over tls"
    assert reads == ["read"]


def test_a_small_unread_body_is_drained_to_keep_the_connection(server: Callable[..., ScriptedServer]) -> None:
    """A redirect's body is never read; closing its connection for it cost one connection per LFS file."""
    redirect = b"HTTP/1.1 302 Found\r\nlocation: /cdn/x\r\ncontent-length: 9\r\n\r\nFound. x."
    s = server(send(redirect), ok(b"the file"))
    pool = make_pool()
    first = pool.request("GET", f"{s.url}/resolve/x", {})
    assert first.is_redirect
    first.close()
    assert read_all(pool.request("GET", f"{s.url}/cdn/x", {})) == b"the file"
    assert s.connections == 1


def test_a_big_unread_body_is_not_drained(server: Callable[..., ScriptedServer]) -> None:
    s = server(ok(b"x" * (1024 * 1024)), ok(b"again"))
    pool = make_pool()
    pool.request("GET", f"{s.url}/big", {}).close()
    assert read_all(pool.request("GET", f"{s.url}/b", {})) == b"again"
    assert s.connections == 2


def test_chunked_body_with_extensions_and_trailers(server: Callable[..., ScriptedServer]) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n"
    )
    s = server(send(chunked), ok(b"next"))
    pool = make_pool()
    assert read_all(pool.request("GET", f"{s.url}/c", {}), size=3) == b"hello world"
    assert read_all(pool.request("GET", f"{s.url}/d", {})) == b"next"
    assert s.connections == 1


def test_body_delimited_by_close_is_read_to_the_end_and_not_reused(
    server: Callable[..., ScriptedServer],
) -> None:
    s = server(send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", keep=False), ok(b"x"))
    pool = make_pool()
    assert read_all(pool.request("GET", f"{s.url}/e", {})) == b"until the end"
    assert read_all(pool.request("GET", f"{s.url}/f", {})) == b"x"
    assert s.connections == 2


def test_interim_answers_are_skipped_and_json_can_follow_read(server: Callable[..., ScriptedServer]) -> None:
    body = b'{"a": 1}'
    s = server(
        send(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            + f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
    )
    response = make_pool().request("GET", f"{s.url}/j", {})
    assert response.read() == body
    assert response.json() == {"a": 1}


def test_head_has_no_body_and_keeps_the_connection(server: Callable[..., ScriptedServer]) -> None:
    s = server(send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"), ok(b"after"))
    pool = make_pool()
    head = pool.request("HEAD", f"{s.url}/h", {})
    assert head.headers["content-length"] == "1000" and head.read() == b""
    head.close()
    assert read_all(pool.request("GET", f"{s.url}/g", {})) == b"after"
    assert s.connections == 1


def test_a_body_cut_short_is_a_protocol_error_after_what_arrived(
    server: Callable[..., ScriptedServer],
) -> None:
    s = server(send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this", keep=False))
    response = make_pool().request("GET", f"{s.url}/short", {})
    buffer = memoryview(bytearray(100))
    got = response.readinto(buffer)
    assert bytes(buffer[:got]) == b"only this"
    with pytest.raises(RemoteProtocolError, match="before the end of the body"):
        response.readinto(buffer)


def test_a_chunked_body_cut_short_is_a_protocol_error_after_what_arrived(
    server: Callable[..., ScriptedServer],
) -> None:
    s = server(send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nonly", keep=False))
    response = make_pool().request("GET", f"{s.url}/cut", {})
    with pytest.raises(RemoteProtocolError, match="before the end of the body"):
        read_all(response)


def test_a_short_body_is_not_kept_for_reuse(server: Callable[..., ScriptedServer]) -> None:
    s = server(send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", keep=False), ok(b"x"))
    pool = make_pool()
    with pytest.raises(RemoteProtocolError):
        read_all(pool.request("GET", f"{s.url}/1", {}))
    assert read_all(pool.request("GET", f"{s.url}/2", {})) == b"x"
    assert s.connections == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 answer"),
        (b"HTTP/1.1 200 OK\r\nx: " + b"a" * 70_000 + b"\r\n\r\n", "bad headers"),
        (b"", "without answering"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    ],
    ids=["not-http", "long-header", "silent-close", "bad-chunk"],
)
def test_garbage_is_a_protocol_error(server: Callable[..., ScriptedServer], raw: bytes, message: str) -> None:
    s = server(send(raw, keep=False))
    with pytest.raises(RemoteProtocolError, match=message):
        response = make_pool().request("GET", f"{s.url}/bad", {})
        response.read()


def test_an_idle_connection_the_server_closed_is_not_reused(server: Callable[..., ScriptedServer]) -> None:
    s = server(send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi", keep=False), ok(b"fresh"))
    pool = make_pool()
    assert read_all(pool.request("GET", f"{s.url}/1", {})) == b"hi"  # kept: the server did not say close
    for _ in range(100):  # until the server closed its end, and a moment for the FIN to arrive
        if s._open[0].fileno() == -1:
            break
        time.sleep(0.01)
    time.sleep(0.05)
    assert read_all(pool.request("GET", f"{s.url}/2", {})) == b"fresh"
    assert s.connections == 2


def test_silence_is_a_read_timeout(server: Callable[..., ScriptedServer]) -> None:
    s = server(lambda conn, head: threading.Event().wait(3) or False)
    with pytest.raises(ReadTimeout):
        make_pool(read_timeout=0.3).request("GET", f"{s.url}/slow", {})


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError):
        make_pool().request("GET", f"http://127.0.0.1:{port}/", {})


def test_http_through_a_proxy_goes_in_absolute_form_with_its_credentials(
    server: Callable[..., ScriptedServer],
) -> None:
    proxy = server(ok(b"via proxy"))
    pool = make_pool(f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}")
    assert read_all(pool.request("GET", "http://origin.example:8080/file?sig=1", {})) == b"via proxy"
    head = proxy.requests[0]
    assert head.startswith(b"GET http://origin.example:8080/file?sig=1 HTTP/1.1\r\n")
    sent = fields_of(head)
    assert sent.get_all("host") == ["origin.example:8080"]
    assert sent["proxy-authorization"] == f"Basic {base64.b64encode(b'us@er:p:ss').decode()}"


def test_a_refused_tunnel_is_a_proxy_error_with_its_status(server: Callable[..., ScriptedServer]) -> None:
    proxy = server(
        send(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n", keep=False)
    )
    with pytest.raises(ProxyError) as caught:
        make_pool(f"http://127.0.0.1:{proxy.port}").request("GET", "https://hub.example/api/x", {})
    assert caught.value.status == 407
    # http.client before 3.12 sends CONNECT as HTTP/1.0, without a Host field (which 1.0 does not need)
    assert re.match(rb"CONNECT hub\.example:443 HTTP/1\.[01]\r\n", proxy.requests[0])


def test_only_http_proxies() -> None:
    with pytest.raises(ValueError, match="only http:// proxies"):
        make_pool("https://proxy.example:3128")


def test_a_read_returns_what_has_arrived_without_waiting_for_a_full_buffer(
    server: Callable[..., ScriptedServer],
) -> None:
    """A trickling server must not stall progress, resume state or cancellation until a buffer fills."""

    def trickle(conn: socket.socket, head: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
        time.sleep(1.5)
        conn.sendall(b"later")
        return True

    s = server(trickle)
    response = make_pool().request("GET", f"{s.url}/t", {})
    buffer = memoryview(bytearray(1 << 20))
    started = time.monotonic()
    n = response.readinto(buffer)
    assert bytes(buffer[:n]) == b"first" and time.monotonic() - started < 1.0
    assert read_all(response) == b"later"


def test_a_read_over_tls_also_takes_the_records_that_have_arrived(
    tls_hub: HubEmulator,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python's ssl returns one 16 KiB record per read and gives up the interpreter lock at each: 32
    connection threads reading record by record took turns at it 65,536 times per GiB. A read takes
    the records already arrived too (never waiting for more: a trickling server is tested above)."""
    data = os.urandom(1 << 20)
    tls_hub.create_repo("org/records").commit({"notes.txt": data})
    trusted = ssl.create_default_context(cafile=tls_hub.ca_file)  # the test Hub's throwaway CA
    response = make_pool(tls=trusted).request("GET", f"{tls_hub.url}/org/records/resolve/main/notes.txt", {})
    assert response.status_code == 200
    time.sleep(0.5)  # meanwhile the server fills the socket's buffers
    buffer = memoryview(bytearray(len(data)))
    n = response.readinto(buffer)
    assert n >= 4 * 16 * 1024, n  # several records in one read
    while n < len(data) and (m := response.readinto(buffer[n:])):
        n += m
    assert bytes(buffer[:n]) == data
    response.close()
