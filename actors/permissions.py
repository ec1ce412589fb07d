"""The permissions actor: ``estarter-permissions``, around ``PermissionManager``.

The one authority for grants, pending requests, revocations and the audit log, for
the kernel, the VFS and the operator's commands while a runtime is up. Its state is
SQLite under ``$ESTARTER_HOME`` (committed before each change returns), so a restart
by Ray (``max_restarts=-1``: ``__init__`` runs again) loses no grant. The kernel and
the VFS check calls against a ``PermissionClient`` (a snapshot of the committed
state; see estarter.kernel.permission_client).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from estarter.kernel.permission_client import AllowedRow, AuditRow, PermissionClient
from estarter.kernel.permissions import PermissionManager
from estarter.paths import state_db

from . import ray_api
from .options import PERMISSIONS_NAME, PERMISSIONS_OPTIONS

# How long a change is resubmitted while the actor restarts (a restart takes a few
# seconds here), and how long one answer may take.
RETRY_SECONDS = float(os.environ.get("ESTARTER_ACTOR_RETRY_SECONDS", "60"))
CALL_TIMEOUT = 60.0


class PermissionsShell(PermissionManager):
    def __init__(self, home: str) -> None:
        self.home = str(home)
        super().__init__(state_db(Path(home)))

    def ping(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"home": self.home, **ray_api.whereabouts()}


PermissionsActor = ray_api.remote(PermissionsShell, PERMISSIONS_OPTIONS)


def authority(handle: Any | None = None) -> ray_api.SyncProxy:
    """The permissions actor as a synchronous object with PermissionManager's methods
    (resubmitted while it restarts, then -32007)."""
    handle = handle if handle is not None else ray_api.get_actor(PERMISSIONS_NAME)
    return ray_api.SyncProxy(handle, timeout=CALL_TIMEOUT, retry_for=RETRY_SECONDS)


def permission_client(home: Path) -> PermissionClient:
    """What the kernel and the VFS actor check calls against."""
    handle = ray_api.find_actor(PERMISSIONS_NAME)

    def send_audit(rows: list[AuditRow], allowed: list[AllowedRow]) -> None:
        ray_api.tell(handle.append_audit, rows, allowed)

    return PermissionClient(state_db(home), authority(handle), send_audit)


def get_or_create_permissions(home: Path, options: dict[str, Any]) -> Any:
    handle = ray_api.create(PermissionsActor, {"get_if_exists": True, **options}, str(home))
    ray_api.call(handle.ping, timeout=120)
    return handle
