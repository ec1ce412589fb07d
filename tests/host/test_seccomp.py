"""The seccomp filter and RLIMIT_NOFILE on real child processes: a python app probes
system calls under each way the filter gets installed (bwrap, the C launcher, the
Python launcher) and reports what each returned. Every wait is bounded; every host
is closed in ``finally``.

Probes are chosen so that, without the filter, they would fail with another errno
or succeed harmlessly (a mount on a folder that does not exist, ``reboot`` with a
wrong magic, ``keyctl`` reading an id): EPERM can only come from the filter, and a
broken filter cannot hurt this host.
"""

from __future__ import annotations

import importlib
import json
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest

from estarter.hosting import spawn

from .test_enforcement import FACTS, Harness

pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="probes use x86-64 numbers"),
    pytest.mark.skipif(not FACTS.seccomp.ok, reason=f"no filter here: {FACTS.seccomp.error}"),
]
# The module, not the function of the same name that the package exports.
detect = importlib.import_module("estarter.hosting.limits.detect")

PROBE = r'''
import ctypes, errno, json, mmap, os, resource, socket, sys, threading
fds_at_start = sorted(int(f) for f in os.listdir("/proc/self/fd"))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NOWHERE = b"/nonexistent-estarter-seccomp-probe"

def sc(nr, *args):
    ctypes.set_errno(0)
    argv = [a if isinstance(a, (bytes, ctypes.Array)) else ctypes.c_long(a) for a in args]
    r = libc.syscall(ctypes.c_long(nr), *argv)
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

buf = ctypes.create_string_buffer(64)
r_fd, w_fd = os.pipe()
out = {
    "mount": sc(165, b"none", NOWHERE, b"tmpfs", 0, 0),
    "umount2": sc(166, NOWHERE, 0),
    "ptrace": sc(101, 3, os.getpid(), 0, 0),
    "process_vm_readv": sc(310, os.getpid(), 0, 0, 0, 0, 0),
    "keyctl": sc(250, 0, -3, 0),
    "bpf": sc(321, 0, 0, 0),
    "perf_event_open": sc(298, 0, 0, -1, -1, 0),
    "setns": sc(308, -1, 0),
    "fsopen": sc(430, b"nonexistentfs", 0),
    "io_uring_setup": sc(425, 1, 0),
    "reboot": sc(169, 0, 0, 0, 0),
    "clock_settime": sc(227, -1000, 0),
    "swapon": sc(167, NOWHERE, 0),
    "clone3": sc(435, 0, 0),
    "tiocsti": sc(16, 0, 0x5412, buf),
    "tiocsti_high_bits": sc(16, 0, (1 << 32) | 0x5412, buf),
    "tioclinux": sc(16, 0, 0x541C, buf),
    "fionread": sc(16, r_fd, 0x541B, buf),
    "personality_query": sc(135, 0xFFFFFFFF),
    "personality_no_aslr": sc(135, 0x0040000),
    "personality_bit31": sc(135, 0x80040000),
    "x32_keyctl": sc(0x40000000 | 250, 0, -3, 0),
}
# Last: without the filter they would move this process into new namespaces, where
# the probes above would fail with EPERM for want of capabilities.
out["unshare_files"] = sc(272, 0x400)
out["unshare_ns"] = sc(272, 0x00020000)
out["unshare_user"] = sc(272, 0x10000000)
# i386 keyctl (288) through int 0x80, in a child: a kernel without IA-32 emulation
# would kill it instead of answering.
code = bytes.fromhex("53" "b820010000" "bb00000000" "b9fdffffff" "31d2" "cd80" "5b" "c3")
pid = os.fork()
if pid == 0:
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    rc = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
    os.write(w_fd, str(rc).encode())
    os._exit(0)
_, status = os.waitpid(pid, 0)
out["i386_keyctl"] = (errno.errorcode.get(-int(os.read(r_fd, 64)), "ok")
                      if os.WIFEXITED(status) else "no ia32")
# Ordinary things keep working.
with open("/proc/self/status") as fh:
    status_lines = fh.read().splitlines()
out["seccomp_mode"] = [l.split()[1] for l in status_lines if l.startswith("Seccomp:")][0]
a, b = socket.socketpair(socket.AF_UNIX)
a.sendall(b"ping")
out["unix_socket"] = b.recv(4).decode()
child = os.fork()
if child == 0:
    os._exit(7)
out["fork_exit"] = os.WEXITSTATUS(os.waitpid(child, 0)[1])
seen = []
t = threading.Thread(target=lambda: seen.append(threading.get_ident()))
t.start()
t.join(5)
out["thread"] = len(seen) == 1
out["nofile"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
held = []
try:
    while len(held) < 100000:
        held.append(os.open("/dev/null", os.O_RDONLY))
    out["emfile"] = "never"
except OSError as exc:
    out["emfile"] = errno.errorcode.get(exc.errno, "?")
out["opened"] = len(held)
for fd in held:
    os.close(fd)
out["fds_at_start"] = fds_at_start
print("sc:" + json.dumps(out), file=sys.stderr, flush=True)
'''

DENIED = ("mount", "umount2", "unshare_user", "unshare_ns", "ptrace", "process_vm_readv",
          "keyctl", "bpf", "perf_event_open", "setns", "fsopen", "io_uring_setup", "reboot",
          "clock_settime", "swapon", "tiocsti", "tiocsti_high_bits", "tioclinux",
          "personality_no_aslr", "personality_bit31", "x32_keyctl")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.parametrize("installer", ["bwrap", "c-launcher", "python-launcher"])
def test_filter_denies_with_eperm_and_ordinary_calls_work(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, installer: str) -> None:
    if installer == "bwrap" and FACTS.bwrap is None:
        pytest.skip(f"no bwrap here: {FACTS.bwrap_error}")
    if installer != "bwrap":  # a host without bwrap: the launcher installs the filter
        monkeypatch.setattr(detect, "probe_bwrap", lambda: (None, "bwrap hidden by the test"))
    if installer == "python-launcher":
        monkeypatch.setattr(spawn, "native_launcher", lambda: None)
    elif installer == "c-launcher" and spawn.native_launcher() is None:
        pytest.skip("no C compiler here")
    app_id = f"sec-{installer}"
    host = harness.start(app_id, PROBE, max_open_files=64)
    got = json.loads(harness.wait_log(app_id, "sc:", 20))
    report = host.info()["limits"]
    assert report["seccomp"]["by"] == ("bwrap" if installer == "bwrap" else "launcher")
    assert {"mount", "ptrace", "keyctl", "bpf"} <= set(report["seccomp"]["denied"])
    assert report["rlimits"]["RLIMIT_NOFILE"] == [64, 64]
    assert {name: got[name] for name in DENIED} == {name: "EPERM" for name in DENIED}
    assert got["clone3"] == "ENOSYS"  # libc falls back to clone
    assert got["i386_keyctl"] in ("EPERM", "no ia32")
    assert got["unshare_files"] == "ok" and got["fionread"] == "ok"
    assert got["personality_query"] == "ok"
    assert got["seccomp_mode"] == "2"
    assert got["unix_socket"] == "ping" and got["fork_exit"] == 7 and got["thread"] is True
    assert got["nofile"] == [64, 64]
    assert got["emfile"] == "EMFILE" and got["opened"] < 64
    # The program's pipe is not left open in the app (bwrap and the launcher close it).
    assert set(got["fds_at_start"]) <= {0, 1, 2, 3}, got["fds_at_start"]


def test_default_open_files_is_1024(harness: Harness) -> None:
    src = ("import resource, sys\nprint('nofile:' + repr(resource.getrlimit("
           "resource.RLIMIT_NOFILE)), file=sys.stderr, flush=True)\n")
    host = harness.start("sec-nofile", src)
    assert harness.wait_log("sec-nofile", "nofile:", 10) == "(1024, 1024)"
    assert "maxOpenFiles: RLIMIT_NOFILE=1024" in host.info()["limits"]["applied"]
