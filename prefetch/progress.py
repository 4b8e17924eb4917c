"""What a run shows while it works: a bar on a terminal, a line every few seconds in CI logs,
one JSON event per line for tools (`--json`), or nothing (`--quiet`). All text is redacted."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import IO, Any

from prefetch.auth import redact
from prefetch.transfer import FileJob, Reporter

log = logging.getLogger("prefetch")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(verbosity: int, stream: IO[str] | None = None) -> None:
    """Route the `prefetch` logger to stderr through the redactor: warnings by default, more with -v."""
    logger = logging.getLogger("prefetch")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter("prefetch: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity == 1 else logging.WARNING)
    logger.propagate = False


class Progress(Reporter):
    """Counts bytes and files; subclasses decide how to show them."""

    def __init__(self) -> None:
        self.total_bytes = 0
        self.total_files = 0
        self.done_bytes = 0
        self.done_files = 0
        self.started = time.monotonic()
        self.active: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, total_bytes: int, total_files: int, plan: dict[str, Any]) -> None:
        self.total_bytes, self.total_files = total_bytes, total_files
        self.started = time.monotonic()

    def file_started(self, job: FileJob) -> None:
        with self._lock:
            self.active[job.label] = job.size

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes

    def file_done(self, job: FileJob, how: str) -> None:
        with self._lock:
            self.active.pop(job.label, None)
            self.done_files += 1

    def retry(self, message: str) -> None:
        pass

    def message(self, text: str) -> None:
        """A line for the user (plan, summary) — goes to stderr except in JSON mode."""
        print(redact(text), file=sys.stderr)

    def event(self, kind: str, **fields: Any) -> None:
        """A structured event; only the JSON display prints these."""

    def close(self) -> None:
        pass

    def rate(self) -> float:
        return self.done_bytes / max(time.monotonic() - self.started, 1e-6)

    def status_line(self) -> str:
        rate = self.rate()
        eta = (self.total_bytes - self.done_bytes) / rate if rate > 0 else 0
        percent = 100 * self.done_bytes / self.total_bytes if self.total_bytes else 100
        return (
            f"{human_bytes(self.done_bytes)} / {human_bytes(self.total_bytes)} ({percent:.0f}%), "
            f"{human_bytes(rate)}/s, ETA {eta:.0f}s, files {self.done_files}/{self.total_files}"
        )


class QuietProgress(Progress):
    def message(self, text: str) -> None:
        pass


class LineProgress(Progress):
    """For CI logs (no TTY): one status line every `interval` seconds."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = time.monotonic()

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            print(f"prefetch: {self.status_line()}", file=sys.stderr, flush=True)


class TtyProgress(Progress):
    """For terminals: one overall tqdm bar (bytes, rate, ETA, files) naming the active files."""

    def __init__(self) -> None:
        super().__init__()
        self.bar: Any = None

    def start(self, total_bytes: int, total_files: int, plan: dict[str, Any]) -> None:
        super().start(total_bytes, total_files, plan)
        from tqdm import tqdm

        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            dynamic_ncols=True,
            desc="prefetch",
        )

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        if self.bar is not None:
            self.bar.update(nbytes)

    def file_done(self, job: FileJob, how: str) -> None:
        super().file_done(job, how)
        if self.bar is not None:
            active = ", ".join(name.rsplit("/", 1)[-1] for name in list(self.active)[:3])
            self.bar.set_postfix_str(
                f"files {self.done_files}/{self.total_files}" + (f" [{active}]" if active else "")
            )

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(redact(text), file=sys.stderr)
        else:
            super().message(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonProgress(Progress):
    """`--json`: one JSON object per line on stdout (plan, file, retry, warning, summary)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        self._out = threading.Lock()

    def event(self, kind: str, **fields: Any) -> None:
        line = redact(json.dumps({"event": kind, **fields}, sort_keys=True))
        with self._out:
            print(line, file=self.stream, flush=True)

    def start(self, total_bytes: int, total_files: int, plan: dict[str, Any]) -> None:
        super().start(total_bytes, total_files, plan)

    def file_done(self, job: FileJob, how: str) -> None:
        super().file_done(job, how)
        repo, _, path = job.label.partition(":")
        self.event("file", repo=repo, path=path, size=job.size, result=how)

    def retry(self, message: str) -> None:
        self.event("retry", message=message)

    def message(self, text: str) -> None:
        pass


def make_progress(mode: str) -> Progress:
    """`mode`: auto | tty | lines | quiet | json."""
    if mode == "auto":
        mode = "tty" if sys.stderr.isatty() else "lines"
    return {"tty": TtyProgress, "lines": LineProgress, "quiet": QuietProgress, "json": JsonProgress}[mode]()
