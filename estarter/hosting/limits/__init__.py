"""OS limits for native apps: what the launcher applies before exec, and the clean-up.

The process host asks :func:`prepare` for an :class:`AppLimits` per launch. It turns
the policy into a launcher spec (cgroups to join, rlimits, namespaces) plus an argv
wrapper (the sandbox), and afterwards reads the kernel's counters to explain an exit,
kills every process of the app and removes what it created.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...policy import SandboxPolicy
from ..base import ExitReason, HostContext


@dataclass
class LaunchPlan:
    """How to start the child: ``launcher spec`` + ``wrapper`` + app argv."""

    spec: dict[str, Any]
    wrapper: list[str]
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    applied: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)


class AppLimits:
    """Limits of one launch. The base class applies only what needs no privilege:
    a new session, death with the parent, and kill by process group.
    """

    def __init__(self, policy: SandboxPolicy, ctx: HostContext) -> None:
        self.policy = policy
        self.ctx = ctx
        self.pid: int | None = None

    def plan(self, argv: list[str], env: dict[str, str], cwd: Path) -> LaunchPlan:
        spec = {"setsid": True, "pdeathsig": int(signal.SIGKILL), "parent_pid": os.getpid()}
        return LaunchPlan(spec, [], argv, env, cwd, applied=["session", "pdeathsig"])

    def started(self, pid: int) -> None:
        """Called with the child's pid right after spawn."""
        self.pid = pid

    def exit_reason(self, code: int | None) -> ExitReason | None:
        """A limit that explains this exit (from the kernel's counters), or None."""
        return None

    def kill(self) -> None:
        """SIGKILL every process of the app. Idempotent, never raises."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def alive_pids(self) -> list[int]:
        """Processes of the app still present (for tests and ``inspect``)."""
        return []

    def report(self) -> dict[str, Any]:
        return {"backend": "session"}

    def cleanup(self) -> None:
        """Remove what was created for this launch. Idempotent."""


def prepare(policy: SandboxPolicy, ctx: HostContext) -> AppLimits:
    """The limits backend this host can apply for ``policy``."""
    return AppLimits(policy, ctx)


__all__ = ["AppLimits", "LaunchPlan", "prepare"]
