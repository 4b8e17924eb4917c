"""nginx in front of the test Hub: the C server of the bench's HTTPS and per-connection-cap rows.

Why: users' CDNs are C servers. When the Python test Hub serves TLS itself, its `ssl` module spends CPU
on the same 2 cores as the client being measured, which slows every client and flatters prefetch
(4 × 128 MiB over HTTPS: prefetch 0.49 × hf from the Python Hub, 0.92 × hf from nginx, in issue 26).

What runs: `nginx` (Debian `nginx-light`) on 127.0.0.1, two free ports, everything under a prefix in the
bench's work folder (configuration, pid, logs, temp folders: no root-owned path), in the foreground as a
child of the bench, stopped by it. Two origins, as on the Hub:

- the **API origin** proxies every request to the test Hub, which counts it, applies its rate limits
  and answers it (listings, /resolve, the 302 to the CDN);
- the **CDN origin** serves the LFS blobs from disk (`BLOBS/{sha256}`, written by the Hub process) at
  `/lfs/{sha256}`, the path of the Hub's CDN URLs (their signature is not checked), with `limit_rate`
  when a row caps each connection, and logs each request's method, status and body bytes so the bench
  counts them as it counts the Hub's.

The Hub is told to hand out these two origins (`front`, bench/hubserver.py), so a client reaches only
nginx. TLS: a throwaway CA (trustme) signs nginx's certificate for 127.0.0.1; clients are given the CA
as each reads it (bench/run.py's `Bench.env`, curl `--cacert`, aria2c `--ca-certificate`). HTTP/1.1
only, as the test Hub: offering h2 would let curl multiplex its 16 transfers on one connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
INSTALL_HINT = "not installed (apt-get install nginx-light)"
START_TIMEOUT = 10.0  # seconds for nginx to accept connections
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies
TEMP_KINDS = (
    "client_body",
    "proxy",
    "fastcgi",
    "uwsgi",
    "scgi",
)  # nginx's temp folders, kept under the prefix
LOG_FORMAT = "$request_method $status $body_bytes_sent"  # one line per CDN request: what `stats` counts


class Backend(Protocol):
    """What the front needs of the test Hub process (bench/run.py's `Hub`)."""

    repos: dict[str, dict[str, Any]]

    def call(self, **command: Any) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the bench dies, so a killed bench leaves no nginx behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    prefix: Path, hub_url: str, ports: tuple[int, int], blobs: Path, *, tls: bool, cap_bps: float | None
) -> str:
    """nginx.conf for one front: the API origin proxied to `hub_url`, the CDN origin serving `blobs`."""
    user = ""
    if os.geteuid() == 0:  # workers would switch to `nobody`, who cannot read a private temp folder
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    ssl = " ssl" if tls else ""
    certificate = (
        f"ssl_certificate {prefix}/tls/leaf.pem;\n    ssl_certificate_key {prefix}/tls/leaf.key;"
        if tls
        else ""
    )
    # `limit_rate` is per request: nginx sends a chunk (up to a second's worth, at most sendfile_max_chunk),
    # then pauses as long as that chunk takes at the rate. A small chunk keeps a short request (a 16 MiB
    # segment) close to the cap: the pause after its last chunk is all it saves, 13 ms at 20 MB/s.
    cap = f"limit_rate {int(cap_bps)};\n        sendfile_max_chunk 256k;" if cap_bps else ""
    temp = "\n    ".join(f"{kind}_temp_path {prefix}/temp/{kind};" for kind in TEMP_KINDS)
    return f"""\
{user}
daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    {temp}
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    tcp_nopush on;
    server_tokens off;
    keepalive_timeout 120s;
    keepalive_requests 100000;
    log_format bench '{LOG_FORMAT}';
    {certificate}
    upstream hub {{
        server {hub_url.removeprefix("http://")};
        keepalive 64;
    }}
    server {{  # the API origin: everything goes to the test Hub
        listen 127.0.0.1:{ports[0]}{ssl};
        access_log off;
        location / {{
            proxy_pass http://hub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_redirect off;
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
    server {{  # the CDN origin: LFS blobs from disk
        listen 127.0.0.1:{ports[1]}{ssl};
        access_log {prefix}/cdn-access.log bench;
        {cap}
        location /lfs/ {{
            alias {blobs}/;
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def write_tls(folder: Path) -> Path:
    """A throwaway CA and nginx's certificate for 127.0.0.1 under `folder`; the CA's PEM path."""
    import trustme  # the bench extras (pyproject `bench`); only HTTPS rows need it

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="prefetch bench CA")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "leaf.key"))
    (folder / "leaf.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return folder / "ca.pem"


class NginxFront:
    """nginx in front of a running test Hub, with the Hub's interface (`url`, `ca_file`, `call`, `stats`, `reset`).

    `Bench.serving(front)` points every client at it. `blobs`: where the LFS blobs are written (shared
    by the fronts of one bench run, so each blob is written once); `cap_bps`: `limit_rate` per CDN request.
    """

    def __init__(
        self,
        hub: Backend,
        folder: Path,
        blobs: Path,
        repos: Sequence[str],
        *,
        tls: bool,
        cap_bps: float | None = None,
    ) -> None:
        if NGINX is None:
            raise RuntimeError(f"nginx {INSTALL_HINT}")
        self.hub = hub
        self.repos = hub.repos
        self.folder = folder
        for repo in repos:
            hub.call(cmd="write_blobs", repo=repo, dir=str(blobs))
        for kind in TEMP_KINDS:
            (folder / "temp" / kind).mkdir(parents=True, exist_ok=True)
        self.ca_file: str | None = str(write_tls(folder / "tls")) if tls else None
        own_url = hub.call(cmd="front")["own_url"]  # where the Hub listens, not what it hands out
        ports = (free_port(), free_port())
        (folder / "nginx.conf").write_text(config(folder, own_url, ports, blobs, tls=tls, cap_bps=cap_bps))
        self._log = folder / "cdn-access.log"
        self._output = open(folder / "nginx.out", "wb")  # noqa: SIM115  (lives as long as the process)
        assert NGINX is not None
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")],
            stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT, preexec_fn=stop_with_parent,
        )  # fmt: skip
        self.pid = self.proc.pid
        scheme = "https" if tls else "http"
        self.url, self.cdn_url = (f"{scheme}://127.0.0.1:{port}" for port in ports)
        try:
            self._wait_ready(ports)
            hub.call(cmd="front", url=self.url, cdn_url=self.cdn_url)
        except BaseException:
            self.close()
            raise
        self._offset = 0

    def _wait_ready(self, ports: tuple[int, int]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for port in ports:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"nginx exited at start ({self.proc.returncode}): {self._error_tail()}"
                    )
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"nginx did not listen on {port} in {START_TIMEOUT:.0f} s: {self._error_tail()}"
                    )
                time.sleep(0.05)

    def _error_tail(self) -> str:
        text = ""
        for name in ("error.log", "nginx.out"):
            with contextlib.suppress(OSError):
                text += (self.folder / name).read_text(errors="replace")[-800:]
        return text.strip() or "(no output)"

    # -- the Hub's interface --------------------------------------------------------------------
    def call(self, **command: Any) -> dict[str, Any]:
        return self.hub.call(**command)

    def reset(self) -> None:
        self.hub.reset()
        self._offset = self._settled_log_size()

    def stats(self) -> dict[str, Any]:
        """The Hub's counters (what nginx proxied to it) plus the CDN requests nginx served itself."""
        stats = dict(self.hub.stats())
        size = self._settled_log_size()
        with contextlib.suppress(FileNotFoundError), open(self._log, "rb") as log:
            log.seek(self._offset)
            lines = log.read(size - self._offset).decode(errors="replace").splitlines()
        requests = [line.split() for line in lines if len(line.split()) == 3]
        gets = [r for r in requests if r[0] == "GET"]
        heads = sum(1 for r in requests if r[0] == "HEAD")
        stats.update(
            requests=stats["requests"] + len(requests),
            file=stats["file"] + len(requests),
            head=stats["head"] + heads,
            get=stats["get"] + len(gets),
            cdn=len(requests),
            bytes_served=stats["bytes_served"] + sum(int(r[2]) for r in gets if r[2].isdigit()),
        )
        return stats

    def _settled_log_size(self) -> int:
        """The access log's size once it stops growing: nginx logs a request when it has sent its last
        byte, which can be a moment after the client (which has read it) exited."""
        size, deadline = -1, time.monotonic() + 1.0
        while time.monotonic() < deadline:
            now = self._log.stat().st_size if self._log.exists() else 0
            if now == size:
                return size
            size = now
            time.sleep(0.02)
        return max(size, 0)

    def close(self) -> None:
        """Stop nginx (fast shutdown) and give the Hub its own origins back."""
        with contextlib.suppress(Exception):
            self.hub.call(cmd="front")
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._output.close()

    def __enter__(self) -> NginxFront:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
