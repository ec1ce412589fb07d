"""The seccomp filter of native apps: a deny-list, compiled once per process.

In the spirit of systemd's ``SystemCallFilter=@system-service`` and Flatpak: every
call is allowed but those an app has no business making (mounts, modules, reboot,
kernel attack surface, debugging other processes, new namespaces, setting the
clock, faking terminal input). They fail with EPERM, not a kill, so a program that
probes (``unshare`` to test for namespaces, ``io_uring_setup``) falls back instead
of dying. ``clone3`` answers ENOSYS: its flags sit in memory a filter cannot read,
and libc then falls back to ``clone``, whose namespace flags are checked.

Built with libseccomp through ctypes (``libseccomp.so.2`` is on every systemd host;
no headers or compiler needed) and exported as the raw program the kernel takes
(``struct sock_filter[]``). bwrap installs it (``--seccomp FD``) after its own
mounts, right before it execs the app; without bwrap the launcher installs it as
its last step before exec.

What an attacker would try, and why it fails:
- The native CPU's compat ABIs get the same rules: on x86-64, i386 (``int 0x80``)
  and x32 (numbers with bit 30 set), else ``mount`` would be i386 call 21. Any
  other ABI is killed (libseccomp's bad-arch action).
- ``ioctl``'s request is an ``unsigned int``: the kernel ignores the register's
  upper half, so the match does too (``TIOCSTI | 1 << 32`` is still TIOCSTI).
- ``mount``'s new API (``fsopen``, ``fsmount``, ``move_mount``, ``open_tree``...)
  is denied with it; ``io_uring`` too, since its operations bypass seccomp.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from dataclasses import dataclass
from typing import Any

LIBRARY = "libseccomp.so.2"

# Denied whatever the arguments, by group (the groups only name them in reports).
DENIED: dict[str, tuple[str, ...]] = {
    "mount": ("mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig",
              "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr"),
    "swap": ("swapon", "swapoff"),
    "reboot": ("reboot", "kexec_load", "kexec_file_load"),
    "module": ("init_module", "finit_module", "delete_module"),
    "kernel": ("bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
               "io_uring_register", "lookup_dcookie", "fanotify_init", "syslog"),
    "keyring": ("keyctl", "add_key", "request_key"),
    "debug": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"),
    "handles": ("open_by_handle_at", "name_to_handle_at"),
    "namespace": ("setns",),
    "admin": ("quotactl", "quotactl_fd", "acct", "vhangup", "sethostname", "setdomainname"),
    "clock": ("settimeofday", "stime", "clock_settime", "clock_settime64", "adjtimex",
              "clock_adjtime", "clock_adjtime64"),
    "raw-io": ("iopl", "ioperm"),
}

TIOCSTI = 0x5412  # push a byte into the terminal's input: type commands as its owner
TIOCLINUX = 0x541C  # console tricks, among them pasting the selection as input
CLONE_NEW = {"NEWNS": 0x00020000, "NEWCGROUP": 0x02000000, "NEWUTS": 0x04000000,
             "NEWIPC": 0x08000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000,
             "NEWNET": 0x40000000, "NEWTIME": 0x00000080}
# personality() flags that weaken exploit mitigations or change the memory layout.
PERSONA_FLAGS = {"ADDR_NO_RANDOMIZE": 0x0040000, "FDPIC_FUNCPTRS": 0x0080000,
                 "MMAP_PAGE_ZERO": 0x0100000, "ADDR_COMPAT_LAYOUT": 0x0200000,
                 "READ_IMPLIES_EXEC": 0x0400000, "ADDR_LIMIT_32BIT": 0x0800000,
                 "ADDR_LIMIT_3GB": 0x8000000}
PERSONA_QUERY = 0xFFFFFFFF
COMPAT_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",)}

# libseccomp's ABI (seccomp.h of 2.5; stable since 2.0).
ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
ATTR_ACT_BADARCH = 2
CMP_MASKED_EQ = 7
LOW32 = 0xFFFFFFFF
BIT31 = 1 << 31


def act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


Rule = tuple[str, int, tuple[tuple[int, int, int], ...]]  # (syscall, action, (arg, mask, value)...)


def conditional_rules() -> list[tuple[str, list[Rule]]]:
    """(what a report calls it, its rules). A rule tests each argument at most once
    (libseccomp's limit), so "any of these flags" is one rule per flag."""
    eperm = act_errno(errno.EPERM)
    ioctls: list[Rule] = [("ioctl", eperm, ((1, LOW32, req),)) for req in (TIOCSTI, TIOCLINUX)]
    unshare: list[Rule] = [("unshare", eperm, ((0, f, f),)) for f in CLONE_NEW.values()]
    # For clone the low byte is the exit signal, so CLONE_NEWTIME cannot be asked for.
    clone: list[Rule] = [("clone", eperm, ((0, f, f),))
                         for n, f in CLONE_NEW.items() if n != "NEWTIME"]
    # personality(0xffffffff) only reads, and a rule cannot test "x != 0xffffffff" next to
    # "flag set": so a flag is refused while bit 31 is clear, and any x with bit 31 set
    # is refused unless all its bits are (one rule per bit that may be the clear one).
    persona: list[Rule] = [("personality", eperm, ((0, f | BIT31, f),))
                           for f in PERSONA_FLAGS.values()]
    persona += [("personality", eperm, ((0, BIT31 | 1 << j, BIT31),)) for j in range(31)]
    return [
        ("ioctl(TIOCSTI, TIOCLINUX)", ioctls),
        ("unshare(CLONE_NEW*)", unshare),
        ("clone(CLONE_NEW*)", clone),
        ("clone3 (ENOSYS: libc falls back to clone)", [("clone3", act_errno(errno.ENOSYS), ())]),
        ("personality(" + "|".join(PERSONA_FLAGS) + ")", persona),
    ]


@dataclass(frozen=True)
class SeccompFilter:
    """A compiled filter, or why there is none (``program`` empty, ``error`` says)."""

    program: bytes = b""  # struct sock_filter[], as the kernel and bwrap take it
    denied: tuple[str, ...] = ()  # fail with EPERM whatever the arguments
    conditional: tuple[str, ...] = ()  # fail for some arguments only
    arches: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()  # names this libseccomp does not know: not filtered
    error: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.program)

    def summary(self) -> str:
        if not self.ok:
            return self.error
        return (f"{len(self.denied)} system calls and {len(self.conditional)} argument "
                f"patterns fail with EPERM ({', '.join(self.arches)}): "
                f"{', '.join([*self.denied, *self.conditional])}")

    def to_dict(self) -> dict[str, Any]:
        return {"denied": list(self.denied), "conditional": list(self.conditional),
                "arches": list(self.arches), "unknown": list(self.unknown),
                "instructions": len(self.program) // 8}


def _library(name: str) -> Any:
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def build(library: str = LIBRARY, machine: str | None = None) -> SeccompFilter:
    """Compile the filter. Never raises: a missing or failing libseccomp is an error value."""
    try:
        lib = _library(library)
    except (OSError, AttributeError) as exc:
        return SeccompFilter(error=f"libseccomp not loadable ({exc})")
    ctx = lib.seccomp_init(ACT_ALLOW)
    if not ctx:
        return SeccompFilter(error="seccomp_init failed")
    try:
        return _build(lib, ctx, machine or platform.machine())
    except OSError as exc:
        return SeccompFilter(error=f"libseccomp: {exc}")
    finally:
        lib.seccomp_release(ctx)


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


def _build(lib: Any, ctx: int, machine: str) -> SeccompFilter:
    _check(lib.seccomp_attr_set(ctx, ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "bad-arch action")
    arches = [machine]
    for name in COMPAT_ARCHES.get(machine, ()):
        token = lib.seccomp_arch_resolve_name(name.encode())
        if token:  # an arch this libseccomp does not know stays killed as a bad arch
            _check(lib.seccomp_arch_add(ctx, token), f"arch {name}")
            arches.append(name)
    eperm = act_errno(errno.EPERM)
    denied: list[str] = []
    unknown: list[str] = []

    def add(name: str, action: int, cmps: tuple[tuple[int, int, int], ...]) -> bool:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:  # __NR_SCMP_ERROR: older than the call
            if name not in unknown:
                unknown.append(name)
            return False
        arr = (_ArgCmp * max(1, len(cmps)))(
            *[_ArgCmp(arg, CMP_MASKED_EQ, mask, value) for arg, mask, value in cmps])
        _check(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr), f"rule for {name}")
        return True

    for names in DENIED.values():
        denied += [name for name in names if add(name, eperm, ())]
    conditional = []
    for label, rules in conditional_rules():
        if all([add(*rule) for rule in rules]):
            conditional.append(label)
    fd = os.memfd_create("estarter-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "export")
        size = os.lseek(fd, 0, os.SEEK_CUR)
        program = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not program or len(program) % 8:
        return SeccompFilter(error=f"libseccomp exported {len(program)} bytes")
    return SeccompFilter(program, tuple(denied), tuple(conditional), tuple(arches),
                         tuple(unknown))


NO_SECCOMP = SeccompFilter(error="seccomp not probed")


def program_pipe(program: bytes) -> int:
    """The read end of a pipe that holds ``program`` and then ends (the write end is
    closed), for the child to inherit (``pass_fds``) and read whole. A program is at
    most BPF_MAXINSNS x 8 = 32 KiB, so it always fits the pipe's 64 KiB buffer."""
    r, w = os.pipe()
    try:
        view = memoryview(program)
        while view:
            view = view[os.write(w, view):]
    except OSError:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r


@functools.cache
def compiled() -> SeccompFilter:
    """The filter of this host, built on first use (a few ms) and kept for the process."""
    return build()
