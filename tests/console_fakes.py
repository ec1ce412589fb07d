"""A fake console backend (state in fields, no Ray) and a console served by a real
uvicorn in a thread, for the console's unit tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from estarter.console.api import Console
from estarter.console.auth import Gate
from estarter.console.hub import Hub
from estarter.errors import NotFound

TOKEN = "operator-token-for-tests-0123456789"
METRICS_TOKEN = "metrics-token-for-tests-0123456789"


class FakeBackend:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.rows: dict[str, dict[str, Any]] = {}
        self.pending_rows: list[dict[str, Any]] = []
        self.granted: dict[str, set[str]] = {}
        self.notes: list[dict[str, Any]] = []
        self.event_log: list[dict[str, Any]] = []
        self.log_lines: dict[str, list[str]] = {}
        self.log_notes: dict[str, str] = {}  # apps whose last run's log is lost
        self.actions: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def add_app(self, app_id: str, name: str = "", state: str = "installed",
                **extra: Any) -> None:
        self.rows[app_id] = {"appId": app_id, "name": name or app_id, "version": "1.0.0",
                             "runtime": "python", "installed": True, "state": state,
                             "pid": None, "node": None, "startedAt": None, "restarts": 0,
                             "cpuSeconds": None, "memoryBytes": None, "metrics": None,
                             "droppedLogLines": 0, "exit": None, "runId": None, **extra}

    def emit(self, kind: str, app_id: str | None, **fields: Any) -> None:
        with self._cond:
            self.event_log.append({"seq": len(self.event_log) + 1, "time": time.time(),
                                   "event": kind, "appId": app_id, **fields})
            self._cond.notify_all()

    # -- Backend -------------------------------------------------------------

    def apps(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows.values()]

    def app(self, app_id: str) -> dict[str, Any]:
        if app_id not in self.rows:
            raise NotFound(f"no app {app_id}")
        return {"appId": app_id, "manifest": {"id": app_id, "name": self.rows[app_id]["name"]},
                "permissions": {"requested": ["fs.write", "ui.notification"],
                                "granted": sorted(self.granted.get(app_id, set())),
                                "pending": [p for p in self.pending_rows
                                            if p["appId"] == app_id]},
                "runtimeInfo": None}

    def _set(self, app_id: str, state: str, action: str) -> dict[str, Any]:
        if app_id not in self.rows:
            raise NotFound(f"no app {app_id}")
        self.actions.append((action, app_id))
        self.rows[app_id]["state"] = state
        self.emit("launched" if state == "running" else "exit", app_id)
        return dict(self.rows[app_id])

    def launch(self, app_id: str) -> dict[str, Any]:
        return self._set(app_id, "running", "launch")

    def stop(self, app_id: str) -> dict[str, Any]:
        return self._set(app_id, "exited", "stop")

    def restart(self, app_id: str) -> dict[str, Any]:
        return self._set(app_id, "running", "restart")

    def uninstall(self, app_id: str) -> None:
        self.actions.append(("uninstall", app_id))
        self.rows.pop(app_id, None)

    def install(self, package: Path) -> dict[str, Any]:
        from estarter.apps import install

        row = install(self.home, package, [], False)
        self.add_app(row["appId"], row["name"])
        return row

    def grant(self, app_id: str, permission: str) -> list[str]:
        self.actions.append(("grant", f"{app_id}:{permission}"))
        self.granted.setdefault(app_id, set()).add(permission)
        self.pending_rows = [p for p in self.pending_rows
                             if (p["appId"], p["permission"]) != (app_id, permission)]
        return sorted(self.granted[app_id])

    def revoke(self, app_id: str, permission: str) -> list[str]:
        self.actions.append(("revoke", f"{app_id}:{permission}"))
        self.granted.setdefault(app_id, set()).discard(permission)
        return sorted(self.granted[app_id])

    def deny(self, app_id: str, permission: str) -> int:
        self.actions.append(("deny", f"{app_id}:{permission}"))
        before = len(self.pending_rows)
        self.pending_rows = [p for p in self.pending_rows
                             if (p["appId"], p["permission"]) != (app_id, permission)]
        return before - len(self.pending_rows)

    def pending(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self.pending_rows]

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.notes[-limit:]

    def logs(self, app_id: str, lines: int = 200) -> dict[str, Any]:
        out: dict[str, Any] = {"lines": self.log_lines.get(app_id, [])[-lines:]}
        if app_id in self.log_notes:
            out["note"] = self.log_notes[app_id]
        return out

    def events(self, since: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.event_log) <= since and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            out = self.event_log[since:]
        return {"events": out, "next": since + len(out), "missed": 0}

    def cursor(self) -> int:
        return len(self.event_log)

    def close(self) -> None:
        pass


def make_console(backend: FakeBackend, port: int = 8470) -> Console:
    return Console(backend, Gate(TOKEN, METRICS_TOKEN), "127.0.0.1", port,
                   hub=Hub(backend, poll=0.05, refresh=0.2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(backend: FakeBackend) -> Iterator[str]:
    """The console on a real uvicorn in a thread; stopped (and joined) after."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_console(backend, port), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True, name="test-console")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "console did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive()
