"""cgroup v2 and v1 backends against fake cgroupfs folders: files written, counters
parsed, kill written, stale cgroups swept. No processes, no root needed."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from estarter.hosting import limits
from estarter.hosting.base import ExitReason, HostContext
from estarter.hosting.limits import cgroupfs
from estarter.manifest import RestartPolicy, RuntimeKind
from estarter.policy import MIB, SandboxPolicy


def make_policy(tmp_path: Path, **over: object) -> SandboxPolicy:
    base = SandboxPolicy(
        app_id="demo", runtime=RuntimeKind.PYTHON, app_dir=tmp_path, entry=tmp_path / "app.py",
        # sandboxed=False and networkAllowed count only when granted: these tests grant them.
        args=(), requested=frozenset({"admin", "net.access"}),
        granted=frozenset({"admin", "net.access"}), memory_limit_bytes=64 * MIB,
        max_processes=8, cpu_quota_percent=20, network_allowed=True, max_runtime_seconds=0,
        disk_quota_bytes=10 * MIB, restart=RestartPolicy.NEVER, sandboxed=False,
    )
    return replace(base, **over)  # type: ignore[arg-type]


class Logs:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        self.lines.append((level, message))


def make_ctx(tmp_path: Path, logs: Logs | None = None) -> HostContext:
    return HostContext(api=lambda m, p: None,  # type: ignore[arg-type,return-value]
                       log=logs or Logs(), on_exit=lambda i: None, home=tmp_path / "home",
                       appdata=tmp_path / "home" / "appdata")


@pytest.fixture
def fake_v2(tmp_path: Path) -> Path:
    root = tmp_path / "cgroupfs"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_v2_is_detected_and_limits_are_written(tmp_path: Path, fake_v2: Path) -> None:
    facts = limits.detect(fake_v2, probe_sandbox=False)
    assert facts.backend == "cgroup-v2" and facts.v2_root == fake_v2
    lim = limits.prepare(make_policy(tmp_path), make_ctx(tmp_path), facts=facts)
    plan = lim.plan(["app"], {"PATH": "/bin"}, tmp_path)
    (leaf,) = [d for d in (fake_v2 / "estarter").iterdir() if d.is_dir()]
    assert leaf.name.startswith("demo-")
    assert (leaf / "memory.max").read_text() == str(64 * MIB)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "pids.max").read_text() == "8"
    assert (leaf / "cpu.max").read_text() == "20000 100000"
    assert (fake_v2 / "estarter" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert plan.spec["cgroup_procs"] == [str(leaf / "cgroup.procs")]
    # Every cgroup limit was applied; only the sandbox was not probed here.
    assert [m for m in plan.not_applied if "not probed" not in m] == []
    assert lim.report()["backend"] == "cgroup-v2"
    assert lim.report()["written"][str(leaf / "pids.max")] == "8"


def test_v2_memory_events_explain_the_exit_and_kill_writes_cgroup_kill(
        tmp_path: Path, fake_v2: Path) -> None:
    logs = Logs()
    facts = limits.detect(fake_v2, probe_sandbox=False)
    lim = limits.prepare(make_policy(tmp_path), make_ctx(tmp_path, logs), facts=facts)
    lim.plan(["app"], {}, tmp_path)
    (leaf,) = [d for d in (fake_v2 / "estarter").iterdir() if d.is_dir()]
    assert lim.exit_reason(-9) is None
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert lim.exit_reason(-9) is ExitReason.MEMORY_LIMIT
    lim.kill()
    assert (leaf / "cgroup.kill").read_text() == "1"
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    assert lim.cgroups is not None and lim.cgroups.cpu_usage_ns() == 1_500_000
    t0 = time.monotonic()
    lim.cleanup()  # a fake folder with files cannot be rmdir'ed: reported, not hung on
    lim.cleanup()
    assert time.monotonic() - t0 < 30  # reported, not hung on
    assert any("not removed" in m for _, m in logs.lines)


def test_v2_without_delegated_controller_reports_it(tmp_path: Path, fake_v2: Path) -> None:
    (fake_v2 / "cgroup.controllers").write_text("memory io\n")
    facts = limits.detect(fake_v2, probe_sandbox=False)
    lim = limits.prepare(make_policy(tmp_path), make_ctx(tmp_path), facts=facts)
    plan = lim.plan(["app"], {}, tmp_path)
    # Root runs tests: no pids cgroup and RLIMIT_NPROC is useless for root.
    if os.geteuid() == 0:
        assert any(line.startswith("maxProcesses") for line in plan.not_applied)
    assert any(line.startswith("memoryLimitMb: ") for line in plan.applied)


def test_hybrid_unified_with_only_hugetlb_is_not_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "unified").mkdir(parents=True)
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    assert limits.detect(root, probe_sandbox=False).v2_root is None


def test_the_nodes_hierarchy_is_read_once_per_period_a_given_root_each_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every launch asks (prepare, premade): the node's /sys/fs/cgroup is read at most
    once per CGROUP_FACTS_SECONDS; another root (tests, a fake tree) is read each time."""
    import importlib

    detect = importlib.import_module("estarter.hosting.limits.detect")
    reads: list[Path] = []
    monkeypatch.setattr(detect, "find_v2",
                        lambda root: (reads.append(root), (None, frozenset()))[1])
    monkeypatch.setattr(detect, "_cgroup_facts", {})
    clock = [1000.0]
    monkeypatch.setattr(detect, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    for _ in range(3):
        detect.detect(probe_sandbox=False)
        detect.detect(tmp_path, probe_sandbox=False)
    assert reads == [detect.CGROUP_ROOT] + [tmp_path] * 3
    clock[0] += detect.CGROUP_FACTS_SECONDS
    detect.detect(probe_sandbox=False)
    assert reads[-1] == detect.CGROUP_ROOT and len(reads) == 5


@pytest.fixture
def fake_v1(tmp_path: Path) -> Path:
    root = tmp_path / "cgv1"
    for ctrl, marker in (("memory", "memory.limit_in_bytes"), ("pids", "cgroup.procs"),
                         ("cpu", "cpu.cfs_period_us"), ("cpuacct", "cpuacct.usage")):
        (root / ctrl).mkdir(parents=True)
        (root / ctrl / marker).write_text("0\n")
    return root


def test_v1_limits_counters_and_report(tmp_path: Path, fake_v1: Path) -> None:
    facts = limits.detect(fake_v1, probe_sandbox=False)
    assert facts.backend == "cgroup-v1" and set(facts.v1_mounts) == {
        "memory", "pids", "cpu", "cpuacct"}
    lim = limits.prepare(make_policy(tmp_path, cpu_quota_percent=150), make_ctx(tmp_path),
                         facts=facts)
    plan = lim.plan(["app"], {}, tmp_path)
    # The app's leaf is the one folder: the estarter group also holds its cpu.shares.
    leaf = {c: next(d for d in (fake_v1 / c / "estarter").iterdir() if d.is_dir())
            for c in facts.v1_mounts}
    assert (leaf["memory"] / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert (leaf["pids"] / "pids.max").read_text() == "8"
    assert (leaf["cpu"] / "cpu.cfs_quota_us").read_text() == "150000"  # 1.5 cores
    assert len(plan.spec["cgroup_procs"]) == 4
    # v1: the launcher joins through each leaf's tasks file (its one thread, which
    # skips the kernel's threadgroup lock); the orphan guard reads cgroup.procs.
    assert sorted(plan.spec["cgroup_procs"]) == sorted(str(d / "tasks") for d in leaf.values())
    assert sorted(plan.spec["guard"]["procs"]) == sorted(
        str(d / "cgroup.procs") for d in leaf.values())
    (leaf["memory"] / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert lim.exit_reason(137) is None
    (leaf["memory"] / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert lim.exit_reason(137) is ExitReason.MEMORY_LIMIT
    (leaf["cpuacct"] / "cpuacct.usage").write_text("123456789\n")
    assert lim.cgroups is not None and lim.cgroups.cpu_usage_ns() == 123456789
    assert len(lim.report()["cgroups"]) == 4


def test_sweep_removes_only_old_empty_cgroups(tmp_path: Path) -> None:
    parent = tmp_path / "estarter"
    old, young, busy = parent / "a-1-x", parent / "b-1-x", parent / "c-1-x"
    for d in (old, young, busy):
        d.mkdir(parents=True)
    (busy / "cgroup.procs").write_text("4242\n")
    past = time.time() - 2 * cgroupfs.STALE_SECONDS
    os.utime(old, (past, past))
    os.utime(busy / "cgroup.procs", (past, past))
    os.utime(busy, (past, past))
    assert cgroupfs.sweep_stale([parent]) == [old]
    assert young.exists() and busy.exists()


def test_keyed_parses_flat_files(tmp_path: Path) -> None:
    f = tmp_path / "memory.events"
    f.write_text("low 0\noom_kill 3\nbogus line here\n")
    assert cgroupfs.keyed(f) == {"low": 0, "oom_kill": 3}
    assert cgroupfs.keyed(tmp_path / "missing") == {}


def test_a_busy_cgroup_is_removed_in_the_background(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A cgroup stays busy while its exiting tasks are charged (long on a loaded
    host): it is retried until it goes, not left for a launch a minute later."""
    import errno

    busy = tmp_path / "busy-cgroup"
    busy.mkdir()
    tries = {"n": 0}
    real_rmdir = os.rmdir

    def rmdir(path: Any) -> None:
        if Path(path) == busy and tries["n"] < 3:
            tries["n"] += 1
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_rmdir(path)

    monkeypatch.setattr(cgroupfs.os, "rmdir", rmdir)
    assert cgroupfs.remove([busy], timeout=0) == [busy]
    left: list[list[Path]] = []
    cgroupfs.remove_later([busy], timeout=30, on_done=left.append).join(30)
    assert left == [[]] and not busy.exists()


def test_own_cgroup_reads_this_process_line_of_its_hierarchy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = "12:pids:/user.slice/a\n4:cpu,cpuacct:/b\n0::/c\n"
    real_read = cgroupfs.read
    monkeypatch.setattr(cgroupfs, "read", lambda p: listing if str(p) == "/proc/self/cgroup"
                        else real_read(p))
    assert cgroupfs.own_cgroup(tmp_path, "pids") == tmp_path / "user.slice/a"
    assert cgroupfs.own_cgroup(tmp_path, "cpuacct") == tmp_path / "b"
    assert cgroupfs.own_cgroup(tmp_path) == tmp_path / "c"  # v2: the unnamed line
    assert cgroupfs.own_cgroup(tmp_path, "memory") is None


def _prime_threads() -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name == "estarter-prime-join"]


def test_prime_join_moves_a_short_thread_into_its_own_cgroup(tmp_path: Path) -> None:
    import threading

    tasks = tmp_path / "tasks"
    tasks.write_text("")
    cgroupfs.prime_join(tasks, tid=True)
    for t in _prime_threads():
        t.join(timeout=30)
    written = int(tasks.read_text())
    assert written != threading.get_native_id()  # the priming thread's id, not ours
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    cgroupfs.prime_join(procs, tid=False)
    for t in _prime_threads():
        t.join(timeout=30)
    assert procs.read_text() == str(os.getpid())


def test_prime_join_creates_nothing_where_no_cgroup_file_is(tmp_path: Path) -> None:
    cgroupfs.prime_join(tmp_path / "tasks", tid=True)  # not a cgroup: nothing to write
    cgroupfs.prime_join(None, tid=True)
    for t in _prime_threads():
        t.join(timeout=30)
    assert list(tmp_path.iterdir()) == []


def test_sweep_later_sweeps_on_a_thread_once_per_period(tmp_path: Path) -> None:
    import threading

    parent = tmp_path / "estarter"
    old = parent / "a-1-x"
    old.mkdir(parents=True)
    past = time.time() - 2 * cgroupfs.STALE_SECONDS
    os.utime(old, (past, past))
    cgroupfs.sweep_stale_later([parent])
    for t in [t for t in threading.enumerate() if t.name == "estarter-sweep-cgroups"]:
        t.join(timeout=30)
    assert not old.exists()
    old.mkdir()
    os.utime(old, (past, past))
    cgroupfs.sweep_stale_later([parent])  # swept a moment ago: not again yet
    assert not [t for t in threading.enumerate() if t.name == "estarter-sweep-cgroups"]
    assert old.exists()


def test_sweep_soon_is_the_sweep_a_first_launch_would_start(
        tmp_path: Path, fake_v1: Path) -> None:
    """A supervisor waiting in the pool sweeps now: stale leftovers go, and its first
    launch (the same parents) starts no sweep of its own."""
    import threading

    past = time.time() - 2 * cgroupfs.STALE_SECONDS
    for ctrl in ("memory", "pids", "cpu", "cpuacct"):
        old = fake_v1 / ctrl / "estarter" / "gone-1-x"
        old.mkdir(parents=True)
        os.utime(old, (past, past))
    limits.sweep_soon(fake_v1)
    for t in [t for t in threading.enumerate() if t.name == "estarter-sweep-cgroups"]:
        t.join(timeout=30)
    assert not list(fake_v1.glob("*/estarter/gone-1-x"))
    swept = dict(cgroupfs._swept)
    policy = make_policy(tmp_path, sandboxed=True)
    lim = limits.prepare(policy, make_ctx(tmp_path), cgroup_root=fake_v1)
    assert cgroupfs._swept == swept  # its parents were swept already: no new sweep
    lim.cleanup()


def _leaves(root: Path, ctrl: str = "memory") -> list[Path]:
    return [d for d in (root / ctrl / "estarter").iterdir() if d.is_dir()]


def test_premade_cgroups_are_the_ones_the_launch_plans_with(tmp_path: Path,
                                                              fake_v1: Path) -> None:
    from estarter.hosting.limits import premade

    facts = limits.detect(fake_v1, probe_sandbox=False)
    assert premade.premake(facts, "demo")
    made = _leaves(fake_v1)
    assert len(made) == 1 and made[0].name.startswith(f"demo-{os.getpid()}-")
    lim = limits.prepare(make_policy(tmp_path), make_ctx(tmp_path), facts=facts)
    plan = lim.plan(["app"], {}, tmp_path)
    assert _leaves(fake_v1) == made  # planned in them: none made at the launch
    assert str(made[0] / "tasks") in plan.spec["cgroup_procs"]
    assert (made[0] / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert premade.take(facts, "cgroup-v1", "demo") is None  # the launch took them
    lim.cleanup()  # (a fake cgroupfs keeps the limit files: its folders stay)


def test_premade_cgroups_nobody_takes_are_removed(tmp_path: Path, fake_v1: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from estarter.hosting.limits import premade

    monkeypatch.setattr(premade, "PREMADE_SECONDS", 0.05)
    facts = limits.detect(fake_v1, probe_sandbox=False)
    assert premade.premake(facts, "demo")
    deadline = time.monotonic() + 30
    while _leaves(fake_v1) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _leaves(fake_v1) == []
    assert premade.take(facts, "cgroup-v1", "demo") is None
    assert not premade.premake(limits.detect(tmp_path / "none", probe_sandbox=False), "demo")


def test_premade_cgroups_of_a_failed_launch_go_at_once(tmp_path: Path, fake_v1: Path) -> None:
    from estarter.hosting.limits import premade

    facts = limits.detect(fake_v1, probe_sandbox=False)
    assert limits.expect_launch("demo", cgroup_root=fake_v1)
    assert len(_leaves(fake_v1)) == 1
    limits.forget_launch("demo", cgroup_root=fake_v1)
    assert _leaves(fake_v1) == [] and premade.take(facts, "cgroup-v1", "demo") is None
    limits.forget_launch("demo", cgroup_root=fake_v1)  # nothing left: a no-op
