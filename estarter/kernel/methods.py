"""The one table of kernel methods: every fact about a method that more than one
part of estarter needs, in one place.

- ``permission``: what the caller must hold (None: anyone). The router checks it
  for kernel methods, the VFS service for ``fs.*``.
- ``actor``: who serves it. ``kernel`` (the kernel actor), ``vfs`` (the VFS actor,
  reached straight from the app's supervisor), ``supervisor`` (the app's own
  supervisor answers a hosted app without a kernel round trip; the kernel answers
  socket clients, which no supervisor watches).
- ``blocking``: it may wait (for a message, the operator, another app's start).
  Such calls are served on the kernel's blocking threads and count against the
  per-app cap of waiting calls (``MAX_WAITING_CALLS``), on every path into the
  kernel: supervisors and socket clients alike.
- ``idempotent``: applying it twice has the effect of applying it once, so a call
  whose actor died before answering may be submitted again (``retry_on_restart``).
  The others fail with Unavailable (-32007) instead: the app decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Actor = Literal["kernel", "vfs", "supervisor"]

# Waiting calls one app may have in the kernel at once (blocking methods), and quick
# calls one socket-connected app may have in flight (hosted apps have one: their
# supervisor forwards quick calls one at a time).
MAX_WAITING_CALLS = 8
MAX_QUICK_CALLS = 4


@dataclass(frozen=True)
class MethodSpec:
    name: str
    permission: str | None
    actor: Actor = "kernel"
    blocking: bool = False
    idempotent: bool = True


def _m(name: str, permission: str | None, actor: Actor = "kernel", *,
       blocking: bool = False, idempotent: bool = True) -> MethodSpec:
    return MethodSpec(name, permission, actor, blocking, idempotent)


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    _m("system.ping", None),
    _m("system.time", None),
    _m("system.info", "system.info"),
    _m("system.shutdown", "admin", blocking=True, idempotent=False),
    _m("system.heartbeat", None, "supervisor"),  # the healthCheck watchdog
    _m("log", None, idempotent=False),
    _m("permission.check", None),
    _m("permission.list", None),
    _m("permission.request", None, blocking=True),
    _m("ui.notify", "ui.notification", idempotent=False),
    _m("ui.clipboard.get", "ui.clipboard"),
    _m("ui.clipboard.set", "ui.clipboard"),
    _m("fs.read", "fs.read", "vfs"),
    _m("fs.write", "fs.write", "vfs", idempotent=False),  # append=true is not
    _m("fs.delete", "fs.delete", "vfs", idempotent=False),  # answers NotFound the 2nd time
    _m("fs.mkdir", "fs.write", "vfs"),
    _m("fs.list", "fs.read", "vfs"),
    _m("fs.exists", "fs.read", "vfs"),
    _m("fs.stat", "fs.read", "vfs"),
    _m("registry.get", "fs.read"),
    _m("registry.list", "fs.read"),
    _m("registry.set", "fs.write"),
    _m("registry.delete", "fs.write"),
    _m("ipc.send", "ipc.send", idempotent=False),
    _m("ipc.broadcast", "ipc.broadcast", idempotent=False),
    _m("ipc.subscribe", "ipc.receive"),
    _m("ipc.unsubscribe", "ipc.receive"),
    _m("ipc.receive", "ipc.receive", blocking=True, idempotent=False),
    _m("process.launch", "process.launch", blocking=True, idempotent=False),
    _m("process.terminate", "process.kill", blocking=True, idempotent=False),
    _m("process.list", "system.info"),
    _m("process.info", "system.info"),
)}

BLOCKING_METHODS = frozenset(n for n, s in METHODS.items() if s.blocking)
VFS_METHODS = frozenset(n for n, s in METHODS.items() if s.actor == "vfs")
SUPERVISOR_METHODS = frozenset(n for n, s in METHODS.items() if s.actor == "supervisor")


def spec_of(method: str) -> MethodSpec | None:
    return METHODS.get(method) if isinstance(method, str) else None


def is_blocking(method: str) -> bool:
    spec = spec_of(method)
    return spec is not None and spec.blocking


def retry_on_restart(method: str, params: object = None) -> bool:
    """May a call whose actor died before answering be submitted again?"""
    spec = spec_of(method)
    if spec is None:
        return True  # unknown: it is answered MethodNotFound, which is safe to repeat
    if method == "fs.write":
        return not (isinstance(params, dict) and params.get("append"))
    return spec.idempotent
