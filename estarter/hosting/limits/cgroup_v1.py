"""cgroup v1 backend: one cgroup per controller hierarchy (memory, pids, cpu, cpuacct).

Layout: ``<root>/<controller>/estarter/<appid>-<unique>``. The launcher writes its
pid into each ``cgroup.procs`` before exec, so the app and everything it forks is
charged from its first instruction.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...policy import SandboxPolicy
from .cgroupfs import ESTARTER, Cgroups, keyed, read_int, write
from .plan import Outcome

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
TASK_SHARES = 1024  # the cpu.shares of one process (nice 0)
MAX_SHARES = 262144
# A file that exists only where the controller is really mounted.
MARKERS = {
    "memory": "memory.limit_in_bytes",
    "pids": "cgroup.procs",
    "cpu": "cpu.cfs_period_us",
    "cpuacct": "cpuacct.usage",
}


def mounted_controllers(root: Path) -> dict[str, Path]:
    """Controller -> hierarchy mount for the v1 controllers we use, if writable."""
    found: dict[str, Path] = {}
    for name in CONTROLLERS:
        mount = root / name
        if (mount / MARKERS[name]).exists() and _writable(mount):
            found[name] = mount
    return found


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


class CgroupsV1(Cgroups):
    name = "cgroup-v1"

    def __init__(self, mounts: dict[str, Path], leaf: str) -> None:
        super().__init__(leaf)
        self.mounts = mounts
        self.by_controller: dict[str, Path] = {}

    def parents(self) -> list[Path]:
        return [m / ESTARTER for m in self.mounts.values()]

    def create(self) -> None:
        for name, mount in self.mounts.items():
            d = mount / ESTARTER / self.leaf
            d.mkdir(parents=True, exist_ok=False)
            self.dirs.append(d)
            self.by_controller[name] = d
        self.weigh_cpu_parent()

    def join_files(self) -> list[str]:
        """The ``tasks`` files: the launcher writes "0" there, which moves the calling
        thread, its only one, so the whole process. For that one case (a single
        thread, the caller itself) Linux skips the cgroup-wide threadgroup lock
        ("cgroup: Optimize single thread migration", 2019, Linux 5.x), whose write
        side waits an RCU grace period: a join into five hierarchies 0.36 ms, against
        6.3-7.0 ms for its pid written into ``cgroup.procs`` (medians of 12, after
        150 ms idle, Linux 6.18 here). An older kernel takes the lock either way: the
        same cost as before."""
        return [str(d / "tasks") for d in self.dirs]

    def prime(self) -> None:
        """Nothing: the launcher's join takes no lock to prime (``join_files``).
        A no-op move would now cost what it saved: it holds the cgroup mutex through
        its RCU wait, and the join needs that mutex."""

    def remove(self) -> list[Path]:
        left = super().remove()
        self.weigh_cpu_parent()
        return left

    def weigh_cpu_parent(self) -> None:
        """Give the ``estarter`` cpu group one process's weight per app in it.

        cgroup v1 weighs a group as one task against every process of its parent
        (the root's: Ray's workers, everyone's processes), so all apps together got
        one process's share of the CPU: 100 apps launched beside 100 starting Ray
        workers took 40 s from spawn to their first line (issue 15). A weight, not a
        limit: ``cpuQuota`` is each app's own ``cpu.cfs_quota_us``, unchanged, and an
        app without one weighs what a process of its own would. Best effort."""
        mount = self.mounts.get("cpu")
        if mount is None:
            return
        parent = mount / ESTARTER
        try:
            with os.scandir(parent) as entries:
                apps = sum(1 for e in entries if e.is_dir(follow_symlinks=False))
            write(parent / "cpu.shares", str(min(MAX_SHARES, TASK_SHARES * max(1, apps))))
        except OSError:
            pass

    def apply(self, policy: SandboxPolicy, out: Outcome) -> set[str]:
        """Write the limits this hierarchy can hold; returns the manifest keys handled."""
        done: set[str] = set()
        mem = self.by_controller.get("memory")
        if policy.memory_limit_bytes and mem is not None:
            n = str(policy.memory_limit_bytes)
            try:
                self.set(mem / "memory.limit_in_bytes", n)
                done.add("memoryLimitMb")
                out.ok(f"memoryLimitMb: {mem}/memory.limit_in_bytes={n}")
            except OSError as exc:
                out.missing(f"memoryLimitMb (memory.limit_in_bytes: {exc.strerror})")
            # Without memsw the app could page out to swap instead of being OOM-killed.
            if "memoryLimitMb" in done and (mem / "memory.memsw.limit_in_bytes").exists():
                try:
                    self.set(mem / "memory.memsw.limit_in_bytes", n)
                except OSError as exc:
                    out.missing(f"memoryLimitMb swap cap (memsw: {exc.strerror})")
        pids = self.by_controller.get("pids")
        if policy.max_processes and pids is not None:
            try:
                self.set(pids / "pids.max", str(policy.max_processes))
                done.add("maxProcesses")
                out.ok(f"maxProcesses: {pids}/pids.max={policy.max_processes} (tasks)")
            except OSError as exc:
                out.missing(f"maxProcesses (pids.max: {exc.strerror})")
        cpu = self.by_controller.get("cpu")
        if policy.cpu_quota_percent and cpu is not None:
            period = read_int(cpu / "cpu.cfs_period_us", 100_000)
            quota = max(1000, policy.cpu_quota_percent * period // 100)
            try:
                self.set(cpu / "cpu.cfs_period_us", str(period))
                self.set(cpu / "cpu.cfs_quota_us", str(quota))
                done.add("cpuQuota")
                out.ok(f"cpuQuota: {cpu}/cpu.cfs_quota_us={quota} per {period} us")
            except OSError as exc:
                out.missing(f"cpuQuota (cpu.cfs_quota_us: {exc.strerror})")
        return done

    def oom_kills(self) -> int:
        mem = self.by_controller.get("memory")
        if mem is None:
            return 0
        # "oom_kill N" (Linux 4.13+) counts the kernel's OOM kills inside this cgroup.
        return keyed(mem / "memory.oom_control").get("oom_kill", 0)

    def cpu_usage_ns(self) -> int | None:
        acct = self.by_controller.get("cpuacct")
        return None if acct is None else read_int(acct / "cpuacct.usage")
