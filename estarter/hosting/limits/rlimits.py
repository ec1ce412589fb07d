"""rlimits: the fallback when no cgroup can be used (an unprivileged supervisor).

They are per process, not per app, so they bound less: RLIMIT_AS caps virtual
memory (never used for wasm: it breaks wasmtime's 4 GiB reservations), RLIMIT_NPROC
counts every process of the real uid and does nothing for root, RLIMIT_CPU bounds
total CPU seconds (SIGXCPU at the soft limit, SIGKILL at the hard one), so a
``cpuQuota`` becomes ``quota x maxRuntimeSeconds`` of CPU time.

The kernel keeps no counter of RLIMIT_AS refusals or of SIGXCPU deliveries that
outlives the process, so :class:`TreeSampler` reads the app's own counters while it
runs (``VmPeak``, utime+stime from /proc) and the exit is explained from those.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import threading
from typing import Any

import psutil

from ...kinds import RuntimeKind
from ...policy import SandboxPolicy
from .plan import Outcome

SAMPLE_SECONDS = 0.02
MEMORY_PEAK_FRACTION = 0.5  # VmPeak seen at >= half the limit, then a failed exit
CPU_FRACTION = 0.9
CAP_SYS_RESOURCE = 24


def plan_rlimits(policy: SandboxPolicy, handled: set[str], app_is_root: bool,
                 out: Outcome) -> dict[str, list[int]]:
    """rlimits for what the cgroups did not handle, plus the per-file disk cap."""
    rl: dict[str, list[int]] = {}
    if policy.memory_limit_bytes and "memoryLimitMb" not in handled:
        if policy.runtime is RuntimeKind.WASM:
            out.missing("memoryLimitMb (no memory cgroup; RLIMIT_AS would break wasmtime)")
        else:
            n = policy.memory_limit_bytes
            rl["RLIMIT_AS"] = [n, n]
            out.ok(f"memoryLimitMb: RLIMIT_AS={n} (virtual memory per process)")
    if policy.max_processes and "maxProcesses" not in handled:
        if app_is_root:
            out.missing("maxProcesses (no pids cgroup; RLIMIT_NPROC does nothing for root)")
        else:
            n = policy.max_processes
            rl["RLIMIT_NPROC"] = [n, n]
            out.ok(f"maxProcesses: RLIMIT_NPROC={n} (all tasks of the app's uid)")
    if policy.cpu_quota_percent and "cpuQuota" not in handled:
        if policy.max_runtime_seconds > 0:
            secs = max(1, math.ceil(policy.cpu_quota_percent / 100 * policy.max_runtime_seconds))
            rl["RLIMIT_CPU"] = [secs, secs + 1]
            out.ok(f"cpuQuota: RLIMIT_CPU={secs}s (quota x maxRuntimeSeconds, not a rate)")
        else:
            out.missing("cpuQuota (no cpu cgroup; RLIMIT_CPU needs maxRuntimeSeconds)")
    if policy.disk_quota_bytes > 0:
        n = policy.disk_quota_bytes
        rl["RLIMIT_FSIZE"] = [n, n]
        out.ok(f"diskQuotaMb: RLIMIT_FSIZE={n} per file written directly; "
               "total held by the VFS quota")
    if policy.runtime is not RuntimeKind.WASM:
        rl["RLIMIT_NOFILE"] = _nofile(policy.max_open_files, out)
    return rl


def _nofile(wanted: int, out: Outcome) -> list[int]:
    """RLIMIT_NOFILE = maxOpenFiles (soft = hard, so the app cannot raise it). Above
    our own hard limit only CAP_SYS_RESOURCE may go: without it, our hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and wanted > hard and not _cap_sys_resource():
        out.missing(f"maxOpenFiles={wanted} (above this supervisor's hard limit "
                    f"without CAP_SYS_RESOURCE): RLIMIT_NOFILE={hard}")
        return [hard, hard]
    out.ok(f"maxOpenFiles: RLIMIT_NOFILE={wanted}")
    return [wanted, wanted]


def _cap_sys_resource() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants. Reads only: never waits or reaps."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class TreeSampler:
    """Samples VmPeak and CPU seconds of a process tree until the root is gone."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_vm = 0
        self.max_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"estarter-sampler-{pid}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = tree(self.pid)
            if not procs:
                return
            for p in procs:
                self._sample(p)
            self._stop.wait(self.interval)

    def _sample(self, p: psutil.Process) -> None:
        try:
            with open(f"/proc/{p.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmPeak:"):
                        self.peak_vm = max(self.peak_vm, int(line.split()[1]) * 1024)
                        break
            t = p.cpu_times()
            self.max_cpu = max(self.max_cpu, t.user + t.system)
        except (OSError, ValueError, psutil.Error):
            pass

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> dict[str, Any]:
        return {"peakVmBytes": self.peak_vm, "maxCpuSeconds": round(self.max_cpu, 3)}


def wait_with_usage(pid: int) -> tuple[int, float]:
    """Reap the child ``pid``: (exit code as Popen gives it, CPU seconds of its tree).

    wait4's rusage counts every descendant the child waited for (bwrap waits for
    the app), to the very end; a sampler only sees what it looked at."""
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def killed_by(code: int | None, *sigs: int) -> bool:
    """The main process (or, behind bwrap, the app it relays as 128+n) died of ``sigs``."""
    if code is None:
        return False
    return any(code in (-s, 128 + s) for s in sigs)


CPU_SIGNALS = (int(signal.SIGXCPU), int(signal.SIGKILL))
