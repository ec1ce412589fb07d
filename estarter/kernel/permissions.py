"""PermissionManager: who may do what, persisted in SQLite, every decision audited.

Manifest permissions are *requested*. What is inside ``basic`` is granted without
asking; anything beyond needs an operator grant, which persists. The effective set
of an app is ``requested & (basic | operator grants)``; a revocation removes an
operator grant (or denies a basic one explicitly) and counts from the next call.

Other processes change the same database (``estarter permissions`` while a runtime
runs, in local mode or in a Ray kernel actor). Every check first reads SQLite's
``PRAGMA data_version``, which changes exactly when another connection has
committed: a few microseconds, and a revocation made anywhere counts on the very
next call, with no polling interval to wait out.

The audit is bounded. Allowed checks, the bulk of it (one per API call), are one
row per app and permission in ``audit_allowed`` with a count, the first and last
time and the last method; every other decision (denied, granted, revoked, a
request's outcome) is a row of ``audit``, and each app keeps its newest
``AUDIT_ROWS_PER_APP`` of those: a busy app costs a few rows, not gigabytes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import devices
from .. import permissions as names
from ..errors import InvalidParams, NotSupported

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
  app_id TEXT NOT NULL, permission TEXT NOT NULL, state TEXT NOT NULL,
  changed_at REAL NOT NULL, PRIMARY KEY (app_id, permission));
CREATE TABLE IF NOT EXISTS requested (
  app_id TEXT NOT NULL, permission TEXT NOT NULL, PRIMARY KEY (app_id, permission));
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, app_id TEXT NOT NULL,
  permission TEXT NOT NULL, method TEXT NOT NULL, decision TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_app ON audit (app_id, id);
CREATE TABLE IF NOT EXISTS audit_allowed (
  app_id TEXT NOT NULL, permission TEXT NOT NULL, method TEXT NOT NULL,
  count INTEGER NOT NULL, first_time REAL NOT NULL, last_time REAL NOT NULL,
  PRIMARY KEY (app_id, permission));
CREATE TABLE IF NOT EXISTS pending (
  id INTEGER PRIMARY KEY AUTOINCREMENT, app_id TEXT NOT NULL, permission TEXT NOT NULL,
  reason TEXT NOT NULL, created_at REAL NOT NULL, decision TEXT);
"""
AUDIT_FLUSH_ROWS = 200  # decisions buffered in memory before they are written
AUDIT_ROWS_PER_APP = 10000  # rows of `audit` kept per app (allowed checks are aggregated)


def connect(path: Path) -> sqlite3.Connection:
    """A SQLite connection that survives kill -9 with no committed change lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=30, check_same_thread=False,
                         isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class PermissionManager:
    """Thread-safe. ``check`` is the hot path: an in-memory lookup plus a buffered
    audit row; grant changes write through to SQLite before they return."""

    def __init__(self, db_path: Path, clock: Callable[[], float] = time.time, *,
                 audit_rows_per_app: int = AUDIT_ROWS_PER_APP,
                 device_refusals: Callable[[Iterable[str]], dict[str, str]]
                 = devices.refusals) -> None:
        self._db = connect(db_path)
        self._device_refusals = device_refusals
        self._db.executescript(_SCHEMA)
        self._clock = clock
        self._lock = threading.RLock()
        self._audit: list[tuple[float, str, str, str, str]] = []
        # (app, permission) -> [count, first time, last time, last method], not yet written
        self._allowed: dict[tuple[str, str], list[Any]] = {}
        self._unflushed = 0
        self._rows_per_app = audit_rows_per_app
        self._requested: dict[str, frozenset[str]] = {}
        self._effective: dict[str, frozenset[str]] = {}
        self._data_version = -1
        self.refresh()

    # -- decisions -------------------------------------------------------------

    def check(self, app_id: str, permission: str, method: str = "") -> bool:
        """Is ``permission`` granted to ``app_id`` now? Records the decision."""
        with self._lock:
            self._refresh_locked()
            allowed = permission in self._effective_of(app_id)
            self._audit_check(self._clock(), app_id, permission, method, allowed)
        return allowed

    def granted(self, app_id: str) -> frozenset[str]:
        with self._lock:
            self._refresh_locked()
            return self._effective_of(app_id)

    def refresh(self) -> bool:
        """Drop cached decisions if another connection changed the database."""
        with self._lock:
            return self._refresh_locked()

    def requested(self, app_id: str) -> frozenset[str]:
        with self._lock:
            return self._requested.get(app_id, frozenset())

    # -- operator --------------------------------------------------------------

    def register(self, app_id: str, requested: Iterable[str]) -> None:
        """Record what an app's manifest requests (at install or launch)."""
        req = frozenset(requested)
        with self._lock, self._tx():
            self._db.execute("DELETE FROM requested WHERE app_id=?", (app_id,))
            self._db.executemany("INSERT INTO requested VALUES (?, ?)",
                                 [(app_id, p) for p in sorted(req)])
            self._requested[app_id] = req
            self._effective.pop(app_id, None)

    def grant(self, app_id: str, perms: Iterable[str], by: str = "operator") -> frozenset[str]:
        """Grant permissions (names or bundles); returns the effective set. Open
        requests of the app for them are answered granted.

        A device permission (``names.DEVICES``) this host has no device for is
        refused: NotSupported naming it and the reason, and nothing is granted."""
        return self._set(app_id, perms, "granted", by)

    def revoke(self, app_id: str, perms: Iterable[str], by: str = "operator") -> frozenset[str]:
        """Revoke permissions; takes effect on the app's next call."""
        return self._set(app_id, perms, "revoked", by)

    def forget(self, app_id: str) -> None:
        """Drop every grant of an uninstalled app (its audit rows stay)."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM grants WHERE app_id=?", (app_id,))
            self._db.execute("DELETE FROM requested WHERE app_id=?", (app_id,))
            self._requested.pop(app_id, None)
            self._effective.pop(app_id, None)

    def grants(self, app_id: str) -> dict[str, str]:
        """Operator decisions for an app: permission -> granted|revoked."""
        with self._lock:
            rows = self._db.execute(
                "SELECT permission, state FROM grants WHERE app_id=? ORDER BY permission",
                (app_id,)).fetchall()
        return dict(rows)

    def audit(self, app_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest decisions, oldest first, in the order they were made (checks
        are buffered and written up to a second late, with their own time).

        Allowed checks come as one entry per permission: ``time`` is the last one,
        ``count`` how many (``firstTime`` the first); other entries have count 1.
        """
        with self._lock:
            self._flush_audit()
            where = " WHERE app_id=?" if app_id is not None else ""
            args: tuple[Any, ...] = (app_id, app_id) if app_id is not None else ()
            rows = self._db.execute(
                "SELECT time, app_id, permission, method, decision, 1, time, id FROM audit"
                + where + " UNION ALL SELECT last_time, app_id, permission, method, "
                "'allowed', count, first_time, 0 FROM audit_allowed" + where
                + " ORDER BY 1 DESC, 8 DESC LIMIT ?", (*args, limit)).fetchall()
        keys = ("time", "appId", "permission", "method", "decision", "count", "firstTime")
        return [dict(zip(keys, row[:7], strict=True)) for row in reversed(rows)]

    def audit_size(self) -> dict[str, int]:
        """Rows the audit holds: ``rows`` (decisions) and ``allowed`` (aggregates)."""
        with self._lock:
            self._flush_audit()
            (rows,) = self._db.execute("SELECT COUNT(*) FROM audit").fetchone()
            (agg,) = self._db.execute("SELECT COUNT(*) FROM audit_allowed").fetchone()
        return {"rows": int(rows), "allowed": int(agg)}

    def record(self, app_id: str, permission: str, method: str, decision: str) -> None:
        """Audit a decision made outside ``check`` (a request, an operator's denial)."""
        with self._lock:
            self._audit.append((self._clock(), app_id, permission, method, decision))
            self._unflushed += 1
            if self._unflushed >= AUDIT_FLUSH_ROWS:
                self._flush_audit()

    def append_audit(self, rows: Iterable[tuple[float, str, str, str, str]],
                     allowed: Iterable[tuple[str, str, str, int, float, float]] = ()) -> None:
        """Audit of checks another process made (``PermissionClient``): decision rows
        (time, app, permission, method, decision) and allowed aggregates (app,
        permission, last method, count, first time, last time)."""
        with self._lock:
            for t, a, p, m, d in rows:
                self._audit_check(float(t), str(a), str(p), str(m), d == "allowed")
            for app, perm, method, count, first, last in allowed:
                agg = self._allowed.get((app, perm))
                if agg is None:
                    self._allowed[(app, perm)] = [int(count), first, last, method]
                else:
                    agg[0] += int(count)
                    agg[1] = min(agg[1], first)
                    if last >= agg[2]:
                        agg[2], agg[3] = last, method
                self._unflushed += 1
            if self._unflushed >= AUDIT_FLUSH_ROWS:
                self._flush_audit()

    # -- permission.request: a row the operator answers ------------------------

    def open_request(self, app_id: str, permission: str, reason: str) -> int:
        with self._lock, self._tx():
            cur = self._db.execute(
                "INSERT INTO pending (app_id, permission, reason, created_at) "
                "VALUES (?, ?, ?, ?)", (app_id, permission, reason, self._clock()))
            return int(cur.lastrowid or 0)

    def request_decision(self, request_id: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT decision FROM pending WHERE id=?",
                                   (request_id,)).fetchone()
        return None if row is None else row[0]

    def close_request(self, request_id: int) -> None:
        """The request was answered or timed out: its row goes."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM pending WHERE id=?", (request_id,))

    def clear_requests(self) -> None:
        """At kernel start: requests of a previous kernel have nobody waiting."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM pending")

    def deny(self, app_id: str, perms: Iterable[str] | None = None,
             by: str = "operator") -> int:
        """Answer the app's open requests (for ``perms``, or all) as denied."""
        wanted: set[str] | None = None
        if perms is not None:
            wanted = set()
            for name in perms:
                wanted |= names.normalize(name)
        with self._lock, self._tx():
            rows = self._db.execute(
                "SELECT id, permission FROM pending WHERE app_id=? AND decision IS NULL",
                (app_id,)).fetchall()
            hit = [(rid, p) for rid, p in rows if wanted is None or p in wanted]
            self._db.executemany("UPDATE pending SET decision='denied' WHERE id=?",
                                 [(rid,) for rid, _ in hit])
            now = self._clock()
            self._db.executemany(
                "INSERT INTO audit (time, app_id, permission, method, decision) "
                "VALUES (?, ?, ?, ?, ?)",
                [(now, app_id, p, f"operator:{by}", "denied") for _, p in hit])
        return len(hit)

    def pending(self, app_id: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT id, app_id, permission, reason, created_at FROM pending "
               "WHERE decision IS NULL")
        args: tuple[Any, ...] = ()
        if app_id is not None:
            sql += " AND app_id=?"
            args = (app_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        keys = ("id", "appId", "permission", "reason", "createdAt")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def flush(self) -> None:
        with self._lock:
            self._flush_audit()

    def close(self) -> None:
        with self._lock:
            self._flush_audit()
            self._db.close()

    # -- internals -------------------------------------------------------------

    def _set(self, app_id: str, perms: Iterable[str], state: str, by: str) -> frozenset[str]:
        expanded: set[str] = set()
        for name in perms:
            try:
                expanded |= names.normalize(name)
            except ValueError as exc:  # bad input from a caller, not a bug here
                raise InvalidParams(str(exc), {"permission": name}) from None
        if state == "granted":
            refused = self._device_refusals(expanded)
            if refused:
                first = min(refused)
                raise NotSupported("; ".join(refused[p] for p in sorted(refused)),
                                   {"permission": first, "refused": refused})
        now = self._clock()
        with self._lock, self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO grants VALUES (?, ?, ?, ?)",
                [(app_id, p, state, now) for p in sorted(expanded)])
            self._db.executemany(
                "INSERT INTO audit (time, app_id, permission, method, decision) "
                "VALUES (?, ?, ?, ?, ?)",
                [(now, app_id, p, f"operator:{by}", state) for p in sorted(expanded)])
            self._effective.pop(app_id, None)
            return self._effective_of(app_id)

    def _refresh_locked(self) -> bool:
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version == self._data_version:
            return False
        self._data_version = version
        requested: dict[str, frozenset[str]] = {}
        for app_id, perm in self._db.execute("SELECT app_id, permission FROM requested"):
            requested[app_id] = requested.get(app_id, frozenset()) | {perm}
        self._requested = requested
        self._effective.clear()
        return True

    def _effective_of(self, app_id: str) -> frozenset[str]:
        cached = self._effective.get(app_id)
        if cached is not None:
            return cached
        decisions = dict(self._db.execute(
            "SELECT permission, state FROM grants WHERE app_id=?", (app_id,)).fetchall())
        requested = self._requested.get(app_id, frozenset())
        allowed = {p for p in requested
                   if decisions.get(p) == "granted"
                   or (p in names.BASIC and decisions.get(p) != "revoked")}
        result = frozenset(allowed)
        self._effective[app_id] = result
        return result

    def _audit_check(self, now: float, app_id: str, permission: str, method: str,
                     allowed: bool) -> None:
        """Buffer one check's decision: allowed ones aggregated, denials as rows."""
        if allowed:
            agg = self._allowed.get((app_id, permission))
            if agg is None:
                self._allowed[(app_id, permission)] = [1, now, now, method]
            else:
                agg[0] += 1
                if now >= agg[2]:
                    agg[2], agg[3] = now, method
        else:
            self._audit.append((now, app_id, permission, method, "denied"))
        self._unflushed += 1
        if self._unflushed >= AUDIT_FLUSH_ROWS:
            self._flush_audit()

    def _flush_audit(self) -> None:
        self._unflushed = 0
        if not self._audit and not self._allowed:
            return
        rows, self._audit = self._audit, []
        allowed, self._allowed = self._allowed, {}
        with self._tx():
            self._db.executemany(
                "INSERT INTO audit (time, app_id, permission, method, decision) "
                "VALUES (?, ?, ?, ?, ?)", rows)
            self._db.executemany(
                "INSERT INTO audit_allowed VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (app_id, permission) DO UPDATE SET "
                "count = count + excluded.count, "
                "first_time = MIN(first_time, excluded.first_time), "
                "method = CASE WHEN excluded.last_time >= last_time "
                "THEN excluded.method ELSE method END, "
                "last_time = MAX(last_time, excluded.last_time)",
                [(app, perm, method, count, first, last)
                 for (app, perm), (count, first, last, method) in allowed.items()])
            for app in {row[1] for row in rows}:
                self._prune(app)

    def _prune(self, app_id: str) -> None:
        """Keep the app's newest ``_rows_per_app`` rows of ``audit``."""
        self._db.execute(
            "DELETE FROM audit WHERE app_id=? AND id <= (SELECT id FROM audit WHERE app_id=? "
            "ORDER BY id DESC LIMIT 1 OFFSET ?)", (app_id, app_id, self._rows_per_app))

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
