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
  beyond them lines are dropped and counted, and one line (at most one a second)
  reports the drop once the budget refills. Nothing grows with what the app sends.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from .base import LogSink

LOG_LINE_MAX = 8192  # characters of one message; longer ones are cut
LEVELS = ("debug", "info", "warning", "error")
LINES_PER_SECOND = 2000.0
LINE_BURST = 5000.0
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
    total of lines dropped so far (reported in the host's ``info()``).
    """

    def __init__(self, sink: LogSink, rate: float = BYTES_PER_SECOND,
                 burst: float = BYTE_BURST, clock: Callable[[], float] = time.monotonic,
                 *, line_rate: float = LINES_PER_SECOND, line_burst: float = LINE_BURST,
                 max_line: int = LOG_LINE_MAX) -> None:
        self._sink = sink
        self._rate, self._burst, self._clock = rate, burst, clock
        self._line_rate, self._line_burst = line_rate, line_burst
        self._max_line = max_line
        self._tokens = burst
        self._line_tokens = line_burst
        self._last = clock()
        self._unreported = 0
        self._next_report = 0.0
        self.dropped = 0
        self._lock = threading.Lock()

    def line(self, level: Any, text: Any) -> bool:
        """Log one app message; False if it was dropped by the budget."""
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
            if self._tokens < cost or self._line_tokens < 1:
                self._unreported += 1
                self.dropped += 1
                return False
            self._tokens -= cost
            self._line_tokens -= 1
            unreported = 0
            if self._unreported and now >= self._next_report:  # at most one a second
                unreported, self._unreported = self._unreported, 0
                self._next_report = now + REPORT_INTERVAL
        try:
            if unreported:
                self._sink("warning", f"[{unreported} log lines dropped: log rate limit]")
            self._sink(level, text)
        except Exception:  # a broken sink must not take the app (or its reader) down
            pass
        return True


__all__ = ["LEVELS", "LOG_LINE_MAX", "BoundedLog", "level_of", "one_line"]
