"""Runtime: the Python entry point. Local mode wires the core classes directly; Ray
mode (an embedded local Ray or a cluster) goes through the actors in ``actors/``.

Both modes expose the kernel as one object with the same methods, so everything
above this module is written once.
"""

from __future__ import annotations

import builtins
import os
import time
from pathlib import Path
from typing import Any

from .errors import ApiTimeout, RuntimeClosed
from .hosting.base import ExitInfo, ExitReason
from .paths import default_home


class AppHandle:
    """A launched app. ``wait`` and ``stop`` return its final :class:`ExitInfo`."""

    def __init__(self, runtime: Runtime, record: dict[str, Any]) -> None:
        self.runtime = runtime
        self.app_id: str = record["appId"]
        self.record = record

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        """The exit once the app has ended for good (restarts included), else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else max(0.0, deadline - time.monotonic())
            rec = self.runtime.kernel.wait(self.app_id, min(left, 30.0))
            self.record = rec
            if rec.get("exit"):
                return ExitInfo.from_dict(rec["exit"])
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def stop(self, grace: float = 5.0) -> ExitInfo:
        rec = self.runtime.kernel.stop(self.app_id, grace)
        self.record = rec
        if rec.get("exit"):
            return ExitInfo.from_dict(rec["exit"])
        return ExitInfo(None, ExitReason.STOPPED, "stop requested")

    def info(self) -> dict[str, Any]:
        return dict(self.runtime.kernel.app_info(self.app_id))


class Runtime:
    """Use :meth:`start`; ``shutdown`` (or the context manager) stops what it started."""

    def __init__(self, kernel: Any, home: Path, local: bool, owned: Any = None) -> None:
        self.kernel = kernel
        self.home = home
        self.local = local
        self._owned = owned  # what shutdown() must tear down
        self._closed = False

    @classmethod
    def start(cls, local: bool = False, address: str | None = None,
              home: str | os.PathLike[str] | None = None, strict: bool = False) -> Runtime:
        """Local mode (no Ray), a given Ray cluster (``address``) or an embedded local Ray."""
        root = Path(home).resolve() if home is not None else default_home()
        root.mkdir(parents=True, exist_ok=True)
        if local:
            from .local import local_kernel

            kernel, spawner = local_kernel(root, strict=strict)
            return cls(kernel, root, True, owned=spawner)
        from actors import get_or_create_kernel, ray_api
        from actors.options import BLOCKING

        started_ray = not ray_api.is_initialized()
        ray_api.init(address or os.environ.get("ESTARTER_RAY_ADDRESS"))
        handle, created = get_or_create_kernel(root, strict=strict)
        return cls(ray_api.SyncProxy(handle, group=BLOCKING), root, False,
                   owned=(handle, created, started_ray))

    # -- apps ------------------------------------------------------------------

    def launch(self, ref: str | os.PathLike[str], grants: list[str] | None = None,
               grant_all: bool = False) -> AppHandle:
        """Start an app from a folder, a package or an installed id."""
        self._check()
        target = str(ref)
        if os.path.exists(target):
            target = str(Path(target).resolve())
        record = self.kernel.launch(target, grants or [], grant_all)
        return AppHandle(self, record)

    def install(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        from .store import AppStore

        self._check()
        return AppStore(self.home).install(Path(path)).to_json()

    def list(self) -> list[dict[str, Any]]:
        self._check()
        return list(self.kernel.list_apps())

    def stop(self, app_id: str, grace: float = 5.0) -> ExitInfo:
        return AppHandle(self, {"appId": app_id}).stop(grace)

    def wait(self, app_id: str, timeout: float | None = None) -> ExitInfo | None:
        return AppHandle(self, {"appId": app_id}).wait(timeout)

    def events(self, since: int, timeout: float = 0.0,
               app_id: str | None = None) -> dict[str, Any]:
        self._check()
        return dict(self.kernel.poll_events(since, timeout, app_id))

    def event_cursor(self) -> int:
        return int(self.kernel.event_cursor())

    def notifications(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return list(self.kernel.notifications(limit))

    # -- lifecycle -------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every app this runtime started and release it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.kernel.shutdown(2.0)
        except (RuntimeClosed, ApiTimeout):
            pass
        owned = self._owned
        if self.local:
            owned.close()
            self.kernel.permissions.close()
            return
        from actors import ray_api

        handle, created, started_ray = owned
        if created:
            ray_api.kill(handle)
        if started_ray:
            ray_api.shutdown()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _check(self) -> None:
        if self._closed:
            raise RuntimeClosed("this runtime has been shut down")
