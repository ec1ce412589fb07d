"""The kernel actor, and the spawner that gives each app a supervisor actor."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from estarter.errors import Busy, EstarterError, LaunchError
from estarter.hosting.base import ExitReason
from estarter.kernel.core import Kernel, lost
from estarter.kernel.permissions import PermissionManager
from estarter.paths import state_db
from estarter.policy import SandboxPolicy

from . import ray_api
from .options import KERNEL_OPTIONS, supervisor_name
from .supervisor import SupervisorActor


class RaySupervisorPort:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._proxy = ray_api.SyncProxy(handle, timeout=60)

    def stop(self, grace: float) -> dict[str, Any]:
        return dict(self._proxy.stop(grace))

    def notify(self, method: str, params: Any) -> None:
        self.handle.notify.remote(method, params)

    def info(self) -> dict[str, Any]:
        return dict(self._proxy.info())


class RaySpawner:
    """Creates supervisor actors and watches them: a supervisor that dies without
    reporting its app's end is reported as ``supervisor_lost`` (or ``node_lost``)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.kernel: Kernel | None = None
        self._lock = threading.Lock()
        self._watched: dict[Any, tuple[str, int, Any, str]] = {}
        self._wake = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name="estarter-supervisor-watch")
        self._watcher.start()

    def spawn(self, policy: SandboxPolicy, run_id: int) -> RaySupervisorPort:
        handle = SupervisorActor.options(
            name=supervisor_name(policy.app_id, run_id)).remote(policy, run_id, str(self.home))
        try:
            started = ray_api.get(handle.start.remote(), timeout=120)
        except EstarterError as exc:
            ray_api.kill(handle)
            raise LaunchError(f"{policy.app_id}: {exc.message}") from None
        if self.kernel is not None:
            self.kernel.app_running(policy.app_id, run_id, started)
        with self._lock:
            self._watched[handle.wait.remote(None)] = (policy.app_id, run_id, handle,
                                                       started.get("nodeId", ""))
        self._wake.set()
        return RaySupervisorPort(handle)

    def _watch(self) -> None:
        while True:
            with self._lock:
                refs = list(self._watched)
            if not refs:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            ready, _ = ray_api.wait(refs, timeout=0.5)
            for ref in ready:
                with self._lock:
                    app_id, run_id, handle, node = self._watched.pop(ref)
                try:
                    ray_api.get(ref, timeout=5)
                except EstarterError as exc:
                    if self.kernel is not None:
                        reason = (ExitReason.SUPERVISOR_LOST if ray_api.node_alive(node)
                                  else ExitReason.NODE_LOST)
                        self.kernel.app_exited(app_id, run_id, lost(reason, str(exc)))
                    continue
                ray_api.kill(handle)  # the app ended normally: free its worker


class KernelShell(Kernel):
    """The kernel, constructed inside its actor with Ray-backed supervisors."""

    def __init__(self, home: str, strict: bool = False) -> None:
        from estarter.store import AppStore

        root = Path(home)
        spawner = RaySpawner(root)
        super().__init__(root, PermissionManager(state_db(root)), spawner, AppStore(root),
                         node=ray_api.node_ip(), strict=strict)
        spawner.kernel = self

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
