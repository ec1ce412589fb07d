"""Where an app's zones can be bind-mounted: one view of its files on every node.

The VFS actor (``fs.*``) serves the zones from ``$ESTARTER_HOME/vfs`` on its own node
(the head). A supervisor on another node would bind-mount that node's own folder of
the same name: a second, different file under one name. So direct mounts are offered
on a node only where they see the VFS's files:

- on the VFS actor's node, always;
- on every node when the deployment says ``ESTARTER_HOME`` is on a file system shared
  by all nodes (``ESTARTER_SHARED_STORAGE=1`` in the environment of ``estarter up`` or
  of the process that starts the runtime; ``cluster.yaml`` sets it up);
- nowhere else: the app runs without its zone mounts (``fs.*`` still works, through
  the VFS actor), and ``inspect`` says so (``host.zones``).

No Ray here: the supervisor actor passes in the node ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SHARED_STORAGE_ENV = "ESTARTER_SHARED_STORAGE"
_TRUE = {"1", "true", "yes", "on"}


def shared_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``ESTARTER_SHARED_STORAGE`` says the home is shared by all nodes."""
    value = (env if env is not None else os.environ).get(SHARED_STORAGE_ENV, "")
    return value.strip().lower() in _TRUE


@dataclass(frozen=True)
class ZoneView:
    """Whether this node's supervisor bind-mounts the app's zones, and why."""

    direct: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"directMounts": self.direct, "reason": self.reason}


LOCAL = ZoneView(True, "single node: the zones are the VFS's folders")


def zone_view(storage: Mapping[str, Any] | None, node: str) -> ZoneView:
    """The view for a supervisor on ``node`` given the kernel's ``storage`` setting
    (``{"shared": bool, "vfsNode": id}``; None: one machine, always direct)."""
    if storage is None:
        return LOCAL
    vfs_node = str(storage.get("vfsNode") or "")
    if storage.get("shared"):
        return ZoneView(True, f"shared storage ({SHARED_STORAGE_ENV}=1): every node sees "
                              "the VFS's folders")
    if not vfs_node or vfs_node == node:
        return ZoneView(True, "on the VFS actor's node: the zones are its folders")
    return ZoneView(False, f"not mounted: this node ({node[:12]}) is not the VFS actor's "
                           f"node ({vfs_node[:12]}) and storage is not shared "
                           f"({SHARED_STORAGE_ENV} unset); use fs.* for files")


def zone_storage(storage: Mapping[str, Any] | None) -> dict[str, Any]:
    """The kernel's setting as ``doctor`` shows it: where apps get their zone mounts."""
    if storage is None:
        return {"shared": False, "directMounts": "every node (one machine)"}
    if storage.get("shared"):
        return {"shared": True, "vfsNode": storage.get("vfsNode"),
                "directMounts": "every node (shared storage)"}
    return {"shared": False, "vfsNode": storage.get("vfsNode"),
            "directMounts": f"only on the VFS actor's node; elsewhere apps use fs.* "
                            f"({SHARED_STORAGE_ENV} unset)"}


def log_elsewhere(storage: Mapping[str, Any] | None, node_id: str | None) -> bool:
    """Whether a run on ``node_id`` wrote its log where the kernel's node cannot read
    it: another node than the kernel's (the VFS actor's), storage not shared."""
    if storage is None or storage.get("shared") or not node_id:
        return False
    vfs_node = str(storage.get("vfsNode") or "")
    return bool(vfs_node) and node_id != vfs_node


def lost_log_note(app_id: str, node: str, node_id: str) -> str:
    """What ``estarter logs`` says when the node of an app's last run is gone."""
    return (f"the last run's log of {app_id} was on node {node or '?'} ({node_id[:12]}), "
            f"which is not reachable (lost): readable again if that node comes back with "
            f"its files ({SHARED_STORAGE_ENV}=1 keeps logs on shared storage)")
