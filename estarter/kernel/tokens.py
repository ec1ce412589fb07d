"""Per-app tokens for the kernel socket, stored hashed in SQLite.

A token is 32 random bytes; only its SHA-256 is kept, so a copy of the database
does not let anyone in. ``issue`` replaces the app's previous token (which stops
working at once). The kernel identifies a socket client by its token alone.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .permissions import connect

PREFIX = "est_"
MAX_TOKEN_CHARS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
  app_id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
"""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    def __init__(self, db_path: Path, clock: Callable[[], float] = time.time) -> None:
        self._db = connect(db_path)
        self._db.executescript(_SCHEMA)
        self._clock = clock
        self._lock = threading.Lock()

    def issue(self, app_id: str) -> str:
        """A new token for ``app_id``; the old one no longer works. Shown once."""
        token = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO tokens VALUES (?, ?, ?)",
                             (app_id, _digest(token), self._clock()))
        return token

    def app_of(self, token: object) -> str | None:
        """The app a token belongs to, or None. Read from SQLite every time, so a
        token issued or replaced by the CLI counts at once."""
        if not isinstance(token, str) or not token.startswith(PREFIX) \
                or len(token) > MAX_TOKEN_CHARS:
            return None
        with self._lock:
            row = self._db.execute("SELECT app_id FROM tokens WHERE hash=?",
                                   (_digest(token),)).fetchone()
        return None if row is None else str(row[0])

    def revoke(self, app_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM tokens WHERE app_id=?",
                                    (app_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
