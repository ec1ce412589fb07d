"""The kernel's handlers: system.*, permission.*, ui.*, registry.*, ipc.* (process.*
in processes.py; fs.* is the VFS service's, fs_service.py). Each handler only
unpacks params; the class does the work. Handlers get the collaborators they use
(``Services``), never the whole kernel."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..version import __version__
from .events import EventLog
from .grants import PermissionLifecycle
from .ipc import Ipc
from .registry import Registry
from .router import CallContext, Router, opt, req
from .ui import Clipboard, Notifications

Params = dict[str, Any]
LOG_LEVELS = ("debug", "info", "warning", "error")


class Grants(Protocol):
    def granted(self, app_id: str) -> frozenset[str]: ...


@dataclass(frozen=True)
class Services:
    """What the handlers of this module use."""

    node: str
    clock: Callable[[], float]
    events: EventLog
    app_logs: Callable[[str, list[tuple[str, str, str]]], None]
    notices: Notifications
    permissions: Grants
    lifecycle: PermissionLifecycle
    registry: Registry
    ipc: Ipc
    clipboard: Clipboard


def register(router: Router, services: Services) -> None:
    _register_system(router, services)
    _register_services(router, services)


def _register_system(router: Router, kernel: Services) -> None:
    add = router.add

    def system_info(c: CallContext, p: Params) -> Any:
        import psutil  # imported here: only system.info needs it

        return {"os": f"{platform.system()} {platform.release()}",
                "cpus": os.cpu_count() or 1, "memoryBytes": psutil.virtual_memory().total,
                "version": __version__, "node": kernel.node}

    def notify(c: CallContext, p: Params) -> Any:
        note = kernel.notices.add(c.app_id, req(p, "title"), req(p, "message"),
                                  opt(p, "level", str, "info"))
        kernel.events.append("notification", c.app_id, id=note["id"], title=note["title"],
                             message=note["message"], level=note["level"])
        return {"id": note["id"]}

    def log(c: CallContext, p: Params) -> None:
        level = opt(p, "level", str, "info")
        kernel.app_logs(c.app_id, [(level if level in LOG_LEVELS else "info",
                                    req(p, "message")[:8192], "app")])

    add("system.ping", lambda c, p: {"pong": True, "time": kernel.clock()})
    add("system.time", lambda c, p: {"unixMs": int(kernel.clock() * 1000)})
    add("system.info", system_info)
    # A hosted app's heartbeat is answered by its supervisor, which watches it; a
    # socket client has no supervisor and no healthCheck: answered, not watched.
    add("system.heartbeat", lambda c, p: {"watched": False, "heartbeatSeconds": None})
    add("permission.check", lambda c, p: {
        "granted": req(p, "permission") in kernel.permissions.granted(c.app_id)})
    add("permission.list",
        lambda c, p: {"granted": sorted(kernel.permissions.granted(c.app_id))})
    add("permission.request", lambda c, p: kernel.lifecycle.request(c.app_id, p))
    add("ui.notify", notify)
    add("log", log)


def _register_services(router: Router, kernel: Services) -> None:
    add = router.add
    reg, ipc = kernel.registry, kernel.ipc

    def reg_set(c: CallContext, p: Params) -> Any:
        if "value" not in p:
            req(p, "value")
        ttl = opt(p, "ttlSeconds", (int, float), None)
        return reg.set(c.app_id, req(p, "key"), p["value"], None if ttl is None else float(ttl))

    add("registry.get", lambda c, p: reg.get(c.app_id, req(p, "key")))
    add("registry.list",
        lambda c, p: reg.list(c.app_id, opt(p, "prefix", str, "")))
    add("registry.set", reg_set)
    add("registry.delete", lambda c, p: reg.delete(c.app_id, req(p, "key")))

    def ipc_send(c: CallContext, p: Params) -> Any:
        if "message" not in p:
            req(p, "message")
        return ipc.send(c.app_id, req(p, "to"), p["message"], opt(p, "topic", str, None))

    def ipc_broadcast(c: CallContext, p: Params) -> Any:
        if "message" not in p:
            req(p, "message")
        return ipc.broadcast(c.app_id, req(p, "topic"), p["message"])

    add("ipc.send", ipc_send)
    add("ipc.broadcast", ipc_broadcast)
    add("ipc.subscribe", lambda c, p: ipc.subscribe(c.app_id, req(p, "topic")))
    add("ipc.unsubscribe",
        lambda c, p: ipc.unsubscribe(c.app_id, req(p, "topic")))
    add("ipc.receive",
        lambda c, p: ipc.receive(c.app_id, opt(p, "timeoutMs", int, 0)))

    add("ui.clipboard.get", lambda c, p: kernel.clipboard.get())
    add("ui.clipboard.set",
        lambda c, p: kernel.clipboard.set(req(p, "text")))
