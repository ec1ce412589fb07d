"""App text on its way to a log: one message is one line, every field capped, a budget.

Everything an app can make us log passes through here: stderr lines and ``log``
notifications of native apps, the wasm ``log`` import and WASI stdout/stderr. So:

* the level is one of ``LEVELS`` (anything else is ``info``): an app cannot make a
  field of its own size (an 8 MiB level once took the kernel to 1.6 GB);
* the message is cut to ``LOG_LINE_MAX`` characters *before* anything else is done
  with it, then newlines and control characters are escaped (``\\n``, ``\\x1b``;
  at most 4x longer): one app message is one log line, and a terminal that shows
  the log never receives a raw escape sequence from an app;
* :class:`BoundedLog` spends a token bucket of lines and one of bytes per app;
  beyond them lines are dropped and counted, and while a flood lasts one line (at
  most one a second, outside the budget) reports how many were dropped so far.
  Nothing grows with what the app sends.

Every line carries its stream (``STREAMS``): ``stdout`` and ``stderr`` (text the app
wrote there), ``app`` (its ``log`` notifications, the wasm ``log`` import) and
``estarter`` (what the runtime says about the app: run markers, drops, limits).
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import HostContext, TaggedLogSink

LOG_LINE_MAX = 8192  # characters of one message; longer ones are cut
LEVELS = ("debug", "info", "warning", "error")
STREAMS = ("stdout", "stderr", "app", "estarter")
LINES_PER_SECOND = 2000.0  # the default; manifest ``logLinesPerSecond`` sets it per app
LINES_PER_SECOND_MAX = 20000  # what a manifest may ask for at most
# The runtime-wide cap on any app's line rate, read where the app's supervisor runs.
LINES_CAP_ENV = "ESTARTER_LOG_LINES_PER_SECOND_CAP"
BURST_SECONDS = 2.5  # the line bucket holds this many seconds of the rate
LINE_BURST = LINES_PER_SECOND * BURST_SECONDS
BYTES_PER_SECOND = 256 * 1024.0
BYTE_BURST = 4.0 * 1024 * 1024
CUT_MARK = " [cut]"
REPORT_INTERVAL = 1.0  # seconds between two "lines dropped" reports

# C0 controls but tab, DEL, C1 controls, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: Any, limit: int = LOG_LINE_MAX) -> str:
    """``text`` as one printable log line: cut to ``limit`` characters, then escaped.

    Cutting first bounds the work (and memory) spent on a huge message.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text[: limit * 4]).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    text = _CONTROL.sub(_escape, text)
    return text + CUT_MARK if cut else text


def line_rate(wanted: int | float | None, env: dict[str, str] | None = None) -> float:
    """The line rate an app gets: its manifest's ``logLinesPerSecond`` (or the
    default), never above the runtime-wide cap ``$ESTARTER_LOG_LINES_PER_SECOND_CAP``
    (an unset or unreadable cap is ``LINES_PER_SECOND_MAX``)."""
    source = os.environ if env is None else env
    try:
        cap = float(source.get(LINES_CAP_ENV) or LINES_PER_SECOND_MAX)
    except ValueError:
        cap = float(LINES_PER_SECOND_MAX)
    cap = max(1.0, cap)
    return min(float(wanted) if wanted else LINES_PER_SECOND, cap)


def tagged(ctx: HostContext) -> TaggedLogSink:
    """The context's sink for lines that carry their stream (``ctx.log`` without it)."""
    if ctx.tagged_log is not None:
        return ctx.tagged_log
    return lambda level, message, stream: ctx.log(level, message)


def level_of(value: Any) -> str:
    """A level from ``LEVELS``; anything else (a huge string, a number) is ``info``."""
    if isinstance(value, str) and len(value) <= 16:
        value = value.lower()
        if value in LEVELS:
            return value
        if value == "warn":
            return "warning"
    return "info"


class BoundedLog:
    """Lines to an app's log under a line budget and a byte budget; thread-safe.

    ``line`` never raises and never blocks on the sink's failure. ``dropped`` is the
    total of lines dropped so far (reported in the host's ``info()``). The line
    bucket holds ``BURST_SECONDS`` of ``line_rate`` unless ``line_burst`` is given.
    """

    def __init__(self, sink: TaggedLogSink, rate: float = BYTES_PER_SECOND,
                 burst: float = BYTE_BURST, clock: Callable[[], float] = time.monotonic,
                 *, line_rate: float = LINES_PER_SECOND, line_burst: float | None = None,
                 max_line: int = LOG_LINE_MAX) -> None:
        self._sink = sink
        self._rate, self._burst, self._clock = rate, burst, clock
        self._line_rate = line_rate
        self._line_burst = line_burst if line_burst is not None else max(
            1.0, line_rate * BURST_SECONDS)
        self._max_line = max_line
        self._tokens = burst
        self._line_tokens = self._line_burst
        self._last = clock()
        self._unreported = 0
        self._next_report = 0.0
        self.dropped = 0
        self._lock = threading.Lock()

    @property
    def lines_per_second(self) -> float:
        return self._line_rate

    def line(self, level: Any, text: Any, stream: str = "app") -> bool:
        """Log one app message; False if it was dropped by the budget.

        A drop is reported at once if no report was written in the last second
        (else with a later drop or line): the count shows while the flood lasts.
        """
        text = one_line(text, self._max_line)
        level = level_of(level)
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._line_tokens = min(self._line_burst,
                                    self._line_tokens + elapsed * self._line_rate)
            cost = len(text) + 1
            passed = self._tokens >= cost and self._line_tokens >= 1
            if passed:
                self._tokens -= cost
                self._line_tokens -= 1
            else:
                self._unreported += 1
                self.dropped += 1
            unreported = 0
            if self._unreported and now >= self._next_report:  # at most one a second
                unreported, self._unreported = self._unreported, 0
                self._next_report = now + REPORT_INTERVAL
            total = self.dropped
        try:
            if unreported:
                self._sink("warning", f"[{unreported} log lines dropped: over "
                                      f"{self._line_rate:g} lines/s or {self._rate:g} bytes/s; "
                                      f"{total} in all]", "estarter")
            if passed:
                self._sink(level, text, stream if stream in STREAMS else "app")
        except Exception:  # a broken sink must not take the app (or its reader) down
            pass
        return passed


__all__ = ["LEVELS", "LOG_LINE_MAX", "STREAMS", "BoundedLog", "level_of", "line_rate",
           "one_line", "tagged"]


def tail_file(path: Path, lines: int = 100) -> list[str]:
    """The last ``lines`` lines of a log file ([] if there is none yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in collections.deque(fh, maxlen=max(0, lines))]
    except FileNotFoundError:
        return []
