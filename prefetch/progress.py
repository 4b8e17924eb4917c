"""What a run shows while it works: a bar on a terminal, a line every few seconds in CI logs,
one JSON event per line for tools (`--json`), or nothing (`--quiet`). All text is redacted.

- `TtyProgress` (stderr is a terminal): one overall tqdm bar (bytes, rate, ETA, files done) and a
  second line naming the files in flight.
- `LineProgress` (no terminal, e.g. CI logs, or `HF_HUB_DISABLE_PROGRESS_BARS` set): one status line
  every `interval` seconds (default 5, `PREFETCH_PROGRESS_INTERVAL` overrides), from a ticker thread,
  so a stalled or retrying transfer still shows up in the log.
- `JsonProgress` (`--json`): one JSON object per line on stdout and nothing else there: `plan`,
  `file` (one per file done), `retry`, `warning`, `waiting` (another process holds a file's blob
  lock), `log` (the log's records: `JsonLogHandler`), `summary` (and `error`, written by the CLI);
  nothing on stderr.
- `QuietProgress` (`--quiet`): nothing; errors still reach stderr through the CLI.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import re
import shutil
import sys
import textwrap
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from prefetch import settings
from prefetch.auth import Secrets
from prefetch.terminal import EVENT_ATTRIBUTE, escape_controls

if TYPE_CHECKING:
    from prefetch.download.job import FileJob
    from prefetch.net.ratelimit import Wait

log = logging.getLogger("prefetch")

ACTIVE_SHOWN = 3  # files named on the "active" line
NARROW_COLUMNS = 80  # below this, the bar leaves out its name and the elapsed time (the files count: line 2)
RATE_WINDOW = 10.0  # seconds: the rate shown is the recent one (an estimate must follow a change of pace)
RATE_SAMPLE = 0.5  # seconds between two samples of the bytes fetched
ESTIMATE_AFTER = 2.0  # seconds of measured rate before an estimate is shown (`ETA ?` until then)
JSON_PROGRESS_INTERVAL = 1.0  # seconds, at most, between two `progress` events under --json


def human_bytes(n: float) -> str:
    """`1536` -> `1.5 KiB` (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`10G`, `500MiB`, `1.5 GB`, `4096` -> bytes (binary units: `10G` is 10 GiB, as `df -h` shows);
    ValueError otherwise."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (expected a number with an optional unit: 512M, 10G, 1T)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgtp".index(unit or " "))


def shown(text: str, secrets: Secrets) -> str:
    """`text` as it may reach a terminal or a log: the run's secrets redacted, control characters escaped."""
    return escape_controls(secrets.redact(text))


def counted(n: int, noun: str) -> str:
    """`1 file`, `2 files`."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def human_duration(value: float) -> str:
    """`75` -> `1m15s`; `3725` -> `1h02m`."""
    seconds = max(0, round(value))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: Secrets) -> None:
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return shown(super().format(record), self.secrets)


_STDOUT = threading.Lock()  # one JSON line at a time on stdout: events and log records come from many threads


def write_json_line(data: dict[str, Any], secrets: Secrets, stream: IO[str] | None = None) -> None:
    """One JSON object on a line of `stream` (default stdout), redacted, whole."""
    line = secrets.redact(json.dumps(data, sort_keys=True, default=str))
    with _STDOUT:
        print(line, file=stream or sys.stdout, flush=True)


class JsonLogHandler(logging.Handler):
    """Under --json, the log's records are events on stdout (`{"event": "log", "level": "warning", ...}`),
    so stderr stays quiet and a tool reads one stream; a record that is an event already is left out."""

    def __init__(self, secrets: Secrets, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.secrets, self.stream = secrets, stream

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, EVENT_ATTRIBUTE, None):
            return
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        write_json_line(
            {"event": "log", "level": record.levelname.lower(), "message": message}, self.secrets, self.stream
        )


def setup_logging(
    verbosity: int, secrets: Secrets, stream: IO[str] | None = None, *, as_json: bool = False
) -> None:
    """Route the `prefetch` logger through the run's redactor: to stderr, or under --json (`as_json`) as
    events on stdout. Errors only with --quiet (verbosity -1), warnings by default, what is fetched from
    where with -v, every request with -vv."""
    logger = logging.getLogger("prefetch")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler: logging.Handler
    if as_json:
        handler = JsonLogHandler(secrets, stream)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(RedactingFormatter("prefetch: %(levelname)s: %(message)s", secrets))
    logger.addHandler(handler)
    levels = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
    logger.setLevel(levels.get(verbosity, logging.DEBUG if verbosity > 1 else logging.ERROR))
    logger.propagate = False


def short_name(label: str) -> str:
    """`org/name:dir/model.safetensors` -> `model.safetensors` (what fits on a status line)."""
    return label.rsplit(":", 1)[-1].rsplit("/", 1)[-1]


def _names(files: dict[str, int], limit: int) -> str:
    """`a.safetensors, b.safetensors (+3 more)` of these files' labels, or ``."""
    names = [short_name(label) for label in files]
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


class Progress:
    """Counts bytes and files (thread-safe: the transfer engine reports from many threads; a
    `download.job.Reporter`); subclasses decide how to show them. `secrets`: the run's (every line it
    shows is redacted with them)."""

    def __init__(self, secrets: Secrets | None = None) -> None:
        self.secrets = secrets or Secrets()
        self.total_bytes = 0
        self.total_files = 0
        self.done_bytes = 0  # on disk now: fetched, resumed, or installed by another process or a link
        self.fetched_bytes = 0  # of those, fetched by this run: what its rate is made of
        self.done_files = 0
        self.started = time.monotonic()
        self._samples = collections.deque([(self.started, 0)])  # (when, fetched_bytes), for `rate`
        self.active: dict[str, int] = {}  # label -> size, in start order
        self.waiting: dict[str, int] = {}  # label -> size: files another process holds the lock of
        self._said_waiting = False
        self._lock = threading.Lock()

    # -- what the engine and the orchestrator call --------------------------------------------------
    def start(self, total_bytes: int, total_files: int) -> None:
        """The transfer begins: `total_bytes` in `total_files` files to fetch."""
        with self._lock:
            self.total_bytes, self.total_files = total_bytes, total_files
            self.started = time.monotonic()
            self._samples = collections.deque([(self.started, self.fetched_bytes)])

    def file_started(self, job: FileJob) -> None:
        label = job.label  # (a property that formats the path: made once per call)
        with self._lock:
            self.waiting.pop(label, None)
            self.active[label] = job.size

    def file_waiting(self, job: FileJob) -> None:
        """Said at the default level (once: the status line lists the files waited on), so a run that
        waits looks like one that waits, not like one that hangs."""
        with self._lock:
            self.waiting[job.label] = job.size
            first, self._said_waiting = not self._said_waiting, True
        if first:
            self.message(
                f"waiting for another process downloading {job.label} ({human_bytes(job.size)}): it holds "
                f"the blob's lock {job.cache.lock_path(job.etag)}; the bytes it installs are not fetched again"
            )
        self.event(
            "waiting", repo=job.repo, path=job.path, size=job.size, lock=str(job.cache.lock_path(job.etag))
        )

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes
            self.fetched_bytes += nbytes
            now = time.monotonic()
            if now - self._samples[-1][0] >= RATE_SAMPLE:
                self._samples.append((now, self.fetched_bytes))
                while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW:
                    self._samples.popleft()

    def resumed(self, nbytes: int) -> None:
        """Bytes of a partial download found on disk: they count as done, not in the rate (a resumed run
        would otherwise show hundreds of MiB/s)."""
        with self._lock:
            self.done_bytes += nbytes

    def file_done(self, job: FileJob, how: str) -> None:
        """`how`: fetched, cached (another process installed it meanwhile) or linked (from another repo's
        folder): the bytes of the last two are in the cache now without having been fetched."""
        label = job.label
        with self._lock:
            self.active.pop(label, None)
            self.waiting.pop(label, None)
            self.done_files += 1
            if how != "fetched":
                self.done_bytes += job.size

    def retry(self, message: str) -> None:
        """A request failed and will be tried again (the engine also logs it as a warning)."""

    def rate_limited(self, wait: Wait) -> None:
        """A request waits for its rate-limit bucket's next window: say so, with what the quota means for
        the files left (`rate-limited by the Hub (resolvers: 5,000 per 5 min): waiting 3m12s; 41,200
        files left ≈ 42 min at this quota`)."""
        with self._lock:
            left = max(0, self.total_files - self.done_files)
        policy = wait.policy
        text = f"rate-limited by the Hub ({policy.describe(wait.bucket) if policy else wait.bucket}): "
        text += f"waiting {human_duration(wait.seconds)}"
        at_quota = None
        if policy is not None and wait.bucket == "resolvers" and left:
            at_quota = wait.seconds + (left // policy.quota) * policy.window
            text += f"; {left:,} files left ≈ {human_duration(at_quota)} at this quota"
        self.message(text)
        self.event(
            "rate_limit", bucket=wait.bucket, wait_seconds=round(wait.seconds, 1),
            quota=policy.quota if policy else None, window_seconds=policy.window if policy else None,
            files_left=left, seconds_at_quota=None if at_quota is None else round(at_quota),
        )  # fmt: skip

    def message(self, text: str) -> None:
        """A line for the user (plan, warnings): stderr, except in JSON and quiet modes."""
        print(shown(text, self.secrets), file=sys.stderr, flush=True)

    def event(self, kind: str, **fields: Any) -> None:
        """A structured event; only the JSON display prints these."""

    def close(self) -> None:
        """The run is over (successfully or not): stop tickers, leave the terminal clean."""

    # -- shared formatting ----------------------------------------------------------------------------
    def rate(self) -> float:
        """Bytes per second this run fetched over the last RATE_WINDOW seconds (not the bytes a resumed
        file had on disk, nor those another process installed meanwhile)."""
        with self._lock:
            since, before = self._samples[0]
            fetched = self.fetched_bytes
        return (fetched - before) / max(time.monotonic() - since, 1e-6)

    def eta(self) -> float | None:
        """Seconds until the bytes this run fetches are in, at its rate; None when unknown (no rate yet,
        or only files another process is fetching are left)."""
        rate = self.rate()
        with self._lock:
            left = self.total_bytes - self.done_bytes - sum(self.waiting.values())
            measured = time.monotonic() - self._samples[0][0]
        if rate <= 0 or measured < ESTIMATE_AFTER or (left <= 0 and self.waiting):
            return None  # (a rate of the first instants: an estimate of hours for a sync of seconds)
        return max(0, left) / rate

    def active_names(self, limit: int = ACTIVE_SHOWN) -> str:
        """`a.safetensors, b.safetensors (+3 more)`, or `` when nothing is in flight."""
        with self._lock:
            return _names(self.active, limit)

    def waiting_names(self, limit: int = ACTIVE_SHOWN) -> str:
        """The files another process holds the lock of, as `active_names` names them."""
        with self._lock:
            return _names(self.waiting, limit)

    def in_flight(self) -> str:
        """What the run is doing now: `active: a, b` and `waiting for another process: c` (either, both
        or ``)."""
        with self._lock:
            active, waiting = _names(self.active, ACTIVE_SHOWN), _names(self.waiting, ACTIVE_SHOWN)
        parts = [
            f"active: {active}" if active else "",
            f"waiting for another process: {waiting}" if waiting else "",
        ]
        return "; ".join(part for part in parts if part)

    def status_line(self) -> str:
        """`460.0 MiB / 1.0 GiB (45%), 215.3 MiB/s, ETA 3s, files 1/4; active: a, b`."""
        with self._lock:
            done, total = self.done_bytes, self.total_bytes
            files, total_files = self.done_files, self.total_files
        eta = self.eta()
        percent = 100 * done / total if total else 100
        line = (
            f"{human_bytes(done)} / {human_bytes(total)} ({percent:.0f}%), {human_bytes(self.rate())}/s, "
            f"ETA {human_duration(eta) if eta is not None else '?'}, files {files}/{total_files}"
        )
        now = self.in_flight()
        return line + (f"; {now}" if now else "")


class QuietProgress(Progress):
    """`--quiet`: shows nothing."""

    def message(self, text: str) -> None:
        pass


class LineProgress(Progress):
    """For CI logs (no TTY): one status line every `interval` seconds while bytes are being fetched."""

    def __init__(
        self, secrets: Secrets | None = None, interval: float | None = None, stream: IO[str] | None = None
    ) -> None:
        super().__init__(secrets)
        if interval is None:
            interval = settings.progress_interval()
        self.interval = max(0.05, interval)
        self.stream = stream
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self, total_bytes: int, total_files: int) -> None:
        super().start(total_bytes, total_files)
        if total_files and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="prefetch-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """Every `interval` seconds while the transfer runs."""
        self._print(f"prefetch: {self.status_line()}")

    def _print(self, text: str) -> None:
        print(shown(text, self.secrets), file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            self._ticker = None


def wrap_lines(text: str, width: int) -> list[str]:
    """`text`'s lines wrapped at spaces to `width` (continuations indented); a single word longer than
    the terminal (a long path) is left for the terminal to wrap."""
    return [
        wrapped
        for line in text.splitlines()
        for wrapped in textwrap.wrap(
            line, width, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
        )
        or [""]
    ]


def terminal_lines(text: str, stream: IO[str]) -> str:
    """`text` as it should reach `stream`: wrapped to its width when it is a terminal, else unchanged."""
    return "\n".join(wrap_lines(text, _columns(stream))) if stream.isatty() else text


def _reported_columns(stream: IO[str]) -> int:
    """The width the terminal reports (0: not a terminal, or one nobody sized)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 0


def _columns(stream: IO[str]) -> int:
    """The terminal's width now, else COLUMNS or 100."""
    return _reported_columns(stream) or shutil.get_terminal_size((100, 24)).columns


def _terminal_width(stream: IO[str]) -> int | None:
    """None when the terminal reports its width (tqdm then follows resizes); else a fixed fallback.

    A pseudo-terminal nobody sized (some CI wrappers, `docker run -t`) reports 0 columns, and tqdm
    would then draw an empty bar.
    """
    return None if _reported_columns(stream) > 0 else _columns(stream)


def _binary_units_bar(progress: Progress) -> Any:
    """tqdm, with fields that name binary units (its own `unit_divisor=1024` still prints `MB/s` for
    MiB/s), and the rate and estimate of `progress` (`speed`, `eta`): tqdm's own count the bytes of a
    resumed file, or of one another process installed, as if fetched in an instant."""
    from tqdm import tqdm

    class BinaryUnitsBar(tqdm):  # type: ignore[misc]
        @property
        def format_dict(self) -> dict[str, Any]:
            fields = super().format_dict
            eta = progress.eta()
            fields.update(
                done=human_bytes(fields["n"]),
                size=human_bytes(fields["total"] or 0),
                speed=f"{human_bytes(progress.rate())}/s",
                eta=human_duration(eta) if eta is not None else "?",
            )
            return fields

    return BinaryUnitsBar


class TtyProgress(Progress):
    """For terminals: one overall tqdm bar (bytes, rate, ETA, files done) and a line naming the files in
    flight."""

    def __init__(self, secrets: Secrets | None = None, stream: IO[str] | None = None) -> None:
        super().__init__(secrets)
        self.stream = stream
        self.bar: Any = None
        self.line: Any = None
        self.narrow = False  # the terminal is narrower than NARROW_COLUMNS (`start`)
        self._draw = threading.Lock()
        self._drawn = 0.0  # when the files line was last redrawn

    def start(self, total_bytes: int, total_files: int) -> None:
        super().start(total_bytes, total_files)
        if not total_files:
            return
        from tqdm import tqdm

        out = self.stream or sys.stderr
        width = _terminal_width(out)
        # Narrow: no name, no elapsed time, the files count on the second line; the estimate stays.
        self.narrow = (width or _columns(out)) < NARROW_COLUMNS
        self.bar = _binary_units_bar(self)(
            total=total_bytes,
            unit="B",
            file=out,
            dynamic_ncols=width is None,
            ncols=width,
            desc="prefetch",
            mininterval=0.2,
            miniters=1,  # (tqdm's own would grow with a resumed file's bytes, and skip the redraws after it)
            bar_format="{percentage:3.0f}%|{bar}| {done}/{size} ETA {eta} {speed}"
            if self.narrow
            else "{desc} {percentage:3.0f}%|{bar}| {done}/{size} [{elapsed}<{eta}, {speed}{postfix}]",
        )
        self.line = tqdm(
            total=0,
            file=out,
            position=1,
            leave=False,
            bar_format="{desc}",
            dynamic_ncols=width is None,
            ncols=width,
        )
        self._refresh_files(force=True)

    def _refresh_files(self, force: bool = False) -> None:
        """Redraw the files count and the active line (at most 5 times a second: thousands of small
        files must not turn into thousands of terminal writes)."""
        now = time.monotonic()
        if self.bar is None or (not force and now - self._drawn < 0.2):
            return
        self._drawn = now
        files = f"files {self.done_files}/{self.total_files}"
        doing = self.in_flight()
        line = "; ".join(part for part in (files if self.narrow else "", doing) if part)
        with self._draw:
            if self.bar is None:
                return
            self.bar.set_postfix_str(files, refresh=False)
            self.line.set_description_str(f"  {line}" if line else "", refresh=True)

    def file_started(self, job: FileJob) -> None:
        super().file_started(job)
        self._refresh_files()

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        if self._bar_update(nbytes):
            self._refresh_files()

    def file_waiting(self, job: FileJob) -> None:
        super().file_waiting(job)
        self._refresh_files(force=True)

    def resumed(self, nbytes: int) -> None:
        super().resumed(nbytes)
        self._bar_update(nbytes)

    def _bar_update(self, nbytes: int) -> bool:
        """Move the bar by `nbytes`; False: there is no bar (yet, or any more)."""
        if self.bar is None:
            return False
        with self._draw:
            if self.bar is not None:  # (closed meanwhile by another thread)
                self.bar.update(nbytes)
        return True

    def file_done(self, job: FileJob, how: str) -> None:
        super().file_done(job, how)
        if how != "fetched" and self.bar is not None:  # installed by another process, or linked
            with self._draw:
                if self.bar is not None:
                    self.bar.update(job.size)
        self._refresh_files()

    def message(self, text: str) -> None:
        """Wrapped to the terminal's width: a line the terminal wraps itself would break the bar's redraw."""
        out = self.stream or sys.stderr
        lines = wrap_lines(shown(text, self.secrets), _columns(out))
        if self.bar is not None:
            with self._draw:
                for line in lines:
                    self.bar.write(line, file=out)
        else:
            print("\n".join(lines), file=out, flush=True)

    def close(self) -> None:
        with self._draw:
            if self.line is not None:
                self.line.close()
                self.line = None
            if self.bar is not None:
                self.bar.set_postfix_str(f"files {self.done_files}/{self.total_files}", refresh=False)
                self.bar.close()
                self.bar = None


class JsonProgress(LineProgress):
    """`--json`: one JSON object per line on stdout (plan, file, progress, retry, warning, waiting, log,
    summary); nothing else, and nothing on stderr (the log's records are `log` events: `JsonLogHandler`).
    A `progress` event comes at least every second while the transfer runs, so a tool watching a
    multi-GB file sees bytes move between two `file` events."""

    def __init__(self, secrets: Secrets | None = None, stream: IO[str] | None = None) -> None:
        interval = min(JSON_PROGRESS_INTERVAL, settings.progress_interval())
        super().__init__(secrets, interval=interval, stream=stream)

    def tick(self) -> None:
        with self._lock:
            done, total, files, total_files = (
                self.done_bytes,
                self.total_bytes,
                self.done_files,
                self.total_files,
            )
        self.event(
            "progress", done_bytes=done, total_bytes=total, done_files=files, total_files=total_files,
            bytes_per_second=round(self.rate()), active=self.active_names(), waiting=self.waiting_names(),
        )  # fmt: skip

    def event(self, kind: str, **fields: Any) -> None:
        write_json_line({"event": kind, **fields}, self.secrets, self.stream)

    def file_done(self, job: FileJob, how: str) -> None:
        super().file_done(job, how)
        repo, _, path = job.label.partition(":")
        self.event(
            "file", repo=repo, path=path, size=job.size, etag=job.etag, result=how,
            done_files=self.done_files, total_files=self.total_files,
        )  # fmt: skip

    def retry(self, message: str) -> None:
        self.event("retry", message=message)

    def message(self, text: str) -> None:
        """Human lines stay off stdout: the plan and warnings arrive as their own events."""


def make_progress(mode: str, secrets: Secrets) -> Progress:
    """`mode`: auto | tty | lines | quiet | json (`auto`: a bar when stderr is a terminal, else lines);
    `secrets`: the run's, which every line it shows is redacted with."""
    if mode == "auto":
        # HF_HUB_DISABLE_PROGRESS_BARS: no bar, but the periodic lines a log would get
        mode = "tty" if sys.stderr.isatty() and not settings.progress_bars_disabled() else "lines"
    displays: dict[str, type[Progress]] = {
        "tty": TtyProgress,
        "lines": LineProgress,
        "quiet": QuietProgress,
        "json": JsonProgress,
    }
    return displays[mode](secrets)
