"""The kernel: serves apps' API calls after a permission check, and keeps the app table.

Plain Python, thread-safe, no Ray: the Ray actor in ``actors/`` wraps this class and
local mode uses it directly. Supervisors are reached through a ``Spawner`` and the
``SupervisorPort`` it returns, so the kernel does not know where they run.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from .. import devices, pydeps
from ..appconfig import AppConfig
from ..errors import Busy, EstarterError, NotFound, NotSupported, PermissionDenied
from ..hosting import dotnet_app
from ..hosting.applog import STREAMS, level_of, one_line, tail_file
from ..hosting.base import ExitInfo, ExitReason, HostState, lost
from ..manifest import AppManifest, RuntimeKind, load_manifest
from ..paths import kernel_db, log_file
from ..policy import SandboxPolicy, requests_of
from ..state import AppRecords
from ..storage import log_elsewhere, lost_log_note
from ..store import pin_folder, unpin_folder
from . import processes, recovery, services
from .events import EventLog
from .fs_service import VfsService
from .grants import REQUEST_TIMEOUT_SECONDS, PermissionLifecycle
from .ipc import Ipc
from .methods import VFS_METHODS
from .operator_access import OperatorService, status_rows
from .permissions import PermissionManager
from .ports import Spawner, SupervisorPort, VfsPort
from .recovery import Attach
from .registry import Registry
from .router import CallContext, Router, as_params
from .socket_server import Connection, SocketServer
from .tokens import TokenStore
from .ui import Clipboard, Notifications

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_DISK_QUOTA_BYTES = 100 * 1024 * 1024
# Relaunches of one app after node losses (a guard against a cluster losing node
# after node under it); the next loss ends the app as node_lost.
MAX_NODE_RELAUNCHES = 5
# Ends after which the kernel (not the lost supervisor) applies the restart policy.
LOSSES = (ExitReason.NODE_LOST, ExitReason.SUPERVISOR_LOST)


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
    def __init__(self, app_id: str, run_id: int, policy: SandboxPolicy, now: float,
                 ref: str = "") -> None:
        self.app_id = app_id
        self.run_id = run_id
        self.policy = policy
        self.ref = ref or app_id  # what was launched, for restart and relaunch
        self.state = HostState.STARTING
        self.started_at = now
        self.supervisor: SupervisorPort | None = None
        self.exit: ExitInfo | None = None
        self.pid: int | None = None
        self.node: str | None = None
        self.node_id: str | None = None  # Ray's id of the node it runs on (cluster only)
        self.node_relaunches = 0  # runs started again after their node or supervisor was lost
        self.final_metrics: dict[str, Any] | None = None  # the run's counters at its end
        self.done = threading.Event()
        # An installed version's folder stays while a run (and its restarts) uses it.
        self.pin: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "appId": self.app_id,
            "state": self.state.value,
            "pid": self.pid,
            "node": self.node,
            "startedAt": self.started_at,
            "runtime": self.policy.runtime.value,
            "runId": self.run_id,
            "restart": self.policy.restart.value,
            "exit": self.exit.to_dict() if self.exit else None,
            "metrics": self.final_metrics,
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
        serve_socket: bool = True,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        records: AppRecords | None = None,
        vfs: VfsPort | None = None,
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
        # Durable app records (a persistent runtime): run ids then never repeat across
        # kernel restarts, and a restarted kernel finds what should run (``recover``).
        self.records = records
        self._keep_wanted = False  # set while going down: apps come back on the next up
        self._sockets: dict[str, set[Connection]] = {}
        self._quotas: dict[str, int] = {}
        db = kernel_db(self.home)
        # fs.* is the VFS service's (the VFS actor in Ray mode): the kernel only
        # forwards the calls of socket clients; hosted apps' reach it from their supervisor.
        self.vfs: VfsPort = vfs or VfsService(self.home, permissions, self.quota_of)
        self.registry = Registry(db, clock=clock)
        self.notices = Notifications(db, clock=clock)
        self.tokens = TokenStore(db, clock=clock)
        self.clipboard = Clipboard()
        self.ipc = Ipc(self.is_running, self.push, self._pulls_only)
        self.lifecycle = PermissionLifecycle(permissions, self.push, self._running_ids,
                                             request_timeout=request_timeout)
        self.socket: SocketServer | None = None
        self._serve_socket = serve_socket
        permissions.clear_requests()
        services.register(self.router, services.Services(
            node=self.node, clock=clock, events=self.events, app_logs=self.app_logs,
            notices=self.notices, permissions=permissions, lifecycle=self.lifecycle,
            registry=self.registry, ipc=self.ipc, clipboard=self.clipboard))
        processes.register(self.router, self, self.events)
        self.start_services()

    # -- the API of apps -------------------------------------------------------

    def handle(self, app_id: str, method: str, params: Any = None) -> Any:
        """Serve one API call of ``app_id``; raises an EstarterError to answer an error."""
        if isinstance(method, str) and method in VFS_METHODS:
            return self.vfs.handle(app_id, method, params)  # checked there
        entry = self.router.lookup(method)
        p = as_params(params)
        if entry.permission is not None and not self.permissions.check(
                app_id, entry.permission, method):
            raise PermissionDenied.for_permission(
                entry.permission, method, app_id,
                entry.permission in self.permissions.requested(app_id))
        return entry.handler(CallContext(app_id), p)

    # -- supervisors report here -----------------------------------------------

    def app_logs(self, app_id: str, lines: list[tuple[str, str, str]]) -> None:
        """(level, message, stream) lines; a supervisor of an older version sends no
        stream. Supervisors cap and escape already; held here too, as this is what we keep."""
        for level, message, *rest in lines:
            stream = rest[0] if rest and rest[0] in STREAMS else "app"
            self.events.append("log", app_id, level=level_of(level), stream=stream,
                               message=one_line(message))

    def app_running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        """The run's app process started (its first start or a restart in place).
        Under Ray each start is reported twice: by the launch once its supervisor's
        ``start`` returns, and by the supervisor itself, which alone reports its
        restarts. A report of the process already recorded changes nothing: no
        second write of the record, no second ``app.launched`` to other apps."""
        with self._lock:
            rec = self._apps.get(app_id)
            if rec is None or rec.run_id != run_id or rec.exit is not None:
                return
            if (rec.state is HostState.RUNNING and rec.pid is not None
                    and rec.pid == info.get("pid")
                    and info.get("nodeId", rec.node_id) == rec.node_id):
                return
            rec.state = HostState.RUNNING
            rec.pid = info.get("pid")
            rec.node = info.get("node", rec.node)
            rec.node_id = info.get("nodeId", rec.node_id)
        if self.records is not None and "actorName" in info:
            self.records.supervised(app_id, run_id, info["actorName"],
                                    node_id=info.get("nodeId"))
        self.lifecycle.seed(app_id)
        self.push_all("system.event", {"name": "app.launched", "data": {"appId": app_id}},
                      but=app_id, need=self._app_events_permission())

    def app_exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        """The app's final end (after its supervisor gave up restarting). Idempotent."""
        info = ExitInfo.from_dict(exit_info)
        if self._relaunch_after_loss(app_id, run_id, info, exit_info):
            return
        with self._lock:
            rec = self._apps.get(app_id)
            if rec is None or rec.run_id != run_id or rec.exit is not None:
                return
            rec.exit = info
            rec.state = HostState.FAILED if exit_info.get("failed") else HostState.EXITED
            rec.final_metrics = exit_info.get("metrics")
            unpin_folder(rec.pin)
            rec.pin = None
        if self.records is not None:
            self.records.ended(app_id, run_id, rec.state.value, exit_info,
                               keep_wanted=self._keep_wanted)
        self.events.append("exit", app_id, code=info.code, reason=info.reason.value,
                           detail=info.detail, state=rec.state.value)
        if not self._sockets.get(app_id):
            self.ipc.drop(app_id)
            self.lifecycle.forget(app_id)
        rec.done.set()
        self.push_all("system.event", {"name": "app.terminated", "data": {"appId": app_id}},
                      need=self._app_events_permission())

    def _relaunch_after_loss(self, app_id: str, run_id: int, info: ExitInfo,
                             exit_info: dict[str, Any]) -> bool:
        """A run lost with its node or its supervisor (a worker SIGKILLed, OOM-killed)
        starts again, on a surviving node, when the app's restart policy is ``always``
        or ``on-failure``: same record (not ended), grants as they are now, a new run
        id, no node pin. The supervisor that would have restarted it is the one that
        is gone, so the kernel does; at most MAX_NODE_RELAUNCHES times per launch.
        True if a relaunch was started."""
        if info.reason not in LOSSES or exit_info.get("noRelaunch"):
            return False
        with self._lock:
            rec = self._apps.get(app_id)
            if (rec is None or rec.run_id != run_id or rec.exit is not None
                    or rec.policy.restart.value not in ("always", "on-failure")
                    or rec.node_relaunches >= MAX_NODE_RELAUNCHES or self.spawner is None):
                return False
            rec.node_relaunches += 1
            rec.run_id = self.records.next_run_id() if self.records else next(self._run_ids)
            rec.state, rec.supervisor, rec.pid = HostState.STARTING, None, None
            rec.policy = rec.policy.with_grants(self.permissions.granted(app_id))
            new_run, policy = rec.run_id, rec.policy
        self.events.append("relaunch", app_id, reason=info.reason.value, detail=info.detail,
                           runId=new_run)
        threading.Thread(target=self._relaunch, args=(rec, policy, new_run, info.reason),
                         daemon=True,
                         name=f"estarter-relaunch-{app_id}").start()
        return True

    def _relaunch(self, rec: AppRecord, policy: SandboxPolicy, run_id: int,
                  reason: ExitReason) -> None:
        assert self.spawner is not None
        if self.records is not None:
            self.records.launched(rec.app_id, run_id, rec.ref, policy.restart.value)
        try:
            port = self.spawner.spawn(policy, run_id)
        except EstarterError as exc:
            self.app_exited(rec.app_id, run_id, {
                **lost(reason, f"relaunch after {reason.value} failed: {exc}"),
                "noRelaunch": True})
            return
        with self._lock:
            if rec.run_id == run_id and rec.exit is None:
                rec.supervisor = port

    # -- operator / runtime ----------------------------------------------------

    def launch(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
               strict: bool | None = None, node: str | None = None) -> dict[str, Any]:
        """Resolve an app (folder, package or id), apply grants, start its supervisor
        (on ``node`` when given: a spawner that places apps, i.e. Ray, only)."""
        if self.spawner is None:
            raise EstarterError("this kernel cannot launch apps (no spawner)")
        if node is not None and not getattr(self.spawner, "places_apps", False):
            raise NotSupported("node affinity needs a Ray runtime", {"node": node})
        self.start_services()
        manifest, app_dir = self.resolver.resolve(ref)
        if manifest.runtime is RuntimeKind.DOTNET:
            dotnet_app.require()  # here, before any grant or record: a clear refusal
        # Optional: a spawner that gets ready while the launch is checked and recorded
        # (a process app's cgroups made ahead: limits.premade). It returns what
        # releases what the launch did not use: the launch failed first, or another
        # supervisor started it. Called either way: what was used is gone already.
        expect = getattr(self.spawner, "expect_launch", None)
        release = (expect(None if manifest.runtime is RuntimeKind.WASM else manifest.id,
                          requests_of(manifest))
                   if expect is not None else None)
        try:
            return self._launch(manifest, app_dir, ref, grants, grant_all, strict, node)
        finally:
            if release is not None:
                release()

    def _launch(self, manifest: AppManifest, app_dir: Path, ref: str,
                grants: list[str] | None, grant_all: bool, strict: bool | None,
                node: str | None) -> dict[str, Any]:
        assert self.spawner is not None
        app_id = manifest.id
        self.permissions.register(app_id, manifest.requested_permissions)
        if grant_all:  # all but the device permissions this host has no device for
            self.permissions.grant(app_id, devices.split(manifest.requested_permissions)[0])
        elif grants:
            self.permissions.grant(app_id, grants)
        policy = SandboxPolicy.from_manifest(
            manifest, app_dir, granted=self.permissions.granted(app_id),
            strict=self.strict if strict is None else strict)
        policy.require_escape_hatch_grants()  # sandboxed:false / networkAllowed need grants
        # The operator's values for what the manifest's env declares (appconfig.py),
        # read here, on the kernel's node, where the home is: they travel in the policy.
        policy = policy.with_app_env(AppConfig(self.home).env_for(manifest))
        if policy.runtime is RuntimeKind.PYTHON:
            policy = replace(policy, python_deps=pydeps.ensure(self.home, pydeps.read(app_dir)))
        with self._lock:
            current = self._apps.get(app_id)
            if current is not None and current.exit is None:
                raise Busy(f"app {app_id} is already running", {"appId": app_id})
            run_id = (self.records.begin_run(app_id, ref, policy.restart.value)
                      if self.records else next(self._run_ids))
            rec = AppRecord(app_id, run_id, policy, self.clock(), ref)
            rec.pin = self._pin(policy.app_dir)
            self._apps[app_id] = rec
            self._quotas[app_id] = policy.disk_quota_bytes
        self.vfs.set_quota(app_id, policy.disk_quota_bytes)
        spawn: Any = self.spawner.spawn  # ``node=`` is not part of the Spawner protocol
        try:
            rec.supervisor = (spawn(policy, rec.run_id) if node is None
                              else spawn(policy, rec.run_id, node=node))
        except EstarterError as exc:
            self.app_exited(app_id, rec.run_id, {"code": None, "reason": "crashed",
                                                 "detail": str(exc), "failed": True})
            raise
        self.events.append("launched", app_id, runId=rec.run_id)
        return rec.to_dict()

    def stop(self, app_id: str, grace: float = 5.0) -> dict[str, Any]:
        """Stop the app (ask, wait ``grace``, kill); it is not brought back later."""
        rec = self._record(app_id)
        if self.records is not None and not self._keep_wanted:
            self.records.unwant(app_id)
        if rec.exit is None and rec.supervisor is not None:
            result = rec.supervisor.stop(grace)
            self.app_exited(app_id, rec.run_id, result)
        if rec.exit is not None:
            # The supervisor's own report of this end may be the one recording it, on
            # another thread: answer once its clean-up (inbox, grants watch) is done.
            rec.done.wait(10)
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

    def app_log(self, app_id: str, lines: int = 100) -> dict[str, Any]:
        """The last ``lines`` lines of the app's log, read where it is written: by its
        supervisor, on its node, while it runs (any node, shared storage or not); after
        a run on another node without shared storage, on that node (``source`` "node"),
        or, that node gone, no lines and a ``note`` saying so (``source`` "lost");
        else this node's file (the app's node's too with shared storage). ``source``
        says which; ``node`` is where the lines were read."""
        with self._lock:
            rec = self._apps.get(app_id)
        port = rec.supervisor if rec is not None and rec.exit is None else None
        reader = getattr(port, "log_tail", None)  # every real port has it; fakes may not
        if reader is not None:
            try:
                got = dict(reader(lines))
                return {"appId": app_id, "source": "supervisor",
                        "node": got.get("node"), "nodeId": got.get("nodeId"),
                        "lines": list(got.get("lines", []))}
            except EstarterError:
                pass  # the supervisor went away: what its node has
        node_id = rec.node_id if rec is not None else self._recorded_node(app_id)
        remote = getattr(self.spawner, "read_log", None)  # Ray's spawner only
        if (remote is not None and node_id
                and log_elsewhere(getattr(self.spawner, "storage", None), node_id)):
            return self._remote_log(remote, app_id, node_id, lines)
        tail = tail_file(log_file(self.home, app_id), lines)
        return {"appId": app_id, "source": "file", "node": self.node, "nodeId": None,
                "lines": tail}

    def _recorded_node(self, app_id: str) -> str | None:
        """The node of the app's last run as recorded: this kernel restarted since
        (its runs in memory are gone), and that run's log file is on that node."""
        row = self.records.get(app_id) if self.records is not None else None
        return row.node_id if row is not None else None

    @staticmethod
    def _remote_log(remote: Callable[..., Any], app_id: str, node_id: str,
                    lines: int) -> dict[str, Any]:
        """The log of a run that ended on another node, read there; this node's file of
        the same name is another file, never shown in its place."""
        try:
            got = dict(remote(node_id, app_id, lines))
        except EstarterError as exc:
            return {"appId": app_id, "source": "lost", "node": None, "nodeId": node_id,
                    "lines": [], "note": f"the last run's log of {app_id} is on node "
                                         f"{node_id[:12]}, which did not answer: {exc.message}"}
        if got.get("lost"):
            return {"appId": app_id, "source": "lost", "node": got.get("node"),
                    "nodeId": node_id, "lines": [],
                    "note": lost_log_note(app_id, str(got.get("node") or ""), node_id)}
        return {"appId": app_id, "source": "node", "node": got.get("node"),
                "nodeId": got.get("nodeId"), "lines": list(got.get("lines", []))}

    def restart(self, app_id: str, grace: float = 5.0) -> dict[str, Any]:
        """Stop the app if it runs, then launch what was launched last time."""
        with self._lock:
            rec = self._apps.get(app_id)
        row = self.records.get(app_id) if self.records is not None else None
        if rec is None and row is None:
            raise NotFound(f"app {app_id} is not known to this runtime", {"appId": app_id})
        ref = rec.ref if rec is not None else row.ref if row is not None else app_id
        if rec is not None:
            self.stop(app_id, grace)
        return self.launch(ref)

    def list_apps(self) -> list[dict[str, Any]]:
        """Apps this kernel knows, then apps only the records know (earlier runs)."""
        with self._lock:
            out = [rec.to_dict() for rec in self._apps.values()]
        known = {r["appId"] for r in out}
        for row in self.records.all() if self.records is not None else []:
            if row.app_id not in known:
                out.append({"appId": row.app_id, "state": row.state, "pid": None,
                            "node": None, "startedAt": None, "runtime": None,
                            "runId": row.run_id, "restart": row.restart, "exit": row.exit})
        return out

    def ps(self) -> list[dict[str, Any]]:
        """``list_apps`` as it is now (operator_access.status_row): an app in restart
        backoff is ``restarting``, pids are those of processes that run, with
        restarts, uptime, CPU and memory from its supervisor; an ended app whose
        record is gone (``uninstall`` forgets it) leaves the list."""
        with self._lock:
            recs = list(self._apps.values())
        ports = {r.app_id: r.supervisor for r in recs
                 if r.exit is None and r.supervisor is not None}
        kept = ({row.app_id for row in self.records.all()} if self.records is not None
                else None)
        known = {r.app_id for r in recs}
        rows = [r.to_dict() for r in recs]
        rows += [row for row in self.list_apps() if row["appId"] not in known]
        return status_rows(rows, ports, lambda rec: kept is None or not rec.get("exit")
                           or rec["appId"] in kept, self.clock())

    def adopt(self, app_id: str, run_id: int, ref: str, policy: SandboxPolicy,
              supervisor: SupervisorPort, info: dict[str, Any]) -> None:
        """Take back an app whose supervisor outlived a kernel restart."""
        rec = AppRecord(app_id, run_id, policy, info.get("startedAt") or self.clock(), ref)
        rec.supervisor = supervisor
        rec.state = HostState.RUNNING
        rec.pid = info.get("pid")
        rec.node = info.get("node")
        rec.node_id = info.get("nodeId")
        rec.pin = self._pin(policy.app_dir)
        with self._lock:
            self._apps[app_id] = rec
            self._quotas[app_id] = policy.disk_quota_bytes
        self.vfs.set_quota(app_id, policy.disk_quota_bytes)
        self.lifecycle.seed(app_id)

    def _pin(self, folder: Path) -> int | None:
        """Pin an installed version's folder for a run (store.pin_folder)."""
        if not folder.is_relative_to((self.home / "apps").resolve()):
            return None
        return pin_folder(folder)

    def recover(self, attach: Attach | None = None) -> dict[str, Any]:
        """Adopt still-running supervisors, relaunch lost apps per policy (see
        recovery.py). Call once, right after construction."""
        return recovery.recover(self, attach).to_dict()

    def record_of(self, app_id: str) -> dict[str, Any] | None:
        """The durable record of the app's last run (None without records)."""
        row = self.records.get(app_id) if self.records is not None else None
        return row.to_json() if row is not None else None

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.notices.list(limit)

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
        self.vfs.flush_audit()  # fs.* decisions are made (and buffered) in the VFS
        return self.permissions.audit(app_id, limit)

    def shutdown(self, grace: float = 2.0, keep_wanted: bool = False) -> None:
        """Stop every running app, the socket and the watcher. Idempotent; a later
        ``launch`` or ``start_services`` brings the services back. ``keep_wanted``
        (``estarter down``): the records still say which apps ran, so the next
        kernel of this home brings them back per their restart policy."""
        with self._lock:
            running = [rec for rec in self._apps.values() if rec.exit is None]
            self._keep_wanted = keep_wanted
        try:
            for rec in running:
                try:
                    self.stop(rec.app_id, grace)
                except EstarterError:
                    pass
        finally:
            self._keep_wanted = False
        with self._lock:
            sock, self.socket = self.socket, None
        if sock is not None:
            sock.close()
        self.lifecycle.close()
        self.permissions.flush()

    def system_shutdown(self) -> None:
        """``system.shutdown``: tell every app, then stop them all."""
        self.push_all("system.event", {"name": "system.shutdown", "data": {}})
        self.shutdown()

    def start_services(self) -> None:
        """The permission watcher and the socket server. Idempotent."""
        self.lifecycle.start()
        if not self._serve_socket:
            return
        with self._lock:
            if self.socket is not None:
                return
            server = SocketServer(self.home / "run", self.handle, self.authenticate,
                                  self._attach, self._detach,
                                  operator=OperatorService(self))
            try:
                server.start()
            except (EstarterError, OSError) as exc:
                log.warning("kernel socket not started: %s", exc)
                self.events.append("log", None, level="warning",
                                   message=f"kernel socket not started: {exc}")
                return
            self.socket = server

    # -- what the services ask the kernel --------------------------------------

    def is_running(self, app_id: str) -> bool:
        """Hosted and not ended, or connected over the socket."""
        with self._lock:
            rec = self._apps.get(app_id)
            return (rec is not None and rec.exit is None) or bool(self._sockets.get(app_id))

    def push(self, app_id: str, method: str, params: Any) -> bool:
        """Send a notification to a running app; True if a channel took it."""
        with self._lock:
            rec = self._apps.get(app_id)
            sup = rec.supervisor if rec is not None and rec.exit is None else None
            conns = list(self._sockets.get(app_id, ()))
        sent = False
        if sup is not None and rec is not None and rec.policy.runtime.value != "wasm":
            try:
                sup.notify(method, params)
                sent = True
            except EstarterError:
                pass
        for conn in conns:
            sent = conn.notify(method, params) or sent
        return sent

    def push_all(self, method: str, params: Any, but: str | None = None,
                 need: str | None = None) -> None:
        """Notify every running app but ``but``; with ``need``, only those holding
        that permission."""
        for app_id in self._running_ids():
            if app_id == but:
                continue
            if need is not None and need not in self.permissions.granted(app_id):
                continue
            self.push(app_id, method, params)

    def _app_events_permission(self) -> str | None:
        # app.launched / app.terminated tell which apps run: what process.list tells,
        # so they go to the apps that may call it. Sent to every app, they leaked that
        # to apps without the permission, and a burst of N launches made N^2/2 actor
        # calls, each waking a supervisor and its app (issue 15's 100-app profile).
        return self.router.lookup("process.list").permission

    def quota_of(self, app_id: str) -> int:
        """The app's diskQuotaMb in bytes: from its launch, else its installed manifest."""
        with self._lock:
            quota = self._quotas.get(app_id)
        if quota is None:
            try:
                manifest, _ = self.resolver.resolve(app_id)
                quota = manifest.disk_quota_mb * 1024 * 1024
            except EstarterError:
                quota = DEFAULT_DISK_QUOTA_BYTES
            with self._lock:
                self._quotas[app_id] = quota
        return quota

    def authenticate(self, token: Any) -> str | None:
        """A socket client's app, from its token alone."""
        app_id = self.tokens.app_of(token)
        if app_id is not None and not self.permissions.requested(app_id):
            try:  # an installed app that was never launched: record what it requests
                manifest, _ = self.resolver.resolve(app_id)
                self.permissions.register(app_id, manifest.requested_permissions)
            except EstarterError:
                pass
        return app_id

    def _attach(self, app_id: str, conn: Connection) -> None:
        with self._lock:
            self._sockets.setdefault(app_id, set()).add(conn)
        self.lifecycle.seed(app_id)

    def _detach(self, app_id: str, conn: Connection) -> None:
        with self._lock:
            conns = self._sockets.get(app_id, set())
            conns.discard(conn)
            if not conns:
                self._sockets.pop(app_id, None)
        if not self.is_running(app_id):
            self.ipc.drop(app_id)
            self.lifecycle.forget(app_id)

    def _running_ids(self) -> list[str]:
        with self._lock:
            ids = {a for a, rec in self._apps.items() if rec.exit is None}
            return sorted(ids | set(self._sockets))

    def _pulls_only(self, app_id: str) -> bool:
        with self._lock:
            rec = self._apps.get(app_id)
            hosted = rec is not None and rec.exit is None
            return hosted and rec is not None and rec.policy.runtime.value == "wasm"

    def ping(self) -> bool:
        return True

    def statistics(self) -> dict[str, Any]:
        """A snapshot for operators and tests: inbox totals and this process's RSS."""
        import dataclasses

        import psutil

        return {"ipc": dataclasses.asdict(self.ipc.statistics()),
                "rssBytes": psutil.Process().memory_info().rss,
                "socketConnections": self.socket.connections() if self.socket else 0}

    def _record(self, app_id: str) -> AppRecord:
        with self._lock:
            rec = self._apps.get(app_id)
        if rec is None:
            raise NotFound(f"app {app_id} is not known to this runtime", {"appId": app_id})
        return rec

