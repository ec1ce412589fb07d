"""rlimits, strict mode, the bwrap argv, exit reasons of the rlimit fallback, the
launcher's own checks and the doctor lines. No cgroups touched."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import SandboxUnavailable
from estarter.hosting import launcher, limits, spawn
from estarter.hosting.base import ExitReason
from estarter.hosting.limits.detect import HostFacts
from estarter.hosting.limits.plan import Outcome
from estarter.hosting.limits.rlimits import killed_by, plan_rlimits
from estarter.hosting.limits.sandbox import bwrap_argv
from estarter.manifest import RuntimeKind
from estarter.policy import MIB

from .test_limits_cgroups import make_ctx, make_policy

NO_CGROUPS = HostFacts(cgroup_root=Path("/nonexistent"), v2_root=None,
                       v2_controllers=frozenset(), is_root=False, cap_sys_admin=False)


def test_rlimits_cover_what_cgroups_did_not(tmp_path: Path) -> None:
    out = Outcome("demo", strict=False)
    rl = plan_rlimits(make_policy(tmp_path, max_runtime_seconds=10), set(), False, out)
    assert rl["RLIMIT_AS"] == [64 * MIB, 64 * MIB]
    assert rl["RLIMIT_NPROC"] == [8, 8]
    assert rl["RLIMIT_CPU"] == [2, 3]  # 20 % of 10 s; SIGKILL one second later
    assert rl["RLIMIT_FSIZE"] == [10 * MIB, 10 * MIB]
    assert out.not_applied == []


def test_rlimits_say_what_they_cannot_do(tmp_path: Path) -> None:
    out = Outcome("demo", strict=False)
    policy = make_policy(tmp_path, runtime=RuntimeKind.WASM)
    rl = plan_rlimits(policy, set(), True, out)
    assert "RLIMIT_AS" not in rl and "RLIMIT_NPROC" not in rl and "RLIMIT_CPU" not in rl
    assert [line.split(" ")[0] for line in out.not_applied] == [
        "memoryLimitMb", "maxProcesses", "cpuQuota"]


def test_cgroup_handled_keys_get_no_rlimit(tmp_path: Path) -> None:
    out = Outcome("demo", strict=False)
    rl = plan_rlimits(make_policy(tmp_path), {"memoryLimitMb", "maxProcesses", "cpuQuota"},
                      True, out)
    assert set(rl) == {"RLIMIT_FSIZE", "RLIMIT_NOFILE"}  # per file, per process: no cgroup


def test_open_files_limit_for_native_apps_only(tmp_path: Path) -> None:
    out = Outcome("demo", strict=False)
    rl = plan_rlimits(make_policy(tmp_path, max_open_files=256), set(), True, out)
    assert rl["RLIMIT_NOFILE"] == [256, 256]  # soft = hard: the app cannot raise it
    assert "maxOpenFiles: RLIMIT_NOFILE=256" in out.applied
    wasm = plan_rlimits(make_policy(tmp_path, runtime=RuntimeKind.WASM), set(), True, out)
    assert "RLIMIT_NOFILE" not in wasm


def test_strict_refuses_naming_the_limit(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, strict=True, sandboxed=True, max_runtime_seconds=10)
    lim = limits.prepare(policy, make_ctx(tmp_path), facts=NO_CGROUPS, backend="rlimit",
                         run_as=(1000, 1000))
    with pytest.raises(SandboxUnavailable, match="sandboxed"):
        lim.plan(["app"], {}, tmp_path)


def test_not_strict_lists_what_was_not_applied(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, sandboxed=True, network_allowed=False)
    lim = limits.prepare(policy, make_ctx(tmp_path), facts=NO_CGROUPS)
    plan = lim.plan(["app"], {"PATH": "/bin"}, tmp_path)
    assert any(line.startswith("sandboxed") for line in plan.not_applied)
    assert any(line.startswith("networkAllowed") for line in plan.not_applied)
    assert plan.env["ESTARTER_LIMITS_TOKEN"] == lim.token
    assert plan.spec["guard"]["token"] == lim.token  # no PID namespace: the guard watches


class FakeSampler:
    def __init__(self, peak_vm: int = 0, max_cpu: float = 0.0) -> None:
        self.peak_vm, self.max_cpu, self.stopped = peak_vm, max_cpu, False

    def stop(self) -> None:
        self.stopped = True

    def snapshot(self) -> dict[str, object]:
        return {}


def rlimit_limits(tmp_path: Path, sampler: FakeSampler) -> limits.AppLimits:
    lim = limits.prepare(make_policy(tmp_path, max_runtime_seconds=10), make_ctx(tmp_path),
                         facts=NO_CGROUPS, run_as=(1000, 1000))
    lim.plan(["app"], {}, tmp_path)
    lim.sampler = sampler  # type: ignore[assignment]  # a fake with the same fields
    return lim


def test_cpu_limit_needs_both_the_signal_and_the_cpu_seconds(tmp_path: Path) -> None:
    xcpu = -int(signal.SIGXCPU)
    assert rlimit_limits(tmp_path, FakeSampler(max_cpu=1.95)).exit_reason(xcpu) \
        is ExitReason.CPU_LIMIT
    # SIGXCPU is the kernel's word even when the sampler saw little (a busy host);
    # SIGKILL without the CPU time behind it is a kill, not the hard limit.
    assert rlimit_limits(tmp_path, FakeSampler(max_cpu=0.1)).exit_reason(xcpu) \
        is ExitReason.CPU_LIMIT
    assert rlimit_limits(tmp_path, FakeSampler(max_cpu=0.1)).exit_reason(
        -int(signal.SIGKILL)) is None
    assert killed_by(128 + int(signal.SIGXCPU), int(signal.SIGXCPU))


def test_memory_limit_from_sampled_peak(tmp_path: Path) -> None:
    assert rlimit_limits(tmp_path, FakeSampler(peak_vm=60 * MIB)).exit_reason(1) \
        is ExitReason.MEMORY_LIMIT
    assert rlimit_limits(tmp_path, FakeSampler(peak_vm=60 * MIB)).exit_reason(0) is None
    assert rlimit_limits(tmp_path, FakeSampler(peak_vm=12 * MIB)).exit_reason(1) is None


def test_bwrap_argv_mounts_zones_by_permission(tmp_path: Path) -> None:
    zones = {z: tmp_path / "vfs" / z for z in ("appdata", "cache", "temp", "shared")}
    ctx = make_ctx(tmp_path)
    ctx = type(ctx)(**{**ctx.__dict__, "appdata": zones["appdata"], "zones": zones})

    def argv(**over: object) -> list[str]:
        return bwrap_argv("/usr/bin/bwrap", make_policy(tmp_path, **{"sandboxed": True, **over}),
                          ctx)

    rw = argv(granted=frozenset({"fs.read", "fs.write"}))
    # Read-only even with fs.write: only fs.write holds the diskQuotaMb total.
    assert ["--ro-bind", str(zones["appdata"]), "/appdata"] == rw[rw.index("/appdata") - 2:
                                                               rw.index("/appdata") + 1]
    assert "--bind" not in rw
    assert rw[rw.index("--chdir") + 1] == "/appdata" and rw[-1] == "--"
    # Never the host's network, with or without networkAllowed (network.py adds slirp).
    assert "--share-net" not in rw and "--cap-drop" in rw and "--die-with-parent" in rw
    assert not any("shadow" in a for a in rw) and "/etc" not in rw
    ro = argv(granted=frozenset({"fs.read"}), network_allowed=False)
    assert ro[ro.index("/shared") - 2] == "--ro-bind" and "--share-net" not in ro
    none = argv(granted=frozenset())
    assert "/appdata" not in none and none[none.index("--chdir") + 1] == "/"
    assert str(Path(sys.base_prefix).resolve()) in rw  # the interpreter comes along


def test_host_capabilities_one_line_each() -> None:
    lines = limits.host_capabilities()
    names = [line["name"] for line in lines]
    assert len(names) == len(set(names)) and "cgroup" in names and "sandbox.bwrap" in names
    assert all(set(line) == {"name", "ok", "detail"} for line in lines)
    assert all(isinstance(line["ok"], bool) and line["detail"] for line in lines)


@pytest.fixture(params=["native", "python"])
def launcher_head(request: pytest.FixtureRequest) -> list[str]:
    """Both launchers take the same flags and must behave the same."""
    if request.param == "python":
        return [sys.executable, "-I", "-S", launcher.__file__]
    native = spawn.native_launcher()
    if native is None:
        pytest.skip("no C compiler here: only the Python launcher runs")
    return [native]


def run_launcher(head: list[str], spec: dict[str, Any] | list[str],
                 *argv: str) -> subprocess.CompletedProcess[bytes]:
    flags = spec if isinstance(spec, list) else spawn.spec_flags(spec)
    return subprocess.run([*head, *flags, "--", *argv], capture_output=True, timeout=10,
                          check=False)


def test_launcher_applies_rlimits_before_exec(launcher_head: list[str]) -> None:
    r = run_launcher(launcher_head,
                     {"pdeathsig": 0, "rlimits": {"RLIMIT_FSIZE": [4096, 4096]}},
                     sys.executable, "-c",
                     "import os, resource, signal; print(resource.getrlimit(resource.RLIMIT_FSIZE),"
                     " signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN,"
                     " os.getsid(0) == os.getpid())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "(4096, 4096) True True"


def test_launcher_exit_codes(launcher_head: list[str]) -> None:
    assert run_launcher(launcher_head, ["--bogus"], "true").returncode == 121
    assert run_launcher(launcher_head, ["--pdeathsig"], "true").returncode == 121
    assert run_launcher(launcher_head, {"pdeathsig": 0}, "/nonexistent/app").returncode == 127
    r = run_launcher(launcher_head,
                     {"pdeathsig": 0, "cgroup_procs": ["/nonexistent/cgroup.procs"]}, "true")
    assert r.returncode == 122 and b"cannot join cgroup" in r.stderr


def test_launcher_joins_a_v1_tasks_file_by_its_thread_and_cgroup_procs_by_pid(
        launcher_head: list[str], tmp_path: Path) -> None:
    # Plain files stand in for the cgroup files: what each launcher writes is the
    # contract. "0" in a v1 tasks file moves the calling thread (the launcher's only
    # one), which Linux does without the threadgroup lock and its RCU wait.
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    tasks, procs = tmp_path / "a" / "tasks", tmp_path / "b" / "cgroup.procs"
    tasks.write_text("")
    procs.write_text("")
    r = run_launcher(launcher_head, {"pdeathsig": 0, "cgroup_procs": [str(tasks), str(procs)]},
                     sys.executable, "-c", "import os; print(os.getpid())")
    assert r.returncode == 0, r.stderr
    assert tasks.read_text() == "0"
    assert procs.read_text() == r.stdout.decode().strip()  # the pid the app ran as


def test_launcher_refuses_to_start_when_its_parent_is_gone(launcher_head: list[str]) -> None:
    # parent_pid names a process that is not our parent: as if the supervisor died
    # between fork and prctl. The launcher must not start the app.
    r = run_launcher(launcher_head, {"pdeathsig": 9, "parent_pid": 1}, "true")
    assert r.returncode == 122


def test_spec_flags_round_trip_through_the_python_parser() -> None:
    spec = {"setsid": True, "pdeathsig": 9, "parent_pid": 42,
            "guard": {"procs": ["/a/cgroup.procs"], "token": "t"},
            "cgroup_procs": ["/a/cgroup.procs", "/b/cgroup.procs"],
            "rlimits": {"RLIMIT_AS": [1, 2], "RLIMIT_CPU": [-1, -1]},
            "unshare_net": True, "no_new_privs": True, "user": [65534, 65534]}
    parsed, argv = launcher.parse(["launcher", *spawn.spec_flags(spec), "--", "app", "x"])
    assert argv == ["app", "x"]
    assert parsed == spec


def test_host_view_of_an_unsandboxed_app_masks_secrets(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """sandboxed:false (admin granted) still runs in bwrap: host folders read-only,
    no capabilities, fresh /tmp /run /dev /proc, the estarter home and Ray's
    credentials masked."""
    token = tmp_path / "ray-token"
    token.write_text("t")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    ctx = make_ctx(tmp_path)
    ctx.home.mkdir(parents=True)
    argv = bwrap_argv("/usr/bin/bwrap", make_policy(tmp_path, sandboxed=False), ctx)
    pairs = list(itertools.pairwise(argv))
    assert ("--ro-bind", "/etc") in pairs and ("--bind", "/etc") not in pairs
    for fresh in ("/tmp", "/run"):
        assert ("--tmpfs", fresh) in pairs
    assert ("--dev", "/dev") in pairs and ("--proc", "/proc") in pairs
    assert ("--tmpfs", str(ctx.home.resolve())) in pairs  # kernel.db, tokens, app data
    assert argv[argv.index(str(token)) - 1] == "/dev/null"  # masked by an empty file
    assert "--cap-drop" in argv and "--uid" not in argv and "--share-net" not in argv
    assert argv[argv.index("--remount-ro") + 1] == "/" and argv[-1] == "--"
