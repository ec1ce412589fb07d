"""Operator access over the kernel's socket, and the honest status of apps (``ps``).

A socket client whose ``auth.hello`` carries the operator token
(``$ESTARTER_HOME/run/operator-token``, 0600, the console's token too) gets an
operator connection: it may call the ``operator.*`` methods below and nothing
else. App tokens never open them, and an operator connection cannot call app
methods (it has no app identity and holds no grants; an operator who wants to act
as an app uses that app's token). The token file is read at each hello, so ``up``
may create it after the kernel started and a rotated token takes effect at once;
tokens are compared in constant time.

``status_row`` is what ``ps`` and the console agree on: the kernel's record made
honest with what the app's supervisor says now (restart backoff, the current pid,
CPU and memory sampled on the app's node). What is not known is None, never a
stale value.
"""

from __future__ import annotations

import concurrent.futures
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import InvalidParams, MethodNotFound
from ..operator_client import read_operator_token
from .ports import SupervisorPort

# The identity operator calls are admitted under (socket_server.Admission): no app id
# can take this form (app ids are reverse-DNS names), so no app shares its caps.
OPERATOR = "@operator"
# How long ``ps`` waits for supervisors to say how their app is; one that has not
# answered by then shows its app with nothing known of the process.
HOST_SECONDS = 5.0
MAX_GRACE_SECONDS = 300.0
MAX_LOG_LINES = 10_000
LIVE = ("starting", "running", "stopping")


@dataclass(frozen=True)
class OperatorMethod:
    name: str
    blocking: bool  # may wait (a start, a stop's grace): served on the waiting pool


METHODS: dict[str, OperatorMethod] = {m.name: m for m in (
    OperatorMethod("operator.ps", False),
    OperatorMethod("operator.info", False),
    OperatorMethod("operator.logs", False),
    OperatorMethod("operator.start", True),
    OperatorMethod("operator.stop", True),
    OperatorMethod("operator.restart", True),
    # What ``estarter permissions`` does, through the kernel's own authority (the
    # permissions actor on Ray): the same effect as a Ray driver's, in a few ms.
    OperatorMethod("operator.permissions", False),
    OperatorMethod("operator.grant", False),
    OperatorMethod("operator.revoke", False),
    OperatorMethod("operator.deny", False),
    OperatorMethod("operator.audit", False),
    # What ``estarter run`` follows of its app. Answered at once, on the quick pool:
    # the client polls (OperatorRuntime.events). A long poll would hold one of the
    # operator's few waiting slots (MAX_WAITING_CALLS) per open ``estarter run``.
    OperatorMethod("operator.cursor", False),
    OperatorMethod("operator.events", False),
    # ``doctor``'s list of the runtime's actors: one Ray call to each (waits).
    OperatorMethod("operator.actors", True),
)}
MAX_AUDIT_ROWS = 10_000


class OperatorKernel(Protocol):
    home: Path

    def launch(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
               strict: bool | None = None, node: str | None = None) -> dict[str, Any]: ...

    def stop(self, app_id: str, grace: float = 5.0) -> dict[str, Any]: ...

    def restart(self, app_id: str, grace: float = 5.0) -> dict[str, Any]: ...

    def app_info(self, app_id: str) -> dict[str, Any]: ...

    def app_log(self, app_id: str, lines: int = 100) -> dict[str, Any]: ...

    def ps(self) -> list[dict[str, Any]]: ...

    def event_cursor(self) -> int: ...

    def poll_events(self, since: int, timeout: float = 0.0,
                    app_id: str | None = None) -> dict[str, Any]: ...

    permissions: Any  # the kernel's permission authority (PermissionManager's methods)


class OperatorService:
    """The operator side of the kernel's socket. Thread-safe (it keeps no state)."""

    def __init__(self, kernel: OperatorKernel) -> None:
        self.kernel = kernel

    def admits(self, token: Any) -> bool:
        """Is ``token`` this home's operator token? Constant-time; False when the
        token file is missing, unreadable or too short to be one."""
        if not isinstance(token, str) or not token:
            return False
        expected = read_operator_token(self.kernel.home)
        if expected is None or len(expected) < 16:
            return False
        return hmac.compare_digest(token.encode(), expected.encode())

    def is_blocking(self, method: str) -> bool:
        spec = METHODS.get(method)
        return spec is not None and spec.blocking

    def hello(self) -> dict[str, Any]:
        """The answer to an operator's ``auth.hello``."""
        return {"operator": True, "home": str(self.kernel.home),
                "methods": sorted(METHODS)}

    def handle(self, method: str, params: Any) -> Any:
        """Serve one operator call; MethodNotFound for anything else (app methods too)."""
        if method not in METHODS:
            raise MethodNotFound(f"{method}: not an operator method",
                                 {"method": method, "operator": sorted(METHODS)})
        p = params if isinstance(params, dict) else {}
        if params is not None and not isinstance(params, dict):
            raise InvalidParams("operator methods take named params")
        k = self.kernel
        if method == "operator.ps":
            return k.ps()
        if method == "operator.start":
            node = p.get("node")
            return k.launch(_text(p, "ref"), _names(p.get("grants")),
                            bool(p.get("grantAll", False)),
                            node=None if node is None else _text(p, "node"))
        if method == "operator.cursor":
            return k.event_cursor()
        if method == "operator.actors":
            actors = getattr(k, "actors", None)  # a Ray runtime's kernel (RayKernel)
            if actors is None:
                raise MethodNotFound("operator.actors: this kernel lists no actors")
            return actors()
        if method == "operator.events":
            app = None if p.get("appId") is None else _text(p, "appId")
            return k.poll_events(_seq(p.get("since", 0)), 0.0, app)
        app_id = _text(p, "appId")
        if method in PERMISSION_METHODS:
            return _permissions(k.permissions, method, app_id, p)
        if method == "operator.info":
            return k.app_info(app_id)
        if method == "operator.logs":  # read where the app runs (Kernel.app_log)
            return k.app_log(app_id, _lines(p.get("lines", 100)))
        grace = _grace(p.get("grace", 5.0))
        if method == "operator.stop":
            return k.stop(app_id, grace)
        return k.restart(app_id, grace)


PERMISSION_METHODS = frozenset({"operator.permissions", "operator.grant", "operator.revoke",
                                "operator.deny", "operator.audit"})


def _permissions(pm: Any, method: str, app_id: str, p: Mapping[str, Any]) -> Any:
    """One ``estarter permissions`` command against the authority ``pm``."""
    if method == "operator.permissions":
        return {"appId": app_id, "requested": sorted(pm.requested(app_id)),
                "granted": sorted(pm.granted(app_id)), "decisions": pm.grants(app_id),
                "pending": pm.pending(app_id)}
    if method == "operator.audit":
        limit = p.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) \
                or not 0 <= limit <= MAX_AUDIT_ROWS:
            raise InvalidParams(f"limit must be an integer from 0 to {MAX_AUDIT_ROWS}")
        return pm.audit(app_id, limit)
    by = "cli"  # who the audit names: an operator's command, as from the files
    if method == "operator.deny":
        names = p.get("permissions")
        return {"appId": app_id,
                "denied": pm.deny(app_id, None if names is None
                                  else _names(names, "permissions"), by)}
    names = _names(p.get("permissions"), "permissions")
    change = pm.grant if method == "operator.grant" else pm.revoke
    return {"appId": app_id, "granted": sorted(change(app_id, names, by=by))}


def _text(p: Mapping[str, Any], key: str) -> str:
    value = p.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"{key} must be a non-empty string", {"param": key})
    return value


def _seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParams("since must be an event number >= 0", {"param": "since"})
    return value


def _lines(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOG_LINES:
        raise InvalidParams(f"lines must be an integer from 0 to {MAX_LOG_LINES}")
    return value


def _names(value: Any, param: str = "grants") -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParams(f"{param} must be a list of strings", {"param": param})
    return list(value)


def _grace(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidParams("grace must be a number of seconds >= 0", {"param": "grace"})
    return min(float(value), MAX_GRACE_SECONDS)


# -- the honest status of apps -------------------------------------------------------


def sample_hosts(ports: Mapping[str, SupervisorPort],
                 timeout: float = HOST_SECONDS) -> dict[str, dict[str, Any]]:
    """Each supervisor's ``info()`` (its app's pid, backoff, CPU and memory sampled on
    its node), asked all at once; those that fail or take longer than ``timeout``
    are left out. Never waits longer than ``timeout``."""
    if not ports:
        return {}
    pool = concurrent.futures.ThreadPoolExecutor(min(len(ports), 16),
                                                 thread_name_prefix="estarter-ps")
    try:
        futures = {app: pool.submit(port.info) for app, port in ports.items()}
        done, _ = concurrent.futures.wait(futures.values(), timeout)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    out: dict[str, dict[str, Any]] = {}
    for app, fut in futures.items():
        if fut in done and fut.exception() is None:
            info = fut.result()
            if isinstance(info, dict) and "error" not in info:
                out[app] = info
    return out


def status_row(rec: Mapping[str, Any], host: Mapping[str, Any] | None,
               now: float) -> dict[str, Any]:
    """One app as ``ps`` shows it. ``rec``: the kernel's record (``AppRecord.to_dict``
    or a durable row); ``host``: its supervisor's ``info()`` now, or None when there is
    none or it did not answer.

    - ended: no pid (nothing runs), restarts as its final exit counted them;
    - in restart backoff: ``restarting``, no pid, ``restartAt`` when the next run starts;
    - running: the pid of the process that runs now, uptime since that run
      started, CPU seconds and resident memory of its process tree (native apps;
      a wasm app runs inside its supervisor, so None);
    - supervisor silent: the kernel's state, and nothing about the process;
    - every row: ``metrics``, the app's call counters (its supervisor's now, else
      those sent with the final exit) and ``droppedLogLines`` (what the console shows).
    """
    row: dict[str, Any] = {
        "appId": rec.get("appId"), "state": rec.get("state"), "pid": None,
        "node": rec.get("node"), "runId": rec.get("runId"), "runtime": rec.get("runtime"),
        "restart": rec.get("restart"), "startedAt": rec.get("startedAt"),
        "exit": rec.get("exit"), "restarts": None, "uptime": None, "cpuSeconds": None,
        "memoryBytes": None, "restartAt": None, "metrics": rec.get("metrics"),
        "droppedLogLines": 0}
    ended = rec.get("exit")
    if ended or rec.get("state") not in LIVE:
        if isinstance(ended, dict):
            row["restarts"] = ended.get("restarts")
            row["metrics"] = row["metrics"] or ended.get("metrics")
        return row
    if host is None:
        return row
    row["restarts"] = host.get("restarts")
    row["metrics"] = host.get("metrics") or row["metrics"]
    row["droppedLogLines"] = ((host.get("messages") or {}).get("droppedLogLines")
                              or host.get("droppedLogLines") or 0)
    row["node"] = host.get("node") or row["node"]
    if host.get("restartAt"):
        row.update(state="restarting", restartAt=host["restartAt"])
        return row
    state = host.get("state")
    if state not in LIVE:  # the run ended and its final exit is on its way
        row["state"] = state or row["state"]
        return row
    row.update(state=state, pid=host.get("pid"))
    started = host.get("startedAt")
    if isinstance(started, (int, float)) and started > 0:
        row["uptime"] = max(0.0, now - float(started))
    usage = host.get("usage") or {}
    if (rec.get("runtime") or host.get("runtime")) != "wasm" and row["pid"]:
        row["cpuSeconds"] = usage.get("cpuSeconds")
        row["memoryBytes"] = usage.get("memoryBytes")
    return row


def status_rows(recs: list[dict[str, Any]], ports: Mapping[str, SupervisorPort],
                kept: Callable[[dict[str, Any]], bool], now: float,
                timeout: float = HOST_SECONDS) -> list[dict[str, Any]]:
    """``status_row`` of each record ``kept`` accepts, sorted by app id."""
    hosts = sample_hosts(ports, timeout)
    rows = [status_row(rec, hosts.get(rec["appId"]), now) for rec in recs if kept(rec)]
    return sorted(rows, key=lambda r: str(r["appId"]))
