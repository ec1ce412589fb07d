"""What the console asks of a runtime: the ``Backend`` interface and its one real
implementation over ``Runtime`` (connected to the runtime that is up).

The console is a client like the CLI: apps start and stop through the kernel,
grants through the permissions actor (``Runtime.permission_authority``), installs
and uninstalls through ``estarter.apps`` / ``Runtime.uninstall`` (the same checks as
``estarter install``). No rule lives here; this module only gathers rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from ..errors import EstarterError, NotFound

LIVE_STATES = ("starting", "running", "stopping")


class Backend(Protocol):
    home: Path

    def apps(self) -> list[dict[str, Any]]:
        """Every installed app and every app the kernel knows, one row each."""
        ...

    def app(self, app_id: str) -> dict[str, Any]:
        """Manifest, permissions (requested, granted, pending), what was applied."""
        ...

    def launch(self, app_id: str) -> dict[str, Any]: ...

    def stop(self, app_id: str) -> dict[str, Any]: ...

    def restart(self, app_id: str) -> dict[str, Any]: ...

    def uninstall(self, app_id: str) -> None: ...

    def install(self, package: Path) -> dict[str, Any]: ...

    def grant(self, app_id: str, permission: str) -> list[str]: ...

    def revoke(self, app_id: str, permission: str) -> list[str]: ...

    def deny(self, app_id: str, permission: str) -> int: ...

    def pending(self) -> list[dict[str, Any]]: ...

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def logs(self, app_id: str, lines: int = 200) -> dict[str, Any]:
        """``{"lines": [...]}``, with a ``note`` when the lines are lost."""

    def events(self, since: int, timeout: float) -> dict[str, Any]: ...

    def cursor(self) -> int: ...

    def close(self) -> None: ...


class RuntimeBackend:
    """The console's backend over a ``Runtime`` (``Runtime.connect`` for ``up``)."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.home: Path = runtime.home
        self._authority: Any = None

    def _pm(self) -> Any:
        """The permissions actor (looked up once), or local mode's manager."""
        if self._authority is None:
            self._authority = self.rt.permission_authority()
        return self._authority

    def apps(self) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for inst in self.rt.list_installed():
            rows[inst["appId"]] = {
                "appId": inst["appId"], "name": inst["name"], "version": inst["version"],
                "runtime": inst["runtime"], "installed": True, "state": inst["state"],
                "exit": inst.get("exit"), "pid": None, "node": None, "startedAt": None,
                "restarts": 0, "cpuSeconds": None, "memoryBytes": None, "metrics": None,
                "droppedLogLines": 0, "runId": None}
        # One kernel call: ``Kernel.ps`` asks every live app's supervisor at once,
        # with a bound. The console refreshes this every second while a page is open;
        # one ``info`` per app, in turn, cost 100 round trips a second at 100 apps.
        for rec in self.rt.kernel.ps():
            row = rows.setdefault(rec["appId"], {
                "appId": rec["appId"], "name": rec["appId"], "version": "",
                "runtime": rec.get("runtime") or "", "installed": False})
            row.update({k: rec.get(k) for k in (
                "state", "pid", "node", "startedAt", "exit", "runId", "cpuSeconds",
                "memoryBytes", "metrics", "restartAt")})
            row["restarts"] = rec.get("restarts") or 0
            row["droppedLogLines"] = rec.get("droppedLogLines") or 0
        return sorted(rows.values(), key=lambda r: r["appId"])

    def app(self, app_id: str) -> dict[str, Any]:
        from ..apps import describe

        try:
            out = describe(self.home, app_id)
        except EstarterError:
            out = {"appId": app_id, "manifest": None, "installed": None}
        try:
            info = self.rt.info(app_id)
        except NotFound:
            info = None
        pm = self._pm()
        out["permissions"] = {"requested": sorted(pm.requested(app_id)),
                              "granted": sorted(pm.granted(app_id)),
                              "pending": pm.pending(app_id)}
        if out.get("manifest") is None and info is None:
            raise NotFound(f"no app {app_id}", {"appId": app_id})
        out["runtimeInfo"] = info
        return out

    def launch(self, app_id: str) -> dict[str, Any]:
        return dict(self.rt.launch(app_id).record)

    def stop(self, app_id: str) -> dict[str, Any]:
        self.rt.stop(app_id, 5.0)
        return dict(self.rt.info(app_id))

    def restart(self, app_id: str) -> dict[str, Any]:
        return dict(self.rt.restart(app_id, 5.0).record)

    def uninstall(self, app_id: str) -> None:
        self.rt.uninstall(app_id)

    def install(self, package: Path) -> dict[str, Any]:
        return dict(self.rt.install(package))

    def grant(self, app_id: str, permission: str) -> list[str]:
        return sorted(self._pm().grant(app_id, [permission], by="console"))

    def revoke(self, app_id: str, permission: str) -> list[str]:
        return sorted(self._pm().revoke(app_id, [permission],
                                                            by="console"))

    def deny(self, app_id: str, permission: str) -> int:
        return int(self._pm().deny(app_id, [permission], by="console"))

    def pending(self) -> list[dict[str, Any]]:
        return list(self._pm().pending())

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.rt.notifications(limit))

    def logs(self, app_id: str, lines: int = 200) -> dict[str, Any]:
        got = self.rt.app_log(app_id, lines)
        out: dict[str, Any] = {"lines": list(got.get("lines", []))}
        if got.get("note"):
            out["note"] = str(got["note"])
        return out

    def events(self, since: int, timeout: float) -> dict[str, Any]:
        return dict(self.rt.events(since, timeout))

    def cursor(self) -> int:
        return int(self.rt.event_cursor())

    def close(self) -> None:
        self.rt.shutdown()


def uptime(row: dict[str, Any], now: float | None = None) -> float | None:
    started = row.get("startedAt")
    if not started or row.get("state") not in (*LIVE_STATES, "restarting"):
        return None
    return max(0.0, (now or time.time()) - float(started))
