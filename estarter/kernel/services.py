"""The kernel's handlers: system.*, permission.*, ui.*, registry.*, ipc.* (process.*
in processes.py; fs.* is the VFS service's, fs_service.py). Each handler only
unpacks params; the class does the work."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

from ..version import __version__
from . import processes
from .router import CallContext, opt, req

if TYPE_CHECKING:
    from .core import Kernel

Params = dict[str, Any]
LOG_LEVELS = ("debug", "info", "warning", "error")


def register(kernel: Kernel) -> None:
    _register_system(kernel)
    _register_services(kernel)
    processes.register(kernel)


def _register_system(kernel: Kernel) -> None:
    add = kernel.router.add

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
                                    req(p, "message")[:8192])])

    add("system.ping", lambda c, p: {"pong": True, "time": kernel.clock()})
    add("system.time", lambda c, p: {"unixMs": int(kernel.clock() * 1000)})
    add("system.info", system_info)
    add("permission.check", lambda c, p: {
        "granted": req(p, "permission") in kernel.permissions.granted(c.app_id)})
    add("permission.list",
        lambda c, p: {"granted": sorted(kernel.permissions.granted(c.app_id))})
    add("permission.request", lambda c, p: kernel.lifecycle.request(c.app_id, p))
    add("ui.notify", notify)
    add("log", log)


def _register_services(kernel: Kernel) -> None:
    add = kernel.router.add
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
