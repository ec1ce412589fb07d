"""The Ray classes of the kernel and VFS actors, light to load.

Every process that gets a handle to an actor loads its class (Ray builds the
handle's method table from it): each supervisor looks up the kernel and the VFS.
Their classes here are thin: their ``__init__`` imports the real kernel and VFS
(``actors.kernel``, ``actors.vfs``: the kernel core, SQLite, pydantic and the
manifest models) in the actor's own process only. Before, every supervisor
worker loaded all of it: about 10 MiB of its private memory and part of its
start, for each of hundreds of apps.

The kernel's methods are forwarded by name (``KERNEL_METHODS``, checked against
the kernel's public methods by a unit test); ``call``, every app's API call, is
written out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import ray_api
from .options import KERNEL_OPTIONS, VFS_OPTIONS

KERNEL_METHODS = (
    "actors", "adopt", "app_exited", "app_info", "app_log", "app_logs", "app_running", "audit",
    "authenticate", "describe", "event_cursor", "grant", "handle", "is_running",
    "launch", "list_apps", "notifications", "ping", "poll_events", "ps", "push",
    "push_all", "quota_of", "record_of", "recover", "recovery_report", "release",
    "restart", "revoke", "shutdown", "start_services", "statistics", "stop",
    "system_shutdown", "wait",
)


class KernelShell:
    """The kernel actor: ``actors.kernel.RayKernel``, built in the actor's process."""

    def __init__(self, home: str, strict: bool = False,
                 rules: dict[str, Any] | None = None, shared_storage: bool = False) -> None:
        from .kernel import RayKernel

        self.kernel = RayKernel(home, strict, rules, shared_storage)

    def call(self, payload: bytes) -> bytes:
        return self.kernel.call(payload)


def _forward(name: str) -> Callable[..., Any]:
    def method(self: KernelShell, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.kernel, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


for _name in KERNEL_METHODS:
    setattr(KernelShell, _name, _forward(_name))


class VfsShell:
    """The VFS actor: ``actors.vfs.VfsServer``, built in the actor's process."""

    def __init__(self, home: str) -> None:
        from .vfs import VfsServer

        self.server = VfsServer(home)

    def call(self, payload: bytes) -> bytes:
        """One encoded fs.* call (estarter.protocol.kernel_wire); never raises."""
        return self.server.call(payload)

    def set_quota(self, app_id: str, quota_bytes: int) -> None:
        self.server.set_quota(app_id, quota_bytes)

    def flush_audit(self) -> None:
        self.server.flush_audit()

    def ping(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return self.server.describe()


KernelActor = ray_api.remote(KernelShell, KERNEL_OPTIONS)
VfsActor = ray_api.remote(VfsShell, VFS_OPTIONS)
