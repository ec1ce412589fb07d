"""The kernel's method table: system.*, permission.*, ui.*, fs.*, registry.*, ipc.*
(process.* in processes.py). Each handler only unpacks params; the class does the work."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

from .. import __version__
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

    add("system.ping", None, lambda c, p: {"pong": True, "time": kernel.clock()})
    add("system.time", None, lambda c, p: {"unixMs": int(kernel.clock() * 1000)})
    add("system.info", "system.info", system_info)
    add("permission.check", None, lambda c, p: {
        "granted": req(p, "permission") in kernel.permissions.granted(c.app_id)})
    add("permission.list", None,
        lambda c, p: {"granted": sorted(kernel.permissions.granted(c.app_id))})
    add("permission.request", None, lambda c, p: kernel.lifecycle.request(c.app_id, p))
    add("ui.notify", "ui.notification", notify)
    add("log", None, log)


def _register_services(kernel: Kernel) -> None:
    add = kernel.router.add
    vfs, reg, ipc = kernel.vfs, kernel.registry, kernel.ipc

    def fs_read(c: CallContext, p: Params) -> Any:
        return vfs.read(c.app_id, req(p, "path"), opt(p, "encoding", str, "text"),
                        opt(p, "offset", int, 0), opt(p, "length", int, None))

    def fs_write(c: CallContext, p: Params) -> Any:
        return vfs.write(c.app_id, req(p, "path"), opt(p, "text", str, None),
                         opt(p, "data", str, None), opt(p, "append", bool, False))

    add("fs.read", "fs.read", fs_read)
    add("fs.write", "fs.write", fs_write)
    add("fs.delete", "fs.delete", lambda c, p: vfs.delete(c.app_id, req(p, "path")))
    add("fs.mkdir", "fs.write", lambda c, p: vfs.mkdir(c.app_id, req(p, "path")))
    add("fs.list", "fs.read", lambda c, p: vfs.list(c.app_id, req(p, "path")))
    add("fs.exists", "fs.read", lambda c, p: vfs.exists(c.app_id, req(p, "path")))
    add("fs.stat", "fs.read", lambda c, p: vfs.stat(c.app_id, req(p, "path")))

    def reg_set(c: CallContext, p: Params) -> Any:
        if "value" not in p:
            req(p, "value")
        ttl = opt(p, "ttlSeconds", (int, float), None)
        return reg.set(c.app_id, req(p, "key"), p["value"], None if ttl is None else float(ttl))

    add("registry.get", "fs.read", lambda c, p: reg.get(c.app_id, req(p, "key")))
    add("registry.list", "fs.read",
        lambda c, p: reg.list(c.app_id, opt(p, "prefix", str, "")))
    add("registry.set", "fs.write", reg_set)
    add("registry.delete", "fs.write", lambda c, p: reg.delete(c.app_id, req(p, "key")))

    def ipc_send(c: CallContext, p: Params) -> Any:
        if "message" not in p:
            req(p, "message")
        return ipc.send(c.app_id, req(p, "to"), p["message"], opt(p, "topic", str, None))

    def ipc_broadcast(c: CallContext, p: Params) -> Any:
        if "message" not in p:
            req(p, "message")
        return ipc.broadcast(c.app_id, req(p, "topic"), p["message"])

    add("ipc.send", "ipc.send", ipc_send)
    add("ipc.broadcast", "ipc.broadcast", ipc_broadcast)
    add("ipc.subscribe", "ipc.receive", lambda c, p: ipc.subscribe(c.app_id, req(p, "topic")))
    add("ipc.unsubscribe", "ipc.receive",
        lambda c, p: ipc.unsubscribe(c.app_id, req(p, "topic")))
    add("ipc.receive", "ipc.receive",
        lambda c, p: ipc.receive(c.app_id, opt(p, "timeoutMs", int, 0)))

    add("ui.clipboard.get", "ui.clipboard", lambda c, p: kernel.clipboard.get())
    add("ui.clipboard.set", "ui.clipboard",
        lambda c, p: kernel.clipboard.set(req(p, "text")))
