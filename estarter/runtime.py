"""Runtime: the Python entry point. Local mode wires the core classes directly; Ray
mode (an embedded local Ray or a cluster) goes through the actors in ``actors/``.

Both modes are a ``KernelClient`` (estarter.client), so everything above this
module is written once; ``start`` and ``connect`` are the only places that name
``actors`` (a composition point of the layer rule in docs/DESIGN.md).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import KernelApi, KernelClient
from .errors import NotFound, RuntimeClosed
from .hosting.base import ExitInfo, ExitReason
from .paths import default_home
from .supervision import RestartRules

if TYPE_CHECKING:
    from .functions import FunctionFuture


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
    """Use :meth:`start` (a runtime of its own) or :meth:`connect` (the persistent
    runtime ``estarter up`` started); ``shutdown`` (or the context manager) stops
    what it started and only that."""

    def __init__(self, client: KernelClient, home: Path) -> None:
        self.client = client
        self.kernel: KernelApi = client.kernel
        self.home = home
        self.local = client.local
        self._closed = False

    @classmethod
    def start(cls, local: bool = False, address: str | None = None,
              home: str | os.PathLike[str] | None = None, strict: bool = False,
              rules: RestartRules | None = None) -> Runtime:
        """Local mode (no Ray), a given Ray cluster (``address``) or an embedded local Ray.

        ``rules`` tunes supervision (backoff, intensity) for every app; the default
        is ``RestartRules.from_env()`` (``ESTARTER_RESTART_*``).
        """
        root = _home(home)
        if local:
            from .local import LocalClient

            return cls(LocalClient(root, strict=strict, rules=rules), root)
        from actors.client import RayClient

        return cls(RayClient.start(root, address, strict, rules), root)

    @classmethod
    def connect(cls, home: str | os.PathLike[str] | None = None) -> Runtime:
        """Join the persistent runtime that is up for ``home``; NotFound if none is.
        ``shutdown`` then only disconnects: the runtime and its apps go on."""
        from actors.client import RayClient

        root = _home(home)
        return cls(RayClient.connect(root), root)

    @staticmethod
    def up(home: str | os.PathLike[str] | None = None, address: str | None = None,
           strict: bool = False, rules: RestartRules | None = None) -> dict[str, Any]:
        """Start the persistent runtime of ``home`` (see estarter.daemon.up)."""
        from .daemon import up

        return up(_home(home), address, strict, rules)

    @staticmethod
    def down(home: str | os.PathLike[str] | None = None, grace: float = 5.0
             ) -> dict[str, Any]:
        """Stop the persistent runtime of ``home`` (see estarter.daemon.down)."""
        from .daemon import down

        return down(_home(home), grace)

    # -- apps ------------------------------------------------------------------

    def launch(self, ref: str | os.PathLike[str], grants: list[str] | None = None,
               grant_all: bool = False, node: str | None = None) -> AppHandle:
        """Start an app from a folder, a package or an installed id. ``node`` (a Ray
        node id or address) pins it to that node; Unschedulable if it cannot run there."""
        self._check()
        target = str(ref)
        if os.path.exists(target):
            target = str(Path(target).resolve())
        if node is None:
            record = self.kernel.launch(target, grants or [], grant_all)
        else:
            record = self.kernel.launch(target, grants or [], grant_all, node=node)
        return AppHandle(self, record)

    start_app = launch

    def install(self, path: str | os.PathLike[str], grants: builtins.list[str] | None = None,
                grant_all: bool = False, restart: bool = True,
                grace: float = 5.0) -> dict[str, Any]:
        """Install (or upgrade) an app; its requested permissions are registered and
        ``grants`` / ``grant_all`` given now. The version it replaces is kept (see
        :meth:`rollback`). If the app runs in this runtime it is restarted on the new
        version, unless ``restart`` is False (then the next start runs it).
        The result's ``restarted`` says which."""
        from .apps import install

        self._check()
        row = install(self.home, Path(path), grants or [], grant_all)
        return {**row, "restarted": bool(restart and self.reload(row["appId"], grace))}

    def rollback(self, app_id: str, restart: bool = True, grace: float = 5.0
                 ) -> dict[str, Any]:
        """Go back to the version the last install replaced (and forward again on a
        second call); restarts the app on it if it runs here, unless ``restart`` is
        False. NotFound if no previous version is kept."""
        from .apps import rollback

        self._check()
        row = rollback(self.home, app_id)
        return {**row, "restarted": bool(restart and self.reload(app_id, grace))}

    def reload(self, app_id: str, grace: float = 5.0) -> dict[str, Any] | None:
        """If the app runs in this runtime (or waits out a restart backoff): stop it
        (ask, wait ``grace``, kill) and start the installed version by its id. Returns
        the new run's record, or None if it was not running (nothing is started)."""
        self._check()
        live = [r for r in self.kernel.list_apps()
                if r.get("appId") == app_id and not r.get("exit")
                and r.get("state") in ("starting", "running", "stopping")]
        if not live:
            return None
        self.kernel.stop(app_id, grace)
        return dict(self.kernel.launch(app_id, [], False))

    def uninstall(self, app_id: str, keep_data: bool = False) -> None:
        """Stop the app if it runs, remove it and, unless ``keep_data``, its data."""
        from .apps import uninstall

        self._check()
        try:
            self.kernel.stop(app_id, 2.0)
        except NotFound:
            pass
        uninstall(self.home, app_id, keep_data)

    def list_installed(self) -> builtins.list[dict[str, Any]]:
        from .apps import list_installed

        return list_installed(self.home)

    def list(self) -> builtins.list[dict[str, Any]]:
        """The apps this runtime knows (running or ended), as records."""
        self._check()
        return list(self.kernel.list_apps())

    ps = list

    def stop(self, app_id: str, grace: float = 5.0) -> ExitInfo:
        return AppHandle(self, {"appId": app_id}).stop(grace)

    def restart(self, app_id: str, grace: float = 5.0) -> AppHandle:
        """Stop the app if it runs and launch it again (same folder, package or id)."""
        self._check()
        return AppHandle(self, self.kernel.restart(app_id, grace))

    def info(self, app_id: str) -> dict[str, Any]:
        """The app's record and, while it runs, what its supervisor applied (limits)."""
        self._check()
        return dict(self.kernel.app_info(app_id))

    def logs(self, app_id: str, lines: int = 100) -> builtins.list[str]:
        """The last ``lines`` lines of the app's log file (timestamped), read where it
        is written: by the app's supervisor on its node while it runs, whichever node
        that is; after a run on another node without shared storage, on that node (none
        if it is gone: :meth:`app_log` says so); else this node's file."""
        return list(self.app_log(app_id, lines)["lines"])

    def app_log(self, app_id: str, lines: int = 100) -> dict[str, Any]:
        """``logs`` with where they were read: ``{"lines", "source", "node",
        "nodeId"}``, and a ``note`` when they are lost (``source`` "lost": the last run's
        node is gone), which a caller showing logs should show instead of nothing."""
        self._check()
        return dict(self.kernel.app_log(app_id, lines))

    def wait(self, app_id: str, timeout: float | None = None) -> ExitInfo | None:
        return AppHandle(self, {"appId": app_id}).wait(timeout)

    def events(self, since: int, timeout: float = 0.0,
               app_id: str | None = None) -> dict[str, Any]:
        self._check()
        return dict(self.kernel.poll_events(since, timeout, app_id))

    def event_cursor(self) -> int:
        return int(self.kernel.event_cursor())

    # -- sandboxed functions (estarter.functions) -------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any,
               limits: dict[str, Any] | None = None, **kwargs: Any) -> FunctionFuture:
        """Run ``fn(*args, **kwargs)`` in a sandboxed child under ``limits``
        (manifest keys: memoryLimitMb, cpuQuota, maxRuntimeSeconds, maxProcesses,
        networkAllowed, maxOpenFiles), on some node of the cluster (in local mode: here)."""
        self._check()
        return self.client.submit(fn, args, kwargs, limits)

    def map(self, fn: Callable[..., Any], iterable: Iterable[Any],
            limits: dict[str, Any] | None = None) -> Iterator[Any]:
        """``fn`` over every item, all submitted at once; results in order (an
        item's typed error is raised when its turn comes)."""
        futures = [self.submit(fn, item, limits=limits) for item in iterable]
        return (f.result() for f in futures)

    def permission_authority(self) -> Any:
        """The one authority for grants, requests, revocations and the audit (the
        permissions actor; in local mode the kernel's PermissionManager), with
        PermissionManager's methods."""
        self._check()
        return self.client.permission_authority()

    def actors(self) -> builtins.list[dict[str, Any]]:
        """The runtime's actors: kernel, permissions, VFS and one supervisor per app,
        each with its role, node and pid (in local mode: the same classes, all in
        this process)."""
        self._check()
        return self.client.actors()

    def notifications(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return list(self.kernel.notifications(limit))

    # -- lifecycle -------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every app this runtime started and release it. Idempotent. A runtime
        from :meth:`connect` only disconnects (the persistent runtime goes on)."""
        if self._closed:
            return
        self._closed = True
        self.client.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _check(self) -> None:
        if self._closed:
            raise RuntimeClosed("this runtime has been shut down")


@contextlib.contextmanager
def shared_ray(address: str | None = None) -> Iterator[bool]:
    """Ray for many runtimes in a row (a pytest session: estarter.testing): joins the Ray
    this process has already initialised, else connects to ``address`` (or
    ``ESTARTER_RAY_ADDRESS``), else starts an embedded local Ray. Runtimes started
    inside leave it up at their ``shutdown``; it is shut down on exit only if it was
    started here. Yields whether it was."""
    from actors import ray_api

    started = not ray_api.is_initialized()
    ray_api.init(address or os.environ.get("ESTARTER_RAY_ADDRESS"))
    try:
        yield started
    finally:
        if started:
            ray_api.shutdown()


def _home(home: str | os.PathLike[str] | None) -> Path:
    root = Path(home).expanduser().resolve() if home is not None else default_home()
    root.mkdir(parents=True, exist_ok=True)
    return root
