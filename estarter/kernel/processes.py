"""``process.*`` and ``system.shutdown``: apps starting and stopping other apps.

An app launches installed apps by id only (never a host path), and the launched
app gets exactly what the operator granted it before: a launcher cannot pass on
its own permissions or grant new ones.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Protocol

from ..errors import InvalidParams
from .events import EventLog
from .router import CallContext, Router, opt, req


class AppTable(Protocol):
    """The kernel's app table, as these handlers use it."""

    def launch(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
               strict: bool | None = None, node: str | None = None) -> dict[str, Any]: ...

    def stop(self, app_id: str, grace: float = 5.0) -> dict[str, Any]: ...

    def list_apps(self) -> list[dict[str, Any]]: ...

    def app_info(self, app_id: str) -> dict[str, Any]: ...

    def system_shutdown(self) -> None: ...

_APP_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TERMINATE_GRACE_SECONDS = 5.0


def _app_id(params: dict[str, Any]) -> str:
    app_id = req(params, "appId")
    if not _APP_ID.match(app_id):
        raise InvalidParams(f"{app_id!r} is not an app id", {"param": "appId"})
    return str(app_id)


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in ("appId", "state", "pid", "node", "startedAt")}


def register(router: Router, kernel: AppTable, events: EventLog) -> None:
    add = router.add

    def launch(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        rec = kernel.launch(_app_id(p), grants=None, grant_all=False)
        events.append("process.launch", ctx.app_id, target=rec["appId"])
        return _row(rec)

    def terminate(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        grace = float(opt(p, "graceSeconds", (int, float), TERMINATE_GRACE_SECONDS))
        rec = kernel.stop(_app_id(p), max(0.0, min(grace, 30.0)))
        return _row(rec)

    def shutdown(ctx: CallContext, p: dict[str, Any]) -> dict[str, Any]:
        # Answer first, then stop everything (the caller is among the apps stopped).
        events.append("system.shutdown", ctx.app_id)
        threading.Thread(target=kernel.system_shutdown, daemon=True,
                         name="estarter-system-shutdown").start()
        return {}

    add("process.launch", launch)
    add("process.terminate", terminate)
    add("process.list", lambda c, p: [_row(r) for r in kernel.list_apps()])
    add("process.info", lambda c, p: _row(kernel.app_info(_app_id(p))))
    add("system.shutdown", shutdown)
