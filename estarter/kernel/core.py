"""The kernel: serves apps' API calls after a permission check, and keeps the app table.

Plain Python, thread-safe, no Ray: the Ray actor in ``actors/`` wraps this class and
local mode uses it directly. Supervisors are reached through a ``Spawner`` and the
``SupervisorPort`` it returns, so the kernel does not know where they run.
"""

from __future__ import annotations

import collections
import itertools
import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .. import __version__
from ..errors import Busy, EstarterError, InvalidParams, NotFound, PermissionDenied
from ..hosting.base import ExitInfo, ExitReason, HostState
from ..manifest import AppManifest, load_manifest
from ..policy import SandboxPolicy
from .events import EventLog
from .permissions import PermissionManager
from .router import CallContext, Router, as_params, opt, req

MAX_NOTIFICATIONS = 1000
LOG_LEVELS = ("debug", "info", "warning", "error")


class SupervisorPort(Protocol):
    """How the kernel talks to one app's supervisor (in-process or a Ray actor)."""

    def stop(self, grace: float) -> dict[str, Any]: ...

    def notify(self, method: str, params: Any) -> None: ...

    def info(self) -> dict[str, Any]: ...


class Spawner(Protocol):
    def spawn(self, policy: SandboxPolicy, run_id: int) -> SupervisorPort:
        """Create the supervisor and start the app; raises LaunchError."""
        ...


class AppResolver(Protocol):
    def resolve(self, ref: str) -> tuple[AppManifest, Path]: ...


class FolderResolver:
    """Resolves only app folders (the app store adds zips and installed ids)."""

    def resolve(self, ref: str) -> tuple[AppManifest, Path]:
        path = Path(ref)
        if not path.is_dir():
            raise NotFound(f"no app folder at {ref}", {"app": ref})
        return load_manifest(path), path


class AppRecord:
    def __init__(self, app_id: str, run_id: int, policy: SandboxPolicy, now: float) -> None:
        self.app_id = app_id
        self.run_id = run_id
        self.policy = policy
        self.state = HostState.STARTING
        self.started_at = now
        self.supervisor: SupervisorPort | None = None
        self.exit: ExitInfo | None = None
        self.pid: int | None = None
        self.node: str | None = None
        self.done = threading.Event()

    def to_dict(self) -> dict[str, Any]:
        return {
            "appId": self.app_id,
            "state": self.state.value,
            "pid": self.pid,
            "node": self.node,
            "startedAt": self.started_at,
            "runtime": self.policy.runtime.value,
            "exit": self.exit.to_dict() if self.exit else None,
        }


class Kernel:
    def __init__(
        self,
        home: Path,
        permissions: PermissionManager,
        spawner: Spawner | None = None,
        resolver: AppResolver | None = None,
        *,
        node: str | None = None,
        strict: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = Path(home)
        self.permissions = permissions
        self.spawner = spawner
        self.resolver = resolver or FolderResolver()
        self.node = node or socket.gethostname()
        self.strict = strict
        self.clock = clock
        self.events = EventLog(clock=clock)
        self.router = Router()
        self._lock = threading.RLock()
        self._apps: dict[str, AppRecord] = {}
        self._run_ids = itertools.count(1)
        self._notifications: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_NOTIFICATIONS)
        self._notification_ids = itertools.count(1)
        self._add_core_methods()

    # -- the API of apps -------------------------------------------------------

    def handle(self, app_id: str, method: str, params: Any = None) -> Any:
        """Serve one API call of ``app_id``; raises an EstarterError to answer an error."""
        entry = self.router.lookup(method)
        p = as_params(params)
        if entry.permission is not None and not self.permissions.check(
                app_id, entry.permission, method):
            raise PermissionDenied.for_permission(entry.permission, method)
        return entry.handler(CallContext(app_id), p)

    def _add_core_methods(self) -> None:
        add = self.router.add
        add("system.ping", None, lambda c, p: {"pong": True, "time": self.clock()})
        add("system.time", None, lambda c, p: {"unixMs": int(self.clock() * 1000)})
        add("system.info", "system.info", self._system_info)
        add("permission.check", None, self._permission_check)
        add("permission.list", None,
            lambda c, p: {"granted": sorted(self.permissions.granted(c.app_id))})
        add("ui.notify", "ui.notification", self._notify)
        add("log", None, self._log)

    def _system_info(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        import psutil  # imported here: only system.info needs it

        return {
            "os": f"{platform.system()} {platform.release()}",
            "cpus": os.cpu_count() or 1,
            "memoryBytes": psutil.virtual_memory().total,
            "version": __version__,
            "node": self.node,
        }

    def _permission_check(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        name = req(params, "permission")
        return {"granted": name in self.permissions.granted(ctx.app_id)}

    def _notify(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        title = req(params, "title")
        message = req(params, "message")
        level = opt(params, "level", str, "info")
        if level not in ("info", "success", "warning", "error"):
            raise InvalidParams("level must be info, success, warning or error",
                                {"param": "level"})
        if len(title) > 200 or len(message) > 4000:
            raise InvalidParams("title or message too long (200 / 4000 characters)")
        nid = next(self._notification_ids)
        note = {"id": nid, "appId": ctx.app_id, "title": title, "message": message,
                "level": level, "time": self.clock()}
        self._notifications.append(note)
        self.events.append("notification", ctx.app_id, id=nid, title=title, message=message,
                           level=level)
        return {"id": nid}

    def _log(self, ctx: CallContext, params: dict[str, Any]) -> None:
        level = opt(params, "level", str, "info")
        message = req(params, "message")
        self.app_logs(ctx.app_id, [(level if level in LOG_LEVELS else "info", message[:8192])])

    # -- supervisors report here -----------------------------------------------

    def app_logs(self, app_id: str, lines: list[tuple[str, str]]) -> None:
        for level, message in lines:
            self.events.append("log", app_id, level=level, message=message)

    def app_running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        with self._lock:
            rec = self._apps.get(app_id)
            if rec is None or rec.run_id != run_id or rec.exit is not None:
                return
            rec.state = HostState.RUNNING
            rec.pid = info.get("pid")
            rec.node = info.get("node", rec.node)

    def app_exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        """The app's final end (after its supervisor gave up restarting). Idempotent."""
        info = ExitInfo.from_dict(exit_info)
        with self._lock:
            rec = self._apps.get(app_id)
            if rec is None or rec.run_id != run_id or rec.exit is not None:
                return
            rec.exit = info
            rec.state = HostState.FAILED if exit_info.get("failed") else HostState.EXITED
        self.events.append("exit", app_id, code=info.code, reason=info.reason.value,
                           detail=info.detail, state=rec.state.value)
        rec.done.set()

    # -- operator / runtime ----------------------------------------------------

    def launch(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
               strict: bool | None = None) -> dict[str, Any]:
        """Resolve an app (folder, package or id), apply grants, start its supervisor."""
        if self.spawner is None:
            raise EstarterError("this kernel cannot launch apps (no spawner)")
        manifest, app_dir = self.resolver.resolve(ref)
        app_id = manifest.id
        self.permissions.register(app_id, manifest.requested_permissions)
        if grant_all:
            self.permissions.grant(app_id, manifest.requested_permissions)
        elif grants:
            self.permissions.grant(app_id, grants)
        policy = SandboxPolicy.from_manifest(
            manifest, app_dir, granted=self.permissions.granted(app_id),
            strict=self.strict if strict is None else strict)
        with self._lock:
            current = self._apps.get(app_id)
            if current is not None and current.exit is None:
                raise Busy(f"app {app_id} is already running", {"appId": app_id})
            rec = AppRecord(app_id, next(self._run_ids), policy, self.clock())
            self._apps[app_id] = rec
        try:
            rec.supervisor = self.spawner.spawn(policy, rec.run_id)
        except EstarterError as exc:
            self.app_exited(app_id, rec.run_id, {"code": None, "reason": "crashed",
                                                 "detail": str(exc), "failed": True})
            raise
        self.events.append("launched", app_id, runId=rec.run_id)
        return rec.to_dict()

    def stop(self, app_id: str, grace: float = 5.0) -> dict[str, Any]:
        rec = self._record(app_id)
        if rec.exit is None and rec.supervisor is not None:
            result = rec.supervisor.stop(grace)
            self.app_exited(app_id, rec.run_id, result)
        return rec.to_dict()

    def wait(self, app_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The app's record once it has ended, or as it is after ``timeout``."""
        rec = self._record(app_id)
        rec.done.wait(None if timeout is None else max(0.0, min(timeout, 60.0)))
        return rec.to_dict()

    def app_info(self, app_id: str) -> dict[str, Any]:
        rec = self._record(app_id)
        out = rec.to_dict()
        if rec.exit is None and rec.supervisor is not None:
            try:
                out["host"] = rec.supervisor.info()
            except EstarterError as exc:
                out["host"] = {"error": str(exc)}
        return out

    def list_apps(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rec.to_dict() for rec in self._apps.values()]

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._notifications)[-limit:]

    def event_cursor(self) -> int:
        return self.events.cursor()

    def poll_events(self, since: int, timeout: float = 0.0,
                    app_id: str | None = None) -> dict[str, Any]:
        return self.events.since(since, timeout, app_id)

    def grant(self, app_id: str, perms: list[str]) -> list[str]:
        return sorted(self.permissions.grant(app_id, perms))

    def revoke(self, app_id: str, perms: list[str]) -> list[str]:
        return sorted(self.permissions.revoke(app_id, perms))

    def audit(self, app_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        return self.permissions.audit(app_id, limit)

    def shutdown(self, grace: float = 2.0) -> None:
        """Stop every running app. Idempotent."""
        with self._lock:
            running = [rec for rec in self._apps.values() if rec.exit is None]
        for rec in running:
            try:
                self.stop(rec.app_id, grace)
            except EstarterError:
                pass
        self.permissions.flush()

    def ping(self) -> bool:
        return True

    def _record(self, app_id: str) -> AppRecord:
        with self._lock:
            rec = self._apps.get(app_id)
        if rec is None:
            raise NotFound(f"app {app_id} is not known to this runtime", {"appId": app_id})
        return rec


def lost(reason: ExitReason, detail: str) -> dict[str, Any]:
    """The exit a kernel records for an app whose supervisor vanished."""
    return {**ExitInfo(None, reason, detail).to_dict(), "failed": True}
