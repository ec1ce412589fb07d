"""The kernel actor, and the spawner that gives each app a supervisor actor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from estarter.errors import Busy, EstarterError
from estarter.kernel.core import Kernel
from estarter.kernel.permissions import PermissionManager
from estarter.paths import state_db
from estarter.protocol.kernel_wire import serve_call

from . import ray_api
from .options import KERNEL_OPTIONS
from .spawner import RaySpawner


class KernelShell(Kernel):
    """The kernel, constructed inside its actor with Ray-backed supervisors."""

    def __init__(self, home: str, strict: bool = False) -> None:
        from estarter.store import AppStore

        root = Path(home)
        spawner = RaySpawner(root)
        super().__init__(root, PermissionManager(state_db(root)), spawner, AppStore(root),
                         node=ray_api.node_ip(), strict=strict)
        spawner.on_running = self.app_running
        spawner.on_exited = self.app_exited

    def call(self, payload: bytes) -> bytes:
        """The hot path of every app's API call (see estarter.protocol.kernel_wire)."""
        return serve_call(self.handle, payload)

    def describe(self) -> dict[str, Any]:
        """Which home this kernel serves and how many apps run (for reuse checks)."""
        return {"home": str(self.home), "running": len(self._running_ids())}


KernelActor = ray_api.remote(KernelShell, KERNEL_OPTIONS)


def get_or_create_kernel(home: Path, strict: bool = False,
                         detached: bool = False) -> tuple[Any, bool]:
    """The named kernel actor and whether this call created it.

    A live kernel of another home is replaced when it runs no app (one left
    behind by a runtime that did not own it); one that runs apps is refused
    with Busy rather than silently serving the wrong home.
    """
    try:
        existing = ray_api.get_actor(KERNEL_OPTIONS["name"])
    except EstarterError:
        existing = None
    if existing is not None:
        desc = ray_api.get(existing.describe.remote(), timeout=60)
        if desc["home"] == str(home):
            ray_api.get(existing.start_services.remote(), timeout=60)
            return existing, False
        if desc["running"]:
            raise Busy(f"the kernel on this Ray serves {desc['home']} and runs apps")
        ray_api.kill(existing)
        _wait_name_free(KERNEL_OPTIONS["name"], timeout=30)
    opts: dict[str, Any] = {"get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    handle = KernelActor.options(**opts).remote(str(home), strict)
    ray_api.get(handle.ping.remote(), timeout=120)
    return handle, True


def _wait_name_free(name: str, timeout: float) -> None:
    """After a kill the actor's name is released asynchronously; wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray_api.get_actor(name)
        except EstarterError:
            return
        time.sleep(0.05)
