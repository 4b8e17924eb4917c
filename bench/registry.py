"""The Distribution registry (Debian's `docker-registry`) for the bench's registry rows: started on
127.0.0.1 on a free port, its storage under the bench's work folder (a fresh one per push measured, so
no blob is there already), stopped by the bench. The same server tests/oci_fixture.py starts for the tests.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")
INSTALL_HINT = "not installed (apt-get install docker-registry skopeo)"
START_TIMEOUT = 20.0  # seconds for the registry to answer /v2/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRegistry:
    """`docker-registry serve` with its storage in `folder`, for the length of a `with`."""

    def __init__(self, folder: Path) -> None:
        if REGISTRY is None:
            raise SystemExit(f"docker-registry {INSTALL_HINT}")
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: prefetch-bench-upload-state-secret\n"
        )
        self._log = open(folder / "registry.log", "wb")  # noqa: SIM115  (lives as long as the process)
        self.proc = subprocess.Popen(
            [REGISTRY, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LocalRegistry:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise SystemExit(
                    f"docker-registry exited {self.proc.returncode}; see {self.folder / 'registry.log'}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                conn.close()
                return self
            except OSError:
                time.sleep(0.05)
        self.close()
        raise SystemExit(f"docker-registry did not answer within {START_TIMEOUT:.0f} s")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
