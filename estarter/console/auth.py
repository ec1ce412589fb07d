"""Who may use the console, and protection against cross-site requests.

- **Operator token**: ``$ESTARTER_HOME/run/operator-token`` (0600, made by ``up``).
  Scripts send it as ``Authorization: Bearer``; a browser posts it once to ``/login``
  and gets a session cookie (HttpOnly, SameSite=Strict, random id, kept in this
  process's memory only). The token is never put in a URL, a cookie or a log line.
- **Metrics token**: ``run/metrics-token`` (0600), read-only: it opens ``/metrics``
  and nothing else, so a Prometheus server holds no operator rights.
- **CSRF**: a state change is never a GET. Every other method must come with an
  ``Origin`` (when the browser sends one) naming this very host, and, when the
  caller is a cookie session, the session's CSRF token in ``X-Estarter-CSRF`` (a
  header no cross-site form or image can set; a cross-site ``fetch`` that sets it
  is preflighted, and the console answers no CORS). Bearer callers need no CSRF
  token: a browser never attaches ``Authorization`` by itself.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..paths import run_dir

OPERATOR_TOKEN_FILE = "operator-token"
METRICS_TOKEN_FILE = "metrics-token"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000
CSRF_HEADER = "x-estarter-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_path(home: Path, name: str = OPERATOR_TOKEN_FILE) -> Path:
    return run_dir(home) / name


def ensure_token(home: Path, name: str = OPERATOR_TOKEN_FILE) -> Path:
    """The token file, created once (0600, 256 random bits). Idempotent."""
    path = token_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_token(path: Path) -> str:
    return path.read_text().strip()


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str
    expires: float


class Gate:
    """Checks credentials. Holds the tokens (read once at start) and the sessions."""

    def __init__(self, operator_token: str, metrics_token: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if len(operator_token) < 16:
            raise ValueError("the operator token is too short")
        self._operator = operator_token.encode()
        self._metrics = metrics_token.encode() if metrics_token else None
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    # -- tokens -----------------------------------------------------------------

    def is_operator_token(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._operator)

    def is_metrics_token(self, token: str | None) -> bool:
        return (token is not None and self._metrics is not None
                and hmac.compare_digest(token.encode(), self._metrics))

    # -- sessions ---------------------------------------------------------------

    def login(self, token: str | None) -> Session | None:
        """A new session for the right operator token, else None."""
        if not self.is_operator_token(token):
            return None
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                          now + SESSION_SECONDS)
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if v.expires <= now]:
                del self._sessions[sid]
            if len(self._sessions) >= MAX_SESSIONS:  # drop the oldest
                oldest = min(self._sessions.values(), key=lambda v: v.expires)
                del self._sessions[oldest.sid]
            self._sessions[session.sid] = session
        return session

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            found = self._sessions.get(sid)
        if found is None or found.expires <= self._clock():
            return None
        return found

    def logout(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def same_origin(origin: str | None, host: str | None) -> bool:
    """Does ``Origin`` name the host the request was sent to? ``null`` and any other
    host are refused; a missing Origin is decided by the caller."""
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
