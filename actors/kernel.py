"""The kernel actor, the spawner that gives each app a supervisor actor, and the
creation of a runtime's three named actors (kernel, permissions, VFS).

The kernel keeps durable app records (``estarter.state``). Ray restarts a dead
kernel actor (``max_restarts=-1``) by running ``__init__`` again with the same
arguments, so construction is also recovery: supervisors are detached and named,
so the new kernel adopts those that still run their apps, sweeps the orphans of
the old one (its warm pool, supervisors of stopped apps) and relaunches lost apps
per their restart policy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from estarter.errors import Busy, EstarterError
from estarter.kernel.core import Kernel
from estarter.paths import kernel_db
from estarter.policy import SandboxPolicy
from estarter.protocol.kernel_wire import serve_call
from estarter.state import AppRecords
from estarter.storage import shared_from_env, zone_storage
from estarter.supervision import RestartRules

from . import ray_api
from .handles import KernelActor as KernelActor
from .options import KERNEL_NAME, KERNEL_OPTIONS, PERMISSIONS_NAME, RUNTIME_ACTORS, VFS_NAME
from .permissions import get_or_create_permissions, permission_client
from .spawner import RaySpawner, RaySupervisorPort
from .supervisor import SupervisorActor, supervisor_prefix
from .vfs import RayVfsPort, get_or_create_vfs


class RayKernel(Kernel):
    """The kernel, constructed inside its actor (``handles.KernelShell``) with Ray-backed
    supervisors."""

    def __init__(self, home: str, strict: bool = False,
                 rules: dict[str, Any] | None = None, shared_storage: bool = False) -> None:
        from estarter.store import AppStore

        root = Path(home)
        SupervisorActor.use_scope(root)
        records = AppRecords(kernel_db(root))
        keep = frozenset(r.supervisor for r in records.wanted() if r.supervisor)
        # Before the new pool exists: every other supervisor of this home is an orphan.
        ray_api.kill_named(supervisor_prefix(root), keep=keep)
        spawner = RaySpawner(root)
        spawner.rules = RestartRules(**rules) if rules else None
        # Grants are the permissions actor's and fs.* the VFS actor's (created before
        # this actor, looked up by name: after a restart too).
        vfs = ray_api.find_actor(VFS_NAME)
        # Supervisors mount the zones only where they are the VFS's folders.
        try:
            vfs_node = str(ray_api.call(vfs.describe, timeout=120)["node"])
        except EstarterError:  # restarting: it is pinned to this node, as this actor is
            vfs_node = ray_api.node_id()
        spawner.storage = {"shared": shared_storage, "vfsNode": vfs_node}
        super().__init__(root, permission_client(root), spawner, AppStore(root),
                         node=ray_api.node_ip(), strict=strict, records=records,
                         vfs=RayVfsPort(vfs))
        spawner.on_running = self.app_running
        spawner.on_exited = self.app_exited
        self.recovery = self.recover(self._reattach)

    def _reattach(self, name: str, app_id: str, run_id: int
                ) -> tuple[RaySupervisorPort, dict[str, Any], SandboxPolicy] | None:
        """The supervisor ``name`` if it still runs ``run_id`` of ``app_id``."""
        try:
            handle = ray_api.get_actor(name)
            info = ray_api.call(handle.info, timeout=30)
            policy = ray_api.call(handle.policy, timeout=30)
        except EstarterError:
            return None
        if info.get("runId") != run_id or info.get("appId") != app_id:
            return None
        assert isinstance(self.spawner, RaySpawner)
        port = self.spawner.watch(handle, app_id, run_id, str(info.get("nodeId", "")))
        return port, info, policy

    def release(self, grace: float = 2.0, keep_wanted: bool = False) -> list[str]:
        """Stop the apps, then kill every supervisor of this home (detached: nothing
        else would). Returns the names killed. For ``down`` and Runtime.shutdown."""
        self.shutdown(grace, keep_wanted=keep_wanted)
        assert isinstance(self.spawner, RaySpawner)
        self.spawner.close()
        return ray_api.kill_named(supervisor_prefix(self.home))

    def recovery_report(self) -> dict[str, Any]:
        return dict(self.recovery)

    def call(self, payload: bytes) -> bytes:
        """The hot path of every app's API call (see estarter.protocol.kernel_wire)."""
        return serve_call(self.handle, payload)

    def actors(self) -> list[dict[str, Any]]:
        """The runtime's actors, as ``doctor`` shows them (``describe_runtime``):
        what ``operator.actors`` answers, so ``doctor`` needs no Ray driver."""
        return describe_runtime(self.home)

    def describe(self) -> dict[str, Any]:
        """Which home this kernel serves and how many apps run (for reuse checks)."""
        assert isinstance(self.spawner, RaySpawner)
        return {"home": str(self.home), "running": len(self._running_ids()),
                **ray_api.whereabouts(), "storage": zone_storage(self.spawner.storage)}


def get_or_create_kernel(home: Path, strict: bool = False, detached: bool = False,
                         rules: RestartRules | None = None) -> tuple[Any, bool]:
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
        desc = ray_api.call(existing.describe, timeout=60)
        if desc["home"] == str(home):
            ray_api.call(existing.start_services, timeout=60)
            return existing, False
        if desc["running"]:
            raise Busy(f"the kernel on this Ray serves {desc['home']} and runs apps")
        kill_runtime(existing)
    # The three actors keep their state under ESTARTER_HOME on this machine's disk
    # (and check grants in the same SQLite file): they must run here, never on
    # whichever node Ray would pick for a zero-CPU actor.
    placed: dict[str, Any] = {"scheduling_strategy": ray_api.node_affinity(ray_api.node_id())}
    if detached:
        placed["lifetime"] = "detached"
    # Created in this order, each looking up the ones before by name (a handle
    # passed as an argument would be an object owned by this process, which a
    # restart after this process has gone could not read).
    # A named actor that is not detached still dies with its creator's last handle:
    # this process holds them until kill_runtime.
    _held[:] = [get_or_create_permissions(home, placed), get_or_create_vfs(home, placed)]
    opts: dict[str, Any] = {"get_if_exists": True, **placed}
    # Read from the environment of the process that starts the runtime (``estarter up``,
    # Runtime.start): the kernel passes it to every supervisor (estarter.storage).
    handle = ray_api.create(KernelActor, opts, str(home), strict,
                            rules.to_dict() if rules is not None else None,
                            shared_from_env())
    ray_api.call(handle.ping, timeout=120)
    return handle, True


_held: list[Any] = []


def kill_runtime(kernel: Any | None = None) -> None:
    """Kill the kernel, the VFS and the permissions actor (supervisors are swept by
    ``KernelShell.release``), and wait until their names are free."""
    _held.clear()
    if kernel is not None:
        ray_api.kill(kernel)
    for name in (KERNEL_NAME, VFS_NAME, PERMISSIONS_NAME):
        try:
            ray_api.kill(ray_api.get_actor(name))
        except EstarterError:
            pass
    for name in RUNTIME_ACTORS:
        _wait_name_free(name, timeout=30)


def describe_runtime(home: Path) -> list[dict[str, Any]]:
    """The actors of the runtime of ``home``: the three named ones and one supervisor
    per app, each with its name, role, node and worker pid (for ``doctor``)."""
    out: list[dict[str, Any]] = []
    for name, role in ((KERNEL_NAME, "kernel"), (PERMISSIONS_NAME, "permissions"),
                       (VFS_NAME, "vfs")):
        try:
            desc = ray_api.call(ray_api.get_actor(name).describe, timeout=30)
            row = {"name": name, "role": role, "node": desc.get("node"),
                   "pid": desc.get("pid"), "nice": desc.get("nice"), "alive": True}
            if "storage" in desc:
                row["storage"] = desc["storage"]
            out.append(row)
        except EstarterError as exc:
            out.append({"name": name, "role": role, "node": None, "pid": None,
                        "alive": False, "error": str(exc)})
    for name in ray_api.named_actors(supervisor_prefix(home)):
        try:
            desc = ray_api.call(ray_api.get_actor(name).describe, timeout=30)
        except EstarterError as exc:
            out.append({"name": name, "role": "supervisor", "alive": False,
                        "error": str(exc)})
            continue
        out.append({"name": name, "role": "supervisor", "node": desc.get("node"),
                    "pid": desc.get("pid"), "nice": desc.get("nice"), "appId": desc.get("appId"),
                    "alive": True})
    return out


def _wait_name_free(name: str, timeout: float) -> None:
    """After a kill the actor's name is released asynchronously; wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray_api.get_actor(name)
        except EstarterError:
            return
        time.sleep(0.05)
