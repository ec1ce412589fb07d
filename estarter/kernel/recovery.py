"""A kernel that starts on a home with app records takes over what should be running.

This runs when Ray restarts a dead kernel actor (its supervisors, detached, still
run their apps) and when ``estarter up`` starts a kernel after a crash of the whole
runtime (every supervisor is gone). For each app the records say should run:

- its supervisor still runs that run: adopt it (the kernel's table gets the app
  back, the spawner watches the supervisor again, so an exit whose report was lost
  while the kernel was down is still delivered);
- it is gone: the run ends as ``supervisor_lost`` and, if the app's restart policy
  is ``always`` or ``on-failure``, the app is launched again (its grants are in
  SQLite, so it gets what it had).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import EstarterError
from ..hosting.base import ExitReason, HostState, lost
from ..policy import SandboxPolicy
from ..state import AppRecords
from .events import EventLog
from .ports import SupervisorPort

log = logging.getLogger(__name__)

# (supervisor name, app id, run id) -> (port, its info(), its policy), or None if gone.
Attach = Callable[[str, str, int], tuple[SupervisorPort, dict[str, Any], SandboxPolicy] | None]
RELAUNCHED_POLICIES = ("always", "on-failure")


@dataclass
class Recovery:
    """What a recovery did, for the kernel's log and for tests."""

    adopted: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    relaunched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"adopted": self.adopted, "lost": self.lost, "relaunched": self.relaunched,
                "failed": self.failed}


class Recovering(Protocol):
    """What recovery needs of the kernel (the kernel core satisfies it)."""

    records: AppRecords | None
    events: EventLog

    def adopt(self, app_id: str, run_id: int, ref: str, policy: SandboxPolicy,
              port: SupervisorPort, info: dict[str, Any]) -> None: ...

    def launch(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
               strict: bool | None = None, node: str | None = None) -> dict[str, Any]: ...


def recover(kernel: Recovering, attach: Attach | None) -> Recovery:
    """Adopt live supervisors and relaunch lost apps per policy. Never raises for one
    app: a failure is logged, kept in the result and in the app's record."""

    done = Recovery()
    if kernel.records is None:
        return done
    for row in kernel.records.wanted():
        found = None
        if attach is not None and row.supervisor:
            try:
                found = attach(row.supervisor, row.app_id, row.run_id)
            except EstarterError as exc:
                log.warning("cannot reattach %s: %s", row.app_id, exc)
        if found is not None:
            port, info, policy = found
            kernel.adopt(row.app_id, row.run_id, row.ref, policy, port, info)
            done.adopted.append(row.app_id)
            continue
        exit_info = lost(ExitReason.SUPERVISOR_LOST,
                         "the supervisor was gone when the kernel started")
        kernel.records.ended(row.app_id, row.run_id, HostState.FAILED.value, exit_info)
        kernel.events.append("exit", row.app_id, code=None, reason="supervisor_lost",
                             detail=exit_info["detail"], state=HostState.FAILED.value)
        done.lost.append(row.app_id)
        if row.restart not in RELAUNCHED_POLICIES:
            continue
        try:
            kernel.launch(row.ref)
            done.relaunched.append(row.app_id)
        except EstarterError as exc:
            log.warning("cannot relaunch %s: %s", row.app_id, exc)
            done.failed[row.app_id] = str(exc)
    if done.adopted or done.lost:
        log.info("kernel recovery: %s", done.to_dict())
        kernel.events.append("recovered", None, **done.to_dict())
    return done
