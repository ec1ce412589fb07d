"""Reading app logs back: parse the files the supervisors write, filter, merge, follow.

A line of ``$ESTARTER_HOME/logs/APP.log`` (``supervision.LOG_FORMAT``) is
``2026-11-29 10:00:00,123 INFO stdout hello``: local time, level, stream
(``applog.STREAMS``), then the message, escaped already (one message, one line).
Lines written before streams existed have none; they read as stream ``app``.
Rotated files (``APP.log.1`` .. ``.3``, oldest last) are read when ``since`` asks
for older lines. No Ray, no runtime: only files.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .hosting.applog import STREAMS
from .paths import log_file

_STAMP = "%Y-%m-%d %H:%M:%S,%f"
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (DEBUG|INFO|WARNING|ERROR) "
                   rf"(?:({'|'.join(STREAMS)}) )?(.*)$", re.DOTALL)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
BACKUPS = 3  # supervision.LOG_FILE_BACKUPS


@dataclass(frozen=True)
class LogLine:
    """One parsed line. ``time`` is None for a line that is not in the format."""

    app: str
    time: float | None
    level: str
    stream: str
    message: str
    raw: str

    def to_json(self) -> dict[str, Any]:
        stamp = (datetime.fromtimestamp(self.time).astimezone().isoformat(
            timespec="milliseconds") if self.time is not None else None)
        return {"time": stamp, "app": self.app, "stream": self.stream, "level": self.level,
                "message": self.message}


def parse(raw: str, app: str) -> LogLine:
    """A file line as a ``LogLine``; a line not in the format keeps its text as message."""
    m = _LINE.match(raw)
    if m is None:
        return LogLine(app, None, "info", "app", raw, raw)
    stamp, level, stream, message = m.groups()
    try:
        when: float | None = datetime.strptime(stamp, _STAMP).timestamp()
    except ValueError:
        when = None
    return LogLine(app, when, level.lower(), stream or "app", message, raw)


def parse_since(text: str, now: Callable[[], float] = time.time) -> float:
    """``10m``, ``90s``, ``2h``, ``1d`` (that long ago) or an ISO 8601 time (local time
    unless it names its offset) as a Unix time. Raises ValueError with the reason."""
    m = _DURATION.match(text.strip())
    if m:
        return now() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: not a duration (10m, 2h, 1d, 30s) or an "
                         "ISO time (2026-11-29T10:00 or 2026-11-29 10:00:00)") from None
    return when.timestamp()


def logged_apps(home: Path) -> list[str]:
    """The ids of apps that have a log file, sorted."""
    folder = log_file(home, "x").parent
    try:
        return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".log"))
    except FileNotFoundError:
        return []


def _files(home: Path, app: str, since: float | None) -> list[Path]:
    """The app's log files, oldest first: the rotated ones only when ``since`` asks."""
    current = log_file(home, app)
    if since is None:
        return [current]
    older = [Path(f"{current}.{n}") for n in range(BACKUPS, 0, -1)]
    return [p for p in older if p.exists()] + [current]


def _read(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.rstrip("\n")
    except FileNotFoundError:
        return


def read(home: Path, apps: Iterable[str], since: float | None = None,
         lines: int | None = 100) -> list[LogLine]:
    """The last ``lines`` lines (None: all) of the apps' logs at or after ``since``,
    merged in time order (a stable sort: an app's lines keep their file order; a
    line without a time takes its predecessor's)."""
    merged: list[tuple[float, LogLine]] = []
    for app in apps:
        last = 0.0
        for path in _files(home, app, since):
            for raw in _read(path):
                line = parse(raw, app)
                last = line.time if line.time is not None else last
                if since is not None and last < since:
                    continue
                merged.append((last, line))
    merged.sort(key=lambda pair: pair[0])
    picked = [line for _, line in merged]
    return picked if lines is None else picked[-lines:] if lines > 0 else []


def follow(home: Path, apps: Callable[[], list[str]], stop: Callable[[], bool],
           poll: float = 0.2, rescan: float = 2.0) -> Iterator[LogLine]:
    """New lines of the logs of ``apps()`` as they are written, across rotations,
    until ``stop()``. ``apps`` is asked again every ``rescan`` seconds (an app that
    first runs later is followed from its first line)."""
    files: dict[str, tuple[Any, int]] = {}  # app -> (open file, inode)
    known: set[str] = set()
    next_scan = 0.0
    first = True
    try:
        while not stop():
            if time.monotonic() >= next_scan:
                for app in apps():
                    if app in known:
                        continue
                    known.add(app)
                    # Apps found later (and files made later) are read from their start.
                    fh = _open(log_file(home, app), end=first)
                    if fh is not None:
                        files[app] = fh
                first = False
                next_scan = time.monotonic() + rescan
            got = False
            for app in sorted(known):
                entry = files.get(app)
                if entry is None:
                    opened = _open(log_file(home, app), end=False)
                    if opened is None:
                        continue
                    files[app] = entry = opened
                fh, inode = entry
                while (raw := fh.readline()):
                    got = True
                    yield parse(raw.rstrip("\n"), app)
                try:
                    rotated = os.stat(log_file(home, app)).st_ino != inode
                except FileNotFoundError:
                    rotated = False
                if rotated:  # the rest of the old file was read above: on to the new one
                    fh.close()
                    del files[app]
                    got = True
            if not got:
                time.sleep(poll)
    finally:
        for fh, _ in files.values():
            fh.close()


def _open(path: Path, end: bool) -> tuple[Any, int] | None:
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - kept by follow
    except FileNotFoundError:
        return None
    if end:
        fh.seek(0, os.SEEK_END)
    return fh, os.fstat(fh.fileno()).st_ino


__all__ = ["LogLine", "follow", "logged_apps", "parse", "parse_since", "read"]
