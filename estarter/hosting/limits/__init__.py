"""OS limits for native apps: what the launcher applies before exec, and the clean-up.

The process host asks :func:`prepare` for an :class:`AppLimits` per launch. It turns
the policy into a launcher spec (cgroups to join, rlimits, namespaces) plus an argv
wrapper (the bwrap sandbox), and afterwards reads the kernel's counters to explain
an exit, kills every process of the app and removes what it created.

Backends, by detection: cgroup v2 (unified hierarchy with controllers), cgroup v1
(memory/pids/cpu/cpuacct hierarchies), else rlimits only. ``host_capabilities()``
says which one this host gets and why.
"""

from __future__ import annotations

from pathlib import Path

from ...policy import SandboxPolicy
from ..base import HostContext
from . import premade
from .app import AppLimits
from .cgroupfs import sweep_stale_later
from .detect import CGROUP_ROOT, HostFacts, detect, host_capabilities
from .plan import LaunchPlan

BACKENDS = ("cgroup-v2", "cgroup-v1", "rlimit")


def prepare(
    policy: SandboxPolicy,
    ctx: HostContext,
    *,
    cgroup_root: Path | None = None,
    backend: str | None = None,
    run_as: tuple[int, int] | None = None,
    facts: HostFacts | None = None,
) -> AppLimits:
    """The limits this host can apply for ``policy``. Creates nothing yet (``plan`` does).

    ``backend`` forces one of BACKENDS (tests; an operator setting); ``run_as`` runs
    the app as that (uid, gid) (the launcher drops to it last, before exec).
    """
    facts = facts or detect(cgroup_root or CGROUP_ROOT)
    chosen = backend or facts.backend
    if chosen not in BACKENDS:
        raise ValueError(f"unknown limits backend {chosen!r}")
    cgroups = (premade.take(facts, chosen, policy.app_id)
               or premade.new_cgroups(facts, chosen, policy.app_id))
    if cgroups is not None:
        sweep_stale_later(cgroups.parents())
    return AppLimits(policy, ctx, facts, cgroups, run_as=run_as)


def expect_launch(app_id: str, cgroup_root: Path | None = None) -> bool:
    """A launch of ``app_id`` is coming to this process: make its cgroups now
    (``premade``), so that its launch neither makes them nor waits at the join."""
    return premade.premake(detect(cgroup_root or CGROUP_ROOT, probe_sandbox=False), app_id)


def sweep_soon(cgroup_root: Path | None = None) -> None:
    """Start this process's first sweep of stale cgroups now (``sweep_stale_later``,
    a thread): a supervisor waiting in the pool calls it, so that its first launch
    neither starts that thread nor runs beside it."""
    facts = detect(cgroup_root or CGROUP_ROOT, probe_sandbox=False)
    cgroups = premade.new_cgroups(facts, facts.backend, "sweep")  # for its parents only
    if cgroups is not None:
        sweep_stale_later(cgroups.parents())


def forget_launch(app_id: str, cgroup_root: Path | None = None) -> None:
    """That launch of ``app_id`` is over: remove what ``expect_launch`` made for it
    and it did not take (a no-op when it did)."""
    premade.drop(cgroup_root or CGROUP_ROOT, app_id)  # the key: no need to probe the host


__all__ = [
    "AppLimits",
    "HostFacts",
    "LaunchPlan",
    "detect",
    "expect_launch",
    "forget_launch",
    "host_capabilities",
    "prepare",
    "sweep_soon",
]
