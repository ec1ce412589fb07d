"""Limits benchmarks: what a launch spends on limits set-up, and how fast a memory
bomb is killed. Needs root and writable cgroups for the cgroup figures.

    python -m benchmarks.bench_limits
"""

from __future__ import annotations

import concurrent.futures
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estarter.hosting import limits
from estarter.hosting.base import HostContext
from estarter.hosting.spawn import launcher_command
from estarter.manifest import RestartPolicy, RuntimeKind
from estarter.policy import MIB, SandboxPolicy

Report = Callable[[str, float, float, "float | None", str], None]
ROUNDS = 15


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
    cg = _median(lambda: _launch(root, _policy(root, "b-cg", "", sandboxed=False), app))
    full = _median(lambda: _launch(root, _policy(root, "b-full", ""), app))
    report("limits: launch, cgroups+rlimits+netns vs bare launcher (s)", cg, base, None, "s")
    report("limits: launch, cgroups+bwrap sandbox vs bare launcher (s)", full, base, None, "s")
    report("limits: set-up cost per launch, full (ms over bare)", (full - base) * 1000,
           base * 1000, None, "ms")


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
    plan = lim.plan([sys.executable, "-E", "-s", "-B", str(policy.entry)], {}, root)
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
    facts = limits.detect()
    if facts.backend == "rlimit":
        print("bench_limits: no writable cgroups (not root?): skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        root = Path(tmp)
        bench_launch(report, root)
        bench_memory_bomb(report, root)


def _print(name: str, ours: float, baseline: float, target: float | None, unit: str) -> None:
    ratio = ours / baseline if baseline else float("inf")
    tgt = "" if target is None else f"target <= {target:g}x"
    print(f"{name:62s} ours {ours:9.4g} {unit:2s} base {baseline:9.4g} {unit:2s} "
          f"ratio {ratio:5.2f}x {tgt}")


if __name__ == "__main__":
    run(_print)
