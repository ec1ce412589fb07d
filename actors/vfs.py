"""The VFS as a Ray actor, around ``estarter.kernel.vfs.Vfs``.

The kernel does not call it on the API path: serving ``fs.*`` inside the kernel
actor's process saves one actor hop per call (about 0.7 ms here), which the fs
round-trip target cannot afford (see benchmarks/bench_fs.py). The actor serves
the same files with the same containment and quota rules, for tools and jobs that
want the VFS of a home without going through an app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from estarter.errors import EstarterError
from estarter.kernel.vfs import Vfs

from . import ray_api
from .options import VFS_OPTIONS

DEFAULT_QUOTA_BYTES = 100 * 1024 * 1024


class VfsShell:
    def __init__(self, home: str) -> None:
        from estarter.store import AppStore

        self._store = AppStore(Path(home))
        self.vfs = Vfs(Path(home), self._quota_of)

    def _quota_of(self, app_id: str) -> int:
        try:
            manifest, _ = self._store.get(app_id)
        except EstarterError:
            return DEFAULT_QUOTA_BYTES
        return manifest.disk_quota_mb * 1024 * 1024

    def call(self, app_id: str, op: str, kwargs: dict[str, Any]) -> Any:
        """One fs operation (``read``, ``write``, ``delete``, ``mkdir``, ``list``,
        ``exists``, ``stat``) for ``app_id``; errors are EstarterErrors."""
        if op not in ("read", "write", "delete", "mkdir", "list", "exists", "stat"):
            raise EstarterError(f"unknown fs operation {op!r}")
        return getattr(self.vfs, op)(app_id, **kwargs)

    def ping(self) -> bool:
        return True


VfsActor = ray_api.remote(VfsShell, VFS_OPTIONS)


def get_or_create_vfs(home: Path) -> Any:
    handle = VfsActor.options(get_if_exists=True).remote(str(home))
    ray_api.get(handle.ping.remote(), timeout=120)
    return handle
