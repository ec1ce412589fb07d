"""The VFS actor: ``estarter-vfs``, around ``estarter.kernel.fs_service.VfsService``.

Every ``fs.*`` call is served here. A hosted app's calls come straight from its
supervisor, which looked this actor up once when it was created and binds the app's
id to each call (the app never names itself); socket clients' calls come through
the kernel. Threaded (``VFS_OPTIONS``): one app's large transfer never blocks another
app's call. Permission checks read the committed grants (``PermissionClient``), so
a revocation counts on the next call. Restarted by Ray after a crash (files are on
disk, written atomically; quotas are asked again).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from estarter.errors import EstarterError
from estarter.kernel.fs_service import DEFAULT_DISK_QUOTA_BYTES, VfsService
from estarter.kernel.grants import AUDIT_FLUSH_SECONDS
from estarter.kernel.methods import retry_on_restart
from estarter.protocol.kernel_wire import decode_reply, encode_call

from . import ray_api
from .handles import VfsActor as VfsActor
from .options import BLOCKING, KERNEL_NAME
from .permissions import RETRY_SECONDS, permission_client


class VfsServer:
    """What the VFS actor (``handles.VfsShell``) runs, built in its process."""

    def __init__(self, home: str) -> None:
        from estarter.store import AppStore

        self.home = Path(home)
        self._store = AppStore(self.home)
        self.permissions = permission_client(self.home)
        self.service = VfsService(self.home, self.permissions, self._quota_of)
        # Audit rows of the checks made here reach the permissions actor within a second.
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                         name="estarter-vfs-audit")
        self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(AUDIT_FLUSH_SECONDS)
            self.permissions.flush()

    def _quota_of(self, app_id: str) -> int:
        """After a restart: the kernel knows each running app's quota; an installed
        app's manifest says it too."""
        try:
            kernel = ray_api.get_actor(KERNEL_NAME)
            return int(ray_api.call(kernel.quota_of, app_id, timeout=10, group=BLOCKING))
        except EstarterError:
            pass
        try:
            manifest, _ = self._store.get(app_id)
        except EstarterError:
            return DEFAULT_DISK_QUOTA_BYTES
        return manifest.disk_quota_mb * 1024 * 1024

    def call(self, payload: bytes) -> bytes:
        """One encoded fs.* call (estarter.protocol.kernel_wire); never raises."""
        return self.service.call(payload)

    def set_quota(self, app_id: str, quota_bytes: int) -> None:
        self.service.set_quota(app_id, quota_bytes)

    def flush_audit(self) -> None:
        """Ship this actor's buffered check decisions to the permissions actor and
        wait until it has them (the kernel's ``audit`` asks first)."""
        self.permissions.flush_sync()

    def ping(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"home": str(self.home), **ray_api.whereabouts()}


class RayVfsPort:
    """The kernel's view of the VFS actor (for socket clients' fs.* calls)."""

    def __init__(self, actor: Any, retry_for: float = RETRY_SECONDS) -> None:
        self.actor = actor
        self.retry_for = retry_for
        # app id -> the quota the VFS actor last confirmed for it. A relaunch with
        # the same quota skips the call (an actor hop on the launch path): a VFS
        # actor restarted since has forgotten every quota and asks the kernel's
        # (``quota_of``), which is this launch's.
        self._set: dict[str, int] = {}
        self._lock = threading.Lock()

    def handle(self, app_id: str, method: str, params: Any = None) -> Any:
        retry = self.retry_for if retry_on_restart(method, params) else 0.0
        reply = ray_api.call_retrying(self.actor.call, (encode_call(app_id, method, params),),
                                      retry)
        return decode_reply(reply)

    def set_quota(self, app_id: str, quota_bytes: int) -> None:
        with self._lock:
            if self._set.get(app_id) == quota_bytes:
                return
            self._set.pop(app_id, None)  # unknown until this call is answered
        ray_api.call_retrying(self.actor.set_quota, (app_id, quota_bytes), self.retry_for)
        with self._lock:
            self._set[app_id] = quota_bytes

    def flush_audit(self) -> None:
        ray_api.call_retrying(self.actor.flush_audit, (), self.retry_for)


def get_or_create_vfs(home: Path, options: dict[str, Any] | None = None) -> Any:
    handle = ray_api.create(VfsActor, {"get_if_exists": True, **(options or {})}, str(home))
    ray_api.call(handle.ping, timeout=120)
    return handle
