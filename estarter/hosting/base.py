"""The AppHost contract every runtime implements, and the values it reports."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class HostState(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    FAILED = "failed"


class ExitReason(str, Enum):
    EXITED = "exited"  # code 0
    CRASHED = "crashed"  # non-zero code, signal, trap
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    TIMEOUT = "timeout"  # maxRuntimeSeconds
    STOPPED = "stopped"  # we asked it to stop
    PROTOCOL_VIOLATION = "protocol_violation"
    SUPERVISOR_LOST = "supervisor_lost"
    NODE_LOST = "node_lost"
    UNRESPONSIVE = "unresponsive"  # missed its healthCheck heartbeat (system.heartbeat)


@dataclass(frozen=True)
class ExitInfo:
    """How an app ended. ``code`` is the exit code, or -signal, or None if unknown."""

    code: int | None
    reason: ExitReason
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason.value, "detail": self.detail}

    @staticmethod
    def from_dict(obj: dict[str, Any]) -> ExitInfo:
        return ExitInfo(obj.get("code"), ExitReason(obj["reason"]), obj.get("detail", ""))

    @property
    def failed(self) -> bool:
        """True for the ends a restart policy of ``on-failure`` restarts."""
        return self.reason not in (ExitReason.EXITED, ExitReason.STOPPED)


def lost(reason: ExitReason, detail: str) -> dict[str, Any]:
    """The exit a kernel records for an app whose supervisor vanished."""
    return {**ExitInfo(None, reason, detail).to_dict(), "failed": True}


# An API call from the app: (method, params) -> a future of the result. The future
# fails with an EstarterError (sent back to the app as its JSON-RPC error).
ApiHandler = Callable[[str, Any], "concurrent.futures.Future[Any]"]
# A log line of the app: (level, message). Levels: debug info warning error.
LogSink = Callable[[str, str], None]
# The same with the line's stream: stdout stderr app estarter (see applog.STREAMS).
TaggedLogSink = Callable[[str, str, str], None]
ExitCallback = Callable[[ExitInfo], None]


@dataclass(frozen=True)
class HostContext:
    """What a host needs besides its policy; passed in, never looked up."""

    api: ApiHandler
    log: LogSink
    on_exit: ExitCallback
    home: Path  # ESTARTER_HOME
    appdata: Path  # the app's appdata zone on disk (its working folder)
    zones: dict[str, Path] = field(default_factory=dict)  # virtual name -> host folder
    env: dict[str, str] = field(default_factory=dict)  # extra ESTARTER_* variables
    # Unreachable for an app with network, besides this node's own addresses (found
    # at launch): addresses or networks, e.g. the other Ray nodes'.
    blocked_addresses: tuple[str, ...] = ()
    # Where the app's own text goes with its stream; None: to ``log``, untagged.
    tagged_log: TaggedLogSink | None = None
    # Whether the zones are bind-mounted (estarter.storage: False on a node whose
    # folders are not the VFS actor's); the app then has fs.* only.
    direct_zones: bool = True
    # Called once, when the app first writes to its channel (the SDK writes a line
    # break as it connects): its first call follows within milliseconds.
    on_connect: Callable[[], None] | None = None
    # Called once the app runs (its pid; None for a wasm guest), before any of its
    # output is read: the run's start marker goes in its log ahead of its lines.
    on_spawned: Callable[[int | None], None] | None = None
    # ``api`` for a call that needs no answer of its own here: the kernel's reply as
    # it encoded it (``kernel_wire``), for a host to splice into its answer frame;
    # None: that call goes to ``api``. Optional (a host may use ``api`` only).
    api_encoded: Callable[[str, Any], bytes | None] | None = None


@runtime_checkable
class AppHost(Protocol):
    """One running app. Every method is safe to call from any thread."""

    app_id: str

    @property
    def state(self) -> HostState: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None:
        """Start the app; returns once it runs. Raises LaunchError."""

    def stop(self, grace: float = 5.0) -> ExitInfo:
        """Ask the app to exit, wait ``grace`` seconds, kill everything, reap.

        Idempotent; returns the exit info (reason ``stopped`` unless it had already ended).
        """
        ...

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        """The exit info once the app has ended, or None after ``timeout``."""
        ...

    def notify(self, method: str, params: Any) -> None:
        """Send a host-to-app notification; never blocks (dropped if the app can't take it)."""

    def info(self) -> dict[str, Any]:
        """A JSON-able snapshot: pid, state, limits applied and not applied."""
        ...

    def close(self) -> None:
        """Release everything; stops the app first if it runs. Idempotent."""
