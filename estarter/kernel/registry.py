"""Per-app key-value registry in SQLite, with optional time-to-live.

Values are any JSON, capped by their serialised size; keys are short strings.
Expired entries are invisible at once and deleted lazily (on access and by a
periodic purge), so an expired key never comes back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidParams, QuotaExceeded
from .permissions import connect

MAX_VALUE_BYTES = 1024 * 1024
MAX_KEY_CHARS = 512
MAX_KEYS_PER_APP = 10_000
MAX_LIST_KEYS = 10_000
PURGE_EVERY_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS registry (
  app_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, expires REAL,
  PRIMARY KEY (app_id, key));
CREATE INDEX IF NOT EXISTS registry_expires ON registry (expires) WHERE expires IS NOT NULL;
"""


class Registry:
    """Thread-safe; one SQLite connection guarded by a lock."""

    def __init__(self, db_path: Path, clock: Callable[[], float] = time.time) -> None:
        self._db = connect(db_path)
        self._db.executescript(_SCHEMA)
        self._clock = clock
        self._lock = threading.Lock()
        self._purged_at = 0.0

    def get(self, app_id: str, key: str) -> dict[str, Any]:
        """``{value}``; ``{value: null, found: false}`` for a missing or expired key."""
        _check_key(key)
        now = self._clock()
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM registry WHERE app_id=? AND key=? "
                "AND (expires IS NULL OR expires > ?)", (app_id, key, now)).fetchone()
        if row is None:
            return {"value": None, "found": False}
        return {"value": json.loads(row[0]), "found": True}

    def set(self, app_id: str, key: str, value: Any, ttl: float | None = None) -> dict[str, Any]:
        _check_key(key)
        if ttl is not None and not (0 < ttl <= 10 * 365 * 86400):
            raise InvalidParams("ttlSeconds must be > 0 (and at most ten years)",
                                {"param": "ttlSeconds"})
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidParams("value must be JSON", {"param": "value"}) from None
        if len(text.encode("utf-8")) > MAX_VALUE_BYTES:
            raise QuotaExceeded(f"registry values are capped at {MAX_VALUE_BYTES} bytes of JSON",
                                {"key": key, "max": MAX_VALUE_BYTES})
        now = self._clock()
        expires = now + ttl if ttl is not None else None
        with self._lock:
            self._maybe_purge(now)
            exists = self._db.execute(
                "SELECT 1 FROM registry WHERE app_id=? AND key=?", (app_id, key)).fetchone()
            if exists is None:
                (count,) = self._db.execute(
                    "SELECT COUNT(*) FROM registry WHERE app_id=?", (app_id,)).fetchone()
                if count >= MAX_KEYS_PER_APP:
                    raise QuotaExceeded(f"an app keeps at most {MAX_KEYS_PER_APP} keys",
                                        {"key": key, "max": MAX_KEYS_PER_APP})
            self._db.execute("INSERT OR REPLACE INTO registry VALUES (?, ?, ?, ?)",
                             (app_id, key, text, expires))
        return {}

    def delete(self, app_id: str, key: str) -> dict[str, Any]:
        _check_key(key)
        with self._lock:
            cur = self._db.execute("DELETE FROM registry WHERE app_id=? AND key=?",
                                   (app_id, key))
        return {"deleted": cur.rowcount > 0}

    def list(self, app_id: str, prefix: str = "") -> dict[str, Any]:
        now = self._clock()
        # LIKE would treat % and _ in the prefix as wildcards; a range scan does not.
        hi = prefix + "\U0010ffff"
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM registry WHERE app_id=? AND key >= ? AND key < ? "
                "AND (expires IS NULL OR expires > ?) ORDER BY key LIMIT ?",
                (app_id, prefix, hi, now, MAX_LIST_KEYS)).fetchall()
        return {"keys": [r[0] for r in rows]}

    def forget(self, app_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM registry WHERE app_id=?", (app_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _maybe_purge(self, now: float) -> None:
        if now - self._purged_at < PURGE_EVERY_SECONDS:
            return
        self._purged_at = now
        self._db.execute("DELETE FROM registry WHERE expires IS NOT NULL AND expires <= ?",
                         (now,))


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or "\0" in key:
        raise InvalidParams(f"key must be a non-empty string of at most {MAX_KEY_CHARS} "
                            "characters", {"param": "key"})


__all__ = ["MAX_VALUE_BYTES", "Registry"]
