"""The VFS service: every ``fs.*`` method of the API, with its permission check and
the apps' disk quotas. The VFS actor (``actors/vfs.py``) wraps it; in local mode the
kernel and the supervisors call it directly.

Apps' ``fs.*`` calls reach it straight from their supervisor, with the app's id
bound by the supervisor (never taken from the app's message), and calls of socket
clients through the kernel. Either way the check is made here, against the current
grants (``PermissionManager.check`` reads the committed state first), so a
revocation counts on the app's very next ``fs.*`` call.

Thread-safe: concurrent calls of different apps proceed in parallel (the Vfs locks
only its quota accounting), so one app's 15 MiB read does not hold up another's call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import MethodNotFound, PermissionDenied
from ..protocol.kernel_wire import serve_call
from .methods import VFS_METHODS, spec_of
from .router import CallContext, Router, as_params, opt, req
from .vfs import Vfs

DEFAULT_DISK_QUOTA_BYTES = 100 * 1024 * 1024


class Checker(Protocol):
    def check(self, app_id: str, permission: str, method: str = "") -> bool: ...

    def requested(self, app_id: str) -> frozenset[str]: ...

    def flush(self) -> None: ...


class VfsService:
    """``handle(app_id, method, params)`` for the ``fs.*`` methods of the table."""

    def __init__(self, home: Path, permissions: Checker,
                 default_quota: Callable[[str], int] | None = None) -> None:
        self.permissions = permissions
        self._default_quota = default_quota
        self._quotas: dict[str, int] = {}
        self.vfs = Vfs(Path(home), self.quota_of)
        self.router = Router()
        self._register()

    def handle(self, app_id: str, method: str, params: Any = None) -> Any:
        """Serve one ``fs.*`` call of ``app_id``; raises an EstarterError to answer one."""
        spec = spec_of(method)
        if spec is None or method not in VFS_METHODS:
            raise MethodNotFound(f"method not found: {method}", {"method": method})
        p = as_params(params)
        if spec.permission is not None and not self.permissions.check(
                app_id, spec.permission, method):
            raise PermissionDenied.for_permission(
                spec.permission, method, app_id,
                spec.permission in self.permissions.requested(app_id))
        return self.router.lookup(method).handler(CallContext(app_id), p)

    def call(self, payload: bytes) -> bytes:
        """``handle`` for one call encoded by ``kernel_wire.encode_call``. Never raises."""
        return serve_call(self.handle, payload)

    def flush_audit(self) -> None:
        """Hand the decisions buffered here to the audit log now."""
        self.permissions.flush()

    def set_quota(self, app_id: str, quota_bytes: int) -> None:
        """The app's diskQuotaMb in bytes (the kernel sets it at each launch)."""
        self._quotas[app_id] = int(quota_bytes)

    def quota_of(self, app_id: str) -> int:
        quota = self._quotas.get(app_id)
        if quota is None:
            quota = (self._default_quota(app_id) if self._default_quota is not None
                     else DEFAULT_DISK_QUOTA_BYTES)
            self._quotas[app_id] = quota
        return quota

    def _register(self) -> None:
        add, vfs = self.router.add, self.vfs

        def fs_read(c: CallContext, p: dict[str, Any]) -> Any:
            return vfs.read(c.app_id, req(p, "path"), opt(p, "encoding", str, "text"),
                            opt(p, "offset", int, 0), opt(p, "length", int, None))

        def fs_write(c: CallContext, p: dict[str, Any]) -> Any:
            return vfs.write(c.app_id, req(p, "path"), opt(p, "text", str, None),
                             opt(p, "data", str, None), opt(p, "append", bool, False))

        add("fs.read", fs_read)
        add("fs.write", fs_write)
        add("fs.delete", lambda c, p: vfs.delete(c.app_id, req(p, "path")))
        add("fs.mkdir", lambda c, p: vfs.mkdir(c.app_id, req(p, "path")))
        add("fs.list", lambda c, p: vfs.list(c.app_id, req(p, "path")))
        add("fs.exists", lambda c, p: vfs.exists(c.app_id, req(p, "path")))
        add("fs.stat", lambda c, p: vfs.stat(c.app_id, req(p, "path")))
