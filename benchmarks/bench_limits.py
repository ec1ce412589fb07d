"""Limits benchmarks: what a launch spends on limits set-up, and how fast a memory
bomb is killed. Needs root and writable cgroups for the cgroup figures.

    python -m benchmarks.bench_limits
"""

from __future__ import annotations

import concurrent.futures
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estarter.hosting import limits, python_app
from estarter.hosting.base import HostContext
from estarter.hosting.spawn import launcher_command
from estarter.manifest import RestartPolicy, RuntimeKind
from estarter.policy import MIB, SandboxPolicy

Report = Callable[[str, float, float, "float | None", str], None]
ROUNDS = 15
SANDBOX_ROUNDS = 40
SANDBOX_BUDGET_MS = 10.0  # issue 15: bwrap's set-up per launch over a bare launch
FIGURES: dict[str, float | None] = {
    "sandbox set-up per launch (bwrap, our argv) over a bare exec": 1.0,
}
ADMIN = frozenset({"fs.write", "admin"})  # sandboxed: false needs admin granted


def _policy(root: Path, app_id: str, source: str, **over: Any) -> SandboxPolicy:
    folder = root / app_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(source)
    values: dict[str, Any] = dict(
        app_id=app_id, runtime=RuntimeKind.PYTHON, app_dir=folder, entry=folder / "app.py",
        args=(), requested=frozenset({"fs.write"}), granted=frozenset({"fs.write"}),
        memory_limit_bytes=64 * MIB, max_processes=16, cpu_quota_percent=50,
        network_allowed=False, max_runtime_seconds=0, disk_quota_bytes=100 * MIB,
        restart=RestartPolicy.NEVER, sandboxed=True)
    values.update(over)
    return SandboxPolicy(**values)


def _ctx(root: Path, app_id: str) -> HostContext:
    def api(method: str, params: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        fut.set_result({})
        return fut

    zones = {z: root / "home" / z / app_id for z in ("appdata", "cache", "temp")}
    return HostContext(api=api, log=lambda level, msg: None, on_exit=lambda info: None,
                       home=root / "home", appdata=zones["appdata"], zones=zones)


def _launch(root: Path, policy: SandboxPolicy | None, argv: list[str]) -> float:
    """Seconds from nothing to the app's exit: prepare, plan, spawn, wait, clean up."""
    t0 = time.perf_counter()
    if policy is None:
        spec: dict[str, Any] = {"setsid": True, "pdeathsig": 0}
        wrapper: list[str] = []
        fds: tuple[int, ...] = ()
        lim = None
    else:
        lim = limits.prepare(policy, _ctx(root, policy.app_id))
        plan = lim.plan(argv, {"PATH": "/usr/bin:/bin"}, root)
        spec, wrapper, argv, fds = plan.spec, plan.wrapper, plan.argv, plan.pass_fds
    proc = subprocess.Popen(launcher_command(spec, [*wrapper, *argv]), cwd=root, pass_fds=fds)
    if lim is not None:
        lim.started(proc.pid)
    try:
        proc.wait(30)
    finally:
        if lim is not None:
            lim.kill()
            lim.cleanup()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return time.perf_counter() - t0


def _median(fn: Callable[[], float]) -> float:
    fn()  # warm the page cache and detection caches
    return statistics.median(fn() for _ in range(ROUNDS))


def bench_launch(report: Report, root: Path) -> None:
    app = ["/bin/true"]
    base = _median(lambda: _launch(root, None, app))
    cg = _median(lambda: _launch(root, _policy(root, "b-cg", "", sandboxed=False,
                                               requested=ADMIN, granted=ADMIN), app))
    full = _median(lambda: _launch(root, _policy(root, "b-full", ""), app))
    report("limits: launch, cgroups+rlimits+netns vs bare launcher (s)", cg, base, None, "s")
    report("limits: launch, cgroups+bwrap sandbox vs bare launcher (s)", full, base, None, "s")
    report("limits: set-up cost per launch, full (ms over bare)", (full - base) * 1000,
           base * 1000, None, "ms")


def bench_sandbox(report: Report, root: Path) -> None:
    """What bwrap with the argv estarter gives a sandboxed python app costs per launch
    over exec'ing the same program bare: ``bwrap ARGV -- /bin/true`` vs ``/bin/true``,
    interleaved, medians. Wall time (what a launch waits) and, for reference, the CPU
    time of the child processes (what the machine spends; less load-sensitive)."""
    import resource

    from estarter.hosting.limits.sandbox import bwrap_argv

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        unmeasured = getattr(report, "unmeasured", None)
        if unmeasured is not None:
            unmeasured(next(iter(FIGURES)), 1.0, "bwrap is not installed")
        return
    policy = _policy(root, "b-sandbox", "")
    wrapper = bwrap_argv(bwrap, policy, _ctx(root, policy.app_id))
    wall: dict[str, list[float]] = {"bare": [], "bwrap": []}
    cpu: dict[str, list[float]] = {"bare": [], "bwrap": []}
    for _ in range(SANDBOX_ROUNDS):
        for kind, argv in (("bare", ["/bin/true"]), ("bwrap", [*wrapper, "/bin/true"])):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, cwd=root)
            wall[kind].append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[kind].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    extra = (statistics.median(wall["bwrap"]) - statistics.median(wall["bare"])) * 1000
    extra_cpu = (statistics.median(cpu["bwrap"]) - statistics.median(cpu["bare"])) * 1000
    report(next(iter(FIGURES)), extra, SANDBOX_BUDGET_MS, 1.0, "ms")
    report("  of which CPU time (children's user+sys), vs the same budget", extra_cpu,
           SANDBOX_BUDGET_MS, None, "ms")


BOMB = """\
import sys, time
print(time.time(), file=sys.stderr, flush=True)
hog = []
while True:
    hog.append(b'x' * (1 << 20))
"""


def _bomb(root: Path, limit_mb: int) -> float:
    """Seconds from the bomb's first allocation to its exit being seen."""
    policy = _policy(root, f"b-bomb{limit_mb}", BOMB, memory_limit_bytes=limit_mb * MIB)
    lim = limits.prepare(policy, _ctx(root, policy.app_id))
    # The base interpreter: the venv's link points outside what the sandbox mounts.
    plan = lim.plan([python_app.interpreter(), "-I", "-S", "-B", str(policy.entry)], {}, root)
    proc = subprocess.Popen(launcher_command(plan.spec, [*plan.wrapper, *plan.argv]),
                            cwd=root, stderr=subprocess.PIPE, pass_fds=plan.pass_fds)
    lim.started(proc.pid)
    try:
        assert proc.stderr is not None
        started = float(proc.stderr.readline())
        code = proc.wait(10)
        ended = time.time()
        reason = lim.exit_reason(code)
        if reason is None or reason.value != "memory_limit":
            raise RuntimeError(f"bomb ended with code {code}, reason {reason}")
        return ended - started
    finally:
        lim.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        lim.cleanup()


def bench_memory_bomb(report: Report, root: Path) -> None:
    latency = statistics.median(_bomb(root, 64) for _ in range(5))
    report("limits: memory bomb (64 MiB limit) killed, vs the 1 s budget", latency, 1.0, 1.0,
           "s")


def run(report: Report) -> None:
    parts: list[Callable[[Report, Path], None]] = [bench_sandbox]
    if limits.detect().backend == "rlimit":
        print("bench_limits: no writable cgroups (not root?): cgroup figures skipped",
              file=sys.stderr)
    else:
        parts += [bench_launch, bench_memory_bomb]
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        root = Path(tmp)
        for part in parts:
            try:  # one failing part leaves the others' figures
                part(report, root)
            except Exception:
                traceback.print_exc()


def _print(name: str, ours: float, baseline: float, target: float | None, unit: str) -> None:
    ratio = ours / baseline if baseline else float("inf")
    tgt = "" if target is None else f"target <= {target:g}x"
    print(f"{name:62s} ours {ours:9.4g} {unit:2s} base {baseline:9.4g} {unit:2s} "
          f"ratio {ratio:5.2f}x {tgt}")


if __name__ == "__main__":
    run(_print)
