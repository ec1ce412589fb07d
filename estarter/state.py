"""App records: which apps should be running, with which run and which supervisor.

One row per app in ``kernel.db`` (SQLite, WAL, ``synchronous=FULL``): every method
that changes a row commits before it returns, so a ``kill -9`` at any moment loses
no change that was reported done. A kernel that starts (a new ``estarter up``, or
Ray restarting the kernel actor) reads these rows to find the supervisors that
still run and to relaunch the apps that should run but whose supervisor is gone.

``wanted`` is the operator's intent: set by a launch, cleared by ``stop`` and by an
app's final end; kept by ``estarter down`` (like a service manager, a runtime that
comes back up brings back the apps that were running, per their restart policy).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kernel.permissions import connect
from .paths import home_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS app_records (
  app_id TEXT PRIMARY KEY, run_id INTEGER NOT NULL, ref TEXT NOT NULL,
  wanted INTEGER NOT NULL, supervisor TEXT, restart TEXT NOT NULL,
  state TEXT NOT NULL, exit TEXT, updated_at REAL NOT NULL, node_id TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# A kernel.db of an estarter before the column: the column is added, empty (its
# ended runs' logs are then read on the kernel's node, as that version did).
_ADD_NODE_ID = "ALTER TABLE app_records ADD COLUMN node_id TEXT"


@dataclass(frozen=True)
class AppRow:
    """A snapshot of one app's record."""

    app_id: str
    run_id: int
    ref: str  # what was launched: an installed id or an absolute path
    wanted: bool
    supervisor: str | None  # the supervisor actor's name (Ray mode)
    restart: str  # the manifest's restart policy at launch
    state: str
    exit: dict[str, Any] | None
    updated_at: float
    # Ray's id of the node the run ran on, once it ran (cluster only): where its log
    # file is, for ``estarter logs`` after the kernel restarted.
    node_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"appId": self.app_id, "runId": self.run_id, "ref": self.ref,
                "wanted": self.wanted, "supervisor": self.supervisor,
                "restart": self.restart, "state": self.state, "exit": self.exit,
                "updatedAt": self.updated_at, "nodeId": self.node_id}


_LAUNCHED = ("INSERT OR REPLACE INTO app_records (app_id, run_id, ref, wanted, supervisor, "
             "restart, state, exit, updated_at, node_id) VALUES (?,?,?,1,NULL,?,?,NULL,?,NULL)")


class AppRecords:
    """Thread-safe; each change is one committed transaction. ``close`` is idempotent."""

    def __init__(self, db_path: Path, clock: Callable[[], float] = time.time) -> None:
        self._db = connect(db_path)
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(app_records)")}
        if "node_id" not in columns:
            self._db.execute(_ADD_NODE_ID)
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False

    def next_run_id(self) -> int:
        """A run id never handed out before in this home (survives restarts)."""
        return self._new_run(None)

    def begin_run(self, app_id: str, ref: str, restart: str) -> int:
        """``next_run_id`` and ``launched`` in one commit: a launch waits for one
        synchronous write, not two (each about a millisecond here; issue 15)."""
        return self._new_run((app_id, ref, restart))

    def _new_run(self, launch: tuple[str, str, str] | None) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT value FROM counters WHERE name='run_id'").fetchone()
                top = self._db.execute("SELECT MAX(run_id) FROM app_records").fetchone()
                value = max(row[0] if row else 0, top[0] or 0) + 1
                self._db.execute("INSERT OR REPLACE INTO counters VALUES ('run_id', ?)",
                                 (value,))
                if launch is not None:
                    app_id, ref, restart = launch
                    self._db.execute(_LAUNCHED, (app_id, value, ref, restart, "starting",
                                                 self._clock()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(value)

    def launched(self, app_id: str, run_id: int, ref: str, restart: str) -> None:
        """A launch began: the app is wanted, its supervisor not known yet."""
        self._write(_LAUNCHED, (app_id, run_id, ref, restart, "starting", self._clock()))

    def supervised(self, app_id: str, run_id: int, supervisor: str | None,
                   state: str = "running", node_id: str | None = None) -> None:
        """The run's supervisor; ``node_id``, where it runs, when known (a report
        without one keeps the one recorded: a supervisor restarts its app in place)."""
        self._write("UPDATE app_records SET supervisor=?, state=?, updated_at=?, "
                    "node_id=COALESCE(?, node_id) WHERE app_id=? AND run_id=?",
                    (supervisor, state, self._clock(), node_id, app_id, run_id))

    def ended(self, app_id: str, run_id: int, state: str, exit_info: dict[str, Any],
              keep_wanted: bool = False) -> None:
        """The run's final end, kept for ``inspect``; no longer wanted unless
        ``keep_wanted`` (the runtime is going down, not the app)."""
        self._write("UPDATE app_records SET wanted=wanted*?, state=?, exit=?, updated_at=? "
                    "WHERE app_id=? AND run_id=?",
                    (int(keep_wanted), state, json.dumps(exit_info), self._clock(), app_id,
                     run_id))

    def unwant(self, app_id: str) -> None:
        """The operator stopped the app: do not bring it back on the next start."""
        self._write("UPDATE app_records SET wanted=0, updated_at=? WHERE app_id=?",
                    (self._clock(), app_id))

    def forget(self, app_id: str) -> None:
        self._write("DELETE FROM app_records WHERE app_id=?", (app_id,))

    def get(self, app_id: str) -> AppRow | None:
        rows = self._select("WHERE app_id=?", (app_id,))
        return rows[0] if rows else None

    def all(self) -> list[AppRow]:
        return self._select("ORDER BY app_id", ())

    def wanted(self) -> list[AppRow]:
        return self._select("WHERE wanted=1 ORDER BY app_id", ())

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)  # autocommit: durable when this returns

    def _select(self, where: str, args: tuple[Any, ...]) -> list[AppRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT app_id, run_id, ref, wanted, supervisor, restart, state, exit, "
                f"updated_at, node_id FROM app_records {where}", args).fetchall()
        return [AppRow(r[0], int(r[1]), r[2], bool(r[3]), r[4], r[5], r[6],
                       json.loads(r[7]) if r[7] else None, float(r[8]), r[9]) for r in rows]


__all__ = ["AppRecords", "AppRow", "home_key"]
