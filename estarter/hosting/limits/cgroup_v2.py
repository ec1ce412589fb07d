"""cgroup v2 backend: one cgroup ``<root>/estarter/<appid>-<unique>`` in the unified tree.

Controllers are enabled for our subtree through ``cgroup.subtree_control`` of the
root and of ``estarter`` (which itself holds no process, as v2 requires).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ...policy import SandboxPolicy
from .cgroupfs import (
    ESTARTER,
    Cgroups,
    keyed,
    kill_all,
    own_cgroup,
    prime_join,
    read,
    write,
)
from .plan import Outcome

WANTED = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


def available_controllers(root: Path) -> frozenset[str]:
    try:
        return frozenset(read(root / "cgroup.controllers").split())
    except OSError:
        return frozenset()


class CgroupsV2(Cgroups):
    name = "cgroup-v2"

    def __init__(self, root: Path, leaf: str) -> None:
        super().__init__(leaf)
        self.root = root
        self.enabled: set[str] = set()
        self.dir: Path | None = None

    def parents(self) -> list[Path]:
        return [self.root / ESTARTER]

    def prime(self) -> None:
        own = own_cgroup(self.root)
        prime_join(own / "cgroup.procs" if own is not None else None, tid=False)

    def create(self) -> None:
        parent = self.root / ESTARTER
        parent.mkdir(exist_ok=True)
        wanted = [c for c in WANTED if c in available_controllers(self.root)]
        for level in (self.root, parent):
            # May fail (EBUSY in a container whose root holds processes): then the
            # leaf gets fewer controllers and apply() reports each one missing.
            with contextlib.suppress(OSError):
                write(level / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        # What the leaf may use is what its parent delegates (its subtree_control).
        self.enabled = _enabled(parent) & set(wanted)
        d = parent / self.leaf
        d.mkdir(exist_ok=False)
        self.dirs.append(d)
        self.dir = d

    def apply(self, policy: SandboxPolicy, out: Outcome) -> set[str]:
        d = self.dir
        assert d is not None, "create() first"
        done: set[str] = set()

        def put(key: str, ctrl: str, file: str, value: str) -> bool:
            if ctrl not in self.enabled:
                return False
            try:
                self.set(d / file, value)
            except OSError as exc:
                out.missing(f"{key} ({file}: {exc.strerror})")
                return False
            return True

        if policy.memory_limit_bytes:
            n = str(policy.memory_limit_bytes)
            if put("memoryLimitMb", "memory", "memory.max", n):
                done.add("memoryLimitMb")
                out.ok(f"memoryLimitMb: {d}/memory.max={n}")
                # No swap: over the limit the kernel OOM-kills rather than pages out.
                # Missing without swap accounting; then there is no swap to cap.
                with contextlib.suppress(OSError):
                    self.set(d / "memory.swap.max", "0")
        if policy.max_processes and put("maxProcesses", "pids", "pids.max",
                                         str(policy.max_processes)):
            done.add("maxProcesses")
            out.ok(f"maxProcesses: {d}/pids.max={policy.max_processes} (tasks)")
        if policy.cpu_quota_percent:
            quota = max(1000, policy.cpu_quota_percent * CPU_PERIOD_US // 100)
            if put("cpuQuota", "cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}"):
                done.add("cpuQuota")
                out.ok(f"cpuQuota: {d}/cpu.max={quota} {CPU_PERIOD_US}")
        return done

    def oom_kills(self) -> int:
        if self.dir is None:
            return 0
        return keyed(self.dir / "memory.events").get("oom_kill", 0)

    def cpu_usage_ns(self) -> int | None:
        if self.dir is None:
            return None
        usec = keyed(self.dir / "cpu.stat").get("usage_usec")
        return None if usec is None else usec * 1000

    def kill(self) -> None:
        # cgroup.kill (Linux 5.14+) kills the whole subtree atomically, forks included.
        if self.dir is not None:
            try:
                write(self.dir / "cgroup.kill", "1")
                self.values[str(self.dir / "cgroup.kill")] = "1"
            except OSError:
                pass
        kill_all(self.dirs)


def _enabled(parent: Path) -> set[str]:
    try:
        return {c.lstrip("+") for c in read(parent / "cgroup.subtree_control").split()}
    except OSError:
        return set()
