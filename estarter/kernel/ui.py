"""``ui.notify`` (persisted, bounded) and the kernel-held clipboard."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidParams
from .permissions import connect

MAX_NOTIFICATIONS = 1000
MAX_CLIPBOARD_CHARS = 1024 * 1024
LEVELS = ("info", "success", "warning", "error")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, app_id TEXT NOT NULL,
  title TEXT NOT NULL, message TEXT NOT NULL, level TEXT NOT NULL);
"""


class Notifications:
    """Kept in SQLite so ``estarter notifications`` lists them after the runtime is
    gone; the newest ``MAX_NOTIFICATIONS`` are kept."""

    def __init__(self, db_path: Path, clock: Callable[[], float] = time.time) -> None:
        self._db = connect(db_path)
        self._db.executescript(_SCHEMA)
        self._clock = clock
        self._lock = threading.Lock()

    def add(self, app_id: str, title: str, message: str, level: str = "info") -> dict[str, Any]:
        if level not in LEVELS:
            raise InvalidParams(f"level must be one of {', '.join(LEVELS)}", {"param": "level"})
        if len(title) > 200 or len(message) > 4000:
            raise InvalidParams("title or message too long (200 / 4000 characters)")
        now = self._clock()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO notifications (time, app_id, title, message, level) "
                "VALUES (?, ?, ?, ?, ?)", (now, app_id, title, message, level))
            nid = int(cur.lastrowid or 0)
            if nid % 100 == 0:  # trim now and then, not on every insert
                self._db.execute("DELETE FROM notifications WHERE id <= ?",
                                 (nid - MAX_NOTIFICATIONS,))
        return {"id": nid, "appId": app_id, "title": title, "message": message,
                "level": level, "time": now}

    def list(self, limit: int = 100, app_id: str | None = None) -> list[dict[str, Any]]:
        limit = max(0, min(limit, MAX_NOTIFICATIONS))
        sql = "SELECT id, time, app_id, title, message, level FROM notifications"
        args: tuple[Any, ...] = ()
        if app_id is not None:
            sql += " WHERE app_id=?"
            args = (app_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        keys = ("id", "time", "appId", "title", "message", "level")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Clipboard:
    """One clipboard for all apps of this kernel, like a desktop's; size-capped."""

    def __init__(self) -> None:
        self._text = ""
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        with self._lock:
            return {"text": self._text}

    def set(self, text: str) -> dict[str, Any]:
        if len(text) > MAX_CLIPBOARD_CHARS:
            raise InvalidParams(f"the clipboard holds at most {MAX_CLIPBOARD_CHARS} characters",
                                {"param": "text"})
        with self._lock:
            self._text = text
        return {}
