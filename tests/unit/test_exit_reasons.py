"""Which limit explains an exit under the rlimit backend, whatever the sampler saw:
on a busy machine it may have seen nothing before RLIMIT_CPU ended the app, and the
child's rusage (wait4) is what tells."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from estarter.hosting import limits
from estarter.hosting.base import ExitReason
from estarter.hosting.limits.rlimits import wait_with_usage

from .test_limits_cgroups import make_ctx, make_policy


class StillSampler:
    """A sampler that saw no CPU time and no memory (the app died between samples)."""

    max_cpu = 0.0
    peak_vm = 0

    def stop(self) -> None:
        pass


def rlimited(tmp_path: Path) -> limits.AppLimits:
    facts = limits.detect(tmp_path / "no-cgroups", probe_sandbox=False)
    lim = limits.prepare(make_policy(tmp_path, max_runtime_seconds=5, cpu_quota_percent=20),
                         make_ctx(tmp_path), facts=facts, backend="rlimit")
    lim.plan(["app"], {}, tmp_path)
    assert lim.rlimits["RLIMIT_CPU"][0] == 1  # 20 % of 5 s
    lim.sampler = StillSampler()  # type: ignore[assignment]
    return lim


def test_rusage_cpu_time_makes_it_the_cpu_limit_even_unsampled(tmp_path: Path) -> None:
    xcpu, kill = -int(signal.SIGXCPU), -int(signal.SIGKILL)
    assert rlimited(tmp_path).exit_reason(xcpu, cpu_seconds=1.0) is ExitReason.CPU_LIMIT
    assert rlimited(tmp_path).exit_reason(kill, cpu_seconds=1.2) is ExitReason.CPU_LIMIT
    # behind bwrap the app's signal comes back as 128+n
    assert rlimited(tmp_path).exit_reason(128 + int(signal.SIGXCPU), 1.0) is ExitReason.CPU_LIMIT


def test_sigxcpu_is_the_limit_sigkill_needs_the_cpu_time(tmp_path: Path) -> None:
    assert rlimited(tmp_path).exit_reason(-int(signal.SIGXCPU)) is ExitReason.CPU_LIMIT
    assert rlimited(tmp_path).exit_reason(-int(signal.SIGKILL), cpu_seconds=0.05) is None
    assert rlimited(tmp_path).exit_reason(-int(signal.SIGKILL)) is None


def test_wait_with_usage_counts_the_childs_cpu() -> None:
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.3: pass"])
    code, cpu = wait_with_usage(proc.pid)
    proc.returncode = code
    assert code == 0 and cpu >= 0.3
