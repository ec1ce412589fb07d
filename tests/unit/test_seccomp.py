"""The seccomp filter builder, how a launch plan carries the program, the launcher
flag, and ``maxOpenFiles`` from manifest to policy. No filter is installed here (it
would stay on the test process); tests/host/test_seccomp.py runs it in apps."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import replace
from pathlib import Path

import pytest

from estarter.errors import SandboxUnavailable
from estarter.functions import function_policy
from estarter.hosting import launcher, limits, spawn
from estarter.hosting.limits import seccomp
from estarter.hosting.limits.detect import HostFacts
from estarter.manifest import parse_manifest
from estarter.policy import SandboxPolicy

from .test_limits_cgroups import make_ctx, make_policy

FILTER = seccomp.build()
needs_filter = pytest.mark.skipif(not FILTER.ok, reason=f"no libseccomp here: {FILTER.error}")

# What the filter must refuse whatever the arguments (issue 10, "Hardening").
MUST_DENY = {
    "mount", "umount2", "pivot_root", "chroot", "swapon", "swapoff", "reboot", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "ptrace",
    "process_vm_readv", "process_vm_writev", "open_by_handle_at", "name_to_handle_at",
    "setns", "fanotify_init", "lookup_dcookie", "quotactl", "acct", "settimeofday",
    "clock_settime", "adjtimex", "iopl", "ioperm", "vhangup",
    # The new mount API would be a way around mount.
    "fsopen", "fsmount", "move_mount", "open_tree",
}

WRAPPED = HostFacts(cgroup_root=Path("/nonexistent"), v2_root=None, v2_controllers=frozenset(),
                    bwrap="/usr/bin/bwrap", seccomp=FILTER)
BARE = replace(WRAPPED, bwrap=None, bwrap_error="bwrap hidden by the test")
UNAVAILABLE = seccomp.SeccompFilter(error="libseccomp not loadable (test)")


@needs_filter
def test_filter_denies_the_list_and_argument_patterns() -> None:
    assert set(FILTER.denied) >= MUST_DENY
    labels = " ".join(FILTER.conditional)
    for pattern in ("TIOCSTI", "TIOCLINUX", "unshare(CLONE_NEW*)", "clone(CLONE_NEW*)",
                    "clone3", "ADDR_NO_RANDOMIZE"):
        assert pattern in labels
    assert FILTER.unknown == ()  # this libseccomp knows every name
    assert len(FILTER.program) % 8 == 0 and 0 < len(FILTER.program) // 8 <= 4096
    assert "mount" in FILTER.summary() and FILTER.to_dict()["instructions"] > 0


@needs_filter
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 compat ABIs")
def test_compat_abis_get_the_same_rules() -> None:
    # Else a 64-bit app would make i386 (int 0x80) or x32 calls the rules never see.
    assert FILTER.arches == ("x86_64", "x86", "x32")


def test_without_libseccomp_the_filter_says_why() -> None:
    flt = seccomp.build("libseccomp-missing.so.9")
    assert not flt.ok and flt.program == b""
    assert "libseccomp not loadable" in flt.error and flt.summary() == flt.error


@needs_filter
def test_compiled_once_per_process() -> None:
    assert seccomp.compiled() is seccomp.compiled()
    assert seccomp.compiled().program == FILTER.program  # deterministic


def test_program_pipe_holds_the_program_then_ends() -> None:
    fd = seccomp.program_pipe(b"\x01" * 8 * 300)
    try:
        assert os.read(fd, 1 << 16) == b"\x01" * 8 * 300
        assert os.read(fd, 1) == b""  # the write end is closed: the reader sees the end
        assert not os.get_inheritable(fd)  # only a child given it by pass_fds has it
    finally:
        os.close(fd)


def closed(fd: int, inode: int) -> bool:
    """``fd`` no longer names that pipe (closed, or its number reused since)."""
    try:
        return os.fstat(fd).st_ino != inode
    except OSError:
        return True


@needs_filter
def test_wrapped_launch_gives_the_program_to_bwrap(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, sandboxed=True, network_allowed=False, cpu_quota_percent=0)
    lim = limits.prepare(policy, make_ctx(tmp_path), facts=WRAPPED, backend="rlimit")
    plan = lim.plan(["app"], {}, tmp_path)
    try:
        (fd,) = plan.pass_fds
        inode = os.fstat(fd).st_ino
        at = plan.wrapper.index("--seccomp")
        assert plan.wrapper[at + 1] == str(fd) and plan.wrapper[-1] == "--"
        assert "seccomp_fd" not in plan.spec  # bwrap installs it, not the launcher
        assert os.read(fd, 1 << 16) == FILTER.program
        assert lim.report()["seccomp"]["by"] == "bwrap"
        assert any(line.startswith("seccomp (bwrap)") for line in plan.applied)
        lim.started(os.getpid())  # spawned: the child holds its own copy
        assert closed(fd, inode)
    finally:
        lim.cleanup()


@needs_filter
def test_bare_launch_gives_the_program_to_the_launcher(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, sandboxed=True, network_allowed=False, cpu_quota_percent=0)
    lim = limits.prepare(policy, make_ctx(tmp_path), facts=BARE, backend="rlimit")
    plan = lim.plan(["app"], {}, tmp_path)
    fd = plan.spec["seccomp_fd"]
    inode = os.fstat(fd).st_ino
    assert plan.pass_fds == (fd,) and plan.wrapper == []
    flags = spawn.spec_flags(plan.spec)
    assert flags[flags.index("--seccomp") + 1] == str(fd)
    assert lim.report()["seccomp"]["by"] == "launcher"
    lim.cleanup()  # never spawned: the plan's pipe is closed with it
    assert closed(fd, inode)
    lim.cleanup()  # idempotent


def test_strict_refuses_to_launch_without_the_filter(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, sandboxed=True, network_allowed=False, cpu_quota_percent=0,
                         strict=True)
    facts = replace(WRAPPED, seccomp=UNAVAILABLE)
    lim = limits.prepare(policy, make_ctx(tmp_path), facts=facts, backend="rlimit",
                         run_as=(1000, 1000))
    with pytest.raises(SandboxUnavailable, match="seccomp filter"):
        lim.plan(["app"], {}, tmp_path)


def test_not_strict_reports_the_missing_filter(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, sandboxed=True, network_allowed=False)
    lim = limits.prepare(policy, make_ctx(tmp_path), facts=replace(BARE, seccomp=UNAVAILABLE))
    plan = lim.plan(["app"], {}, tmp_path)
    assert "seccomp filter (libseccomp not loadable (test))" in plan.not_applied
    assert "seccomp_fd" not in plan.spec and plan.pass_fds == ()
    assert lim.report()["seccomp"] is None


def test_doctor_lists_the_filter() -> None:
    lines = {line["name"]: line for line in limits.host_capabilities()}
    assert lines["seccomp"]["ok"] is seccomp.compiled().ok
    if lines["seccomp"]["ok"]:
        assert "mount" in lines["seccomp"]["detail"] and "TIOCSTI" in lines["seccomp"]["detail"]
    assert "rlimit.nofile" in lines


def test_seccomp_flag_round_trips_through_the_python_parser() -> None:
    spec, argv = launcher.parse(["launcher", *spawn.spec_flags({"seccomp_fd": 7}), "--", "a"])
    assert spec["seccomp_fd"] == 7 and argv == ["a"]


def test_max_open_files_from_manifest_to_policy(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    raw = {"id": "demo", "entry": "app.py", "runtime": "python"}
    m = parse_manifest(json.dumps({**raw, "maxOpenFiles": 4096}))
    assert SandboxPolicy.from_manifest(m, tmp_path).max_open_files == 4096
    default = SandboxPolicy.from_manifest(parse_manifest(json.dumps(raw)), tmp_path)
    assert default.max_open_files == 1024
    assert function_policy({"maxOpenFiles": 64}, tmp_path).max_open_files == 64
    assert function_policy(None, tmp_path).max_open_files == 1024
