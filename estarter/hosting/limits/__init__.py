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

import os
import secrets
from pathlib import Path

from ...policy import SandboxPolicy
from ..base import HostContext
from .app import AppLimits
from .cgroup_v1 import CgroupsV1, prime_v1
from .cgroup_v2 import CgroupsV2, prime_v2
from .cgroupfs import Cgroups, sweep_stale_later
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
    leaf = f"{policy.app_id}-{os.getpid()}-{secrets.token_hex(4)}"
    cgroups: Cgroups | None = None
    if chosen == "cgroup-v2" and facts.v2_root is not None:
        cgroups = CgroupsV2(facts.v2_root, leaf)
    elif chosen == "cgroup-v1" and facts.v1_mounts:
        cgroups = CgroupsV1(facts.v1_mounts, leaf)
    if cgroups is not None:
        sweep_stale_later(cgroups.parents())
    return AppLimits(policy, ctx, facts, cgroups, run_as=run_as)


def prime_cgroup_join(cgroup_root: Path | None = None) -> None:
    """A launch is coming to this node: start the no-op cgroup move of
    ``cgroupfs.prime_join`` now, so that its wait is over by the time the app's
    cgroups are made and joined (a supervisor gets this before its ``start``)."""
    facts = detect(cgroup_root or CGROUP_ROOT, probe_sandbox=False)
    if facts.v2_root is not None:
        prime_v2(facts.v2_root)
    elif facts.v1_mounts:
        prime_v1(facts.v1_mounts)


__all__ = [
    "AppLimits",
    "HostFacts",
    "LaunchPlan",
    "detect",
    "host_capabilities",
    "prepare",
    "prime_cgroup_join",
]
