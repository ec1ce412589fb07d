"""Child-side launcher: applies the launch spec to itself, then execs the app.

The reference implementation and the fallback of ``native/launcher.c`` (which is
what runs when a C compiler was at hand; see ``spawn.py``). Run as
``python -I -S launcher.py [FLAGS] -- ARGV...``, flags as ``spawn.spec_flags``
makes them from the spec below. It imports only the standard library and runs in
the new child before any app code: the child is in its session, bound to its
parent's life, in its cgroups and under its rlimits when the app's first
instruction runs. ``preexec_fn`` would do the same in the parent's fork,
which is unsafe in threaded parents such as Ray workers.

Spec keys (all optional):
  pdeathsig: int          signal sent to us when the spawning thread dies
  parent_pid: int         the supervisor; if it is already gone we do not start
  setsid: bool            new session and process group
  guard: {"procs": [path], "token": str}
                          fork a detached watchdog *before* joining the cgroups: when
                          the supervisor dies first, it kills every process listed in
                          those cgroup.procs files (or, without cgroups, every process
                          whose environment carries ESTARTER_LIMITS_TOKEN=token) and
                          removes the cgroups. PDEATHSIG reaches only our own process;
                          a double-forked daemon needs this.
  cgroup_procs: [path]    files to join, in order: our pid into cgroup.procs,
                          "0" (this, our only thread) into a v1 tasks file
  rlimits: {name: [soft, hard]}   e.g. {"RLIMIT_AS": [n, n]}
  unshare_net: bool       new network namespace (loopback down, no route out)
  info_fd, block_fd: int  (as bwrap's) after unshare_net, write {"child-pid": pid,
                          "net-namespace": inode} to info_fd, then wait for one byte
                          on block_fd (EOF: exit 122) while the supervisor sets up
                          the namespace's network; both are closed before the exec
  no_new_privs: bool
  user: [uid, gid]        drop to this user (no supplementary groups)
  seccomp_fd: int         read a seccomp BPF program (struct sock_filter[]) from this
                          fd to its end and install it, last before the exec
Before the exec (always): every signal disposition back to SIG_DFL, but SIGXFSZ when
RLIMIT_FSIZE is set, and an empty signal mask, whatever estarter inherited.
Exit codes: 121 spec error, 122 set-up failed, 127 exec failed (message on stderr).
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_MAXINSNS = 4096
CLONE_NEWNET = 0x40000000
GUARD_KILL_SECONDS = 5.0
GUARD_WATCH_SECONDS = 120.0
GUARD_RMDIR_SECONDS = 60.0


def _fail(code: int, message: str) -> None:
    os.write(2, f"estarter-launcher: {message}\n".encode())
    os._exit(code)


def _token_pids(token: str) -> list[int]:
    needle = f"ESTARTER_LIMITS_TOKEN={token}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle in fh.read() + b"\0":
                    found.append(int(name))
        except OSError:
            continue
    return found


def _cgroup_pids(procs: list[str]) -> list[int]:
    pids: set[int] = set()
    for path in procs:
        try:
            with open(path) as fh:
                pids.update(int(x) for x in fh.read().split())
        except (OSError, ValueError):
            continue
    return sorted(pids)


def _sweep(procs: list[str], token: str) -> None:
    """SIGKILL the app's processes until none is left (bounded), then drop the cgroups."""
    deadline = time.monotonic() + GUARD_KILL_SECONDS
    while time.monotonic() < deadline:
        pids = _cgroup_pids(procs) if procs else _token_pids(token)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    for path in procs:
        # EBUSY lasts while exiting tasks are still charged: long on a loaded host.
        rm_deadline = time.monotonic() + GUARD_RMDIR_SECONDS
        while True:
            try:
                os.rmdir(os.path.dirname(path))
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() >= rm_deadline:
                    break
                time.sleep(0.05)


def _supervisor_dies_first(sup_fd: int, procs: list[str]) -> bool:
    """The app ended first: wait for the supervisor to remove its cgroups (its job)
    or to die (the app's end was its PDEATHSIG; a dying Ray worker can take seconds
    on a loaded host, and then nobody else removes them), at most GUARD_WATCH_SECONDS.
    Without cgroups (token mode) a second's grace. As the C launcher's guard."""
    start = time.monotonic()
    limit = GUARD_WATCH_SECONDS if procs else 1.0
    while time.monotonic() - start < limit:
        ready, _, _ = select.select([sup_fd], [], [], 0.2)
        if ready:
            return True
        if procs and not any(os.path.exists(p) for p in procs):
            return False
    return False


def _guard(spec: dict, supervisor: int) -> None:
    """Fork a detached watchdog of (supervisor, this process). Returns in the launcher."""
    try:
        app_fd = os.pidfd_open(os.getpid())
        sup_fd = os.pidfd_open(supervisor)
    except OSError:
        return  # supervisor already gone (PDEATHSIG/parent check ends us) or no pidfd
    pid = os.fork()
    if pid:
        os.close(app_fd)
        os.close(sup_fd)
        os.waitpid(pid, 0)  # the intermediate exits at once: no zombie under the app
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        # Never hold the app's stdio pipes open: the host reads them until EOF.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = {0, 1, 2, app_fd, sup_fd}
        for fd in range(3, 1024):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        procs = list(spec.get("procs", []))
        ready, _, _ = select.select([app_fd, sup_fd], [], [])
        if sup_fd in ready or _supervisor_dies_first(sup_fd, procs):
            _sweep(procs, str(spec.get("token", "")))
    finally:
        os._exit(0)


def apply(spec: dict) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if spec.get("setsid", True):
        os.setsid()
    sig = int(spec.get("pdeathsig", 9))
    if sig and libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        _fail(122, f"prctl(PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    # The parent may have died between fork and prctl: then nobody would kill us.
    supervisor = int(spec.get("parent_pid", os.getppid()))
    if sig and os.getppid() != supervisor:
        os._exit(122)
    if spec.get("guard"):
        _guard(spec["guard"], supervisor)
    for path in spec.get("cgroup_procs", []):
        try:
            with open(path, "w") as fh:
                # v1 "tasks": "0", this thread (the launcher's only one), which skips
                # the kernel's threadgroup lock and its RCU wait (as the C launcher).
                fh.write("0" if os.path.basename(path) == "tasks" else str(os.getpid()))
        except OSError as exc:
            _fail(122, f"cannot join cgroup {path}: {exc.strerror}")
    for name, (soft, hard) in spec.get("rlimits", {}).items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError, AttributeError) as exc:
            _fail(122, f"setrlimit {name}: {exc}")
    if "RLIMIT_FSIZE" in spec.get("rlimits", {}):
        # A write past the limit then fails with EFBIG instead of killing the app.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if spec.get("unshare_net") and libc.unshare(CLONE_NEWNET) != 0:
        _fail(122, f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
    if spec.get("info_fd") is not None:
        ns = os.stat("/proc/self/ns/net").st_ino
        os.write(spec["info_fd"], b'{"child-pid": %d, "net-namespace": %d}\n' % (os.getpid(), ns))
        os.close(spec["info_fd"])
    if spec.get("block_fd") is not None:
        if os.read(spec["block_fd"], 1) != b"1":
            _fail(122, "the supervisor did not release the launch")
        os.close(spec["block_fd"])
    if spec.get("no_new_privs") and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail(122, f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if spec.get("user"):
        uid, gid = (int(x) for x in spec["user"])
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as exc:
            _fail(122, f"cannot become uid {uid}: {exc.strerror}")
    reset_signals(keep_xfsz="RLIMIT_FSIZE" in spec.get("rlimits", {}))
    if spec.get("seccomp_fd") is not None:
        _install_seccomp(libc, int(spec["seccomp_fd"]))


def reset_signals(keep_xfsz: bool) -> None:
    """What estarter inherited must not reach the app: SIG_IGN for SIGINT
    (``estarter run ... &`` from a script), a blocked mask. exec keeps both, and this
    interpreter ignores SIGPIPE and SIGXFSZ itself. Every disposition back to
    SIG_DFL (SIGXFSZ stays ignored under RLIMIT_FSIZE: a write past it fails with
    EFBIG) and an empty mask."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP) or (keep_xfsz and sig == signal.SIGXFSZ):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            continue  # a signal the C library keeps for itself
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(libc: ctypes.CDLL, fd: int) -> None:
    """Read the program from ``fd`` to its end, close it, install it (needs no_new_privs)."""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fd)
    except OSError as exc:
        _fail(122, f"--seccomp {fd}: {exc.strerror}")
    program = b"".join(chunks)
    if not program or len(program) % 8 or len(program) // 8 > BPF_MAXINSNS:
        _fail(122, f"--seccomp {fd}: not a BPF program ({len(program)} bytes)")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        _fail(122, f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")


def parse(argv: list[str]) -> tuple[dict, list[str]]:  # (no typing import: start-up time)
    """Flags (as spawn.spec_flags writes them) -> (spec, app argv)."""
    spec: dict = {"setsid": False, "rlimits": {}, "cgroup_procs": []}
    guard: dict = {"procs": []}
    i = 1
    while i < len(argv):
        flag = argv[i]
        if flag == "--":
            if guard.pop("on", False):
                spec["guard"] = guard
            return spec, argv[i + 1:]
        if flag in ("--setsid", "--unshare-net", "--no-new-privs", "--guard"):
            key = {"--setsid": "setsid", "--unshare-net": "unshare_net",
                   "--no-new-privs": "no_new_privs", "--guard": "on"}[flag]
            (guard if flag == "--guard" else spec)[key] = True
            i += 1
            continue
        if i + 1 >= len(argv):
            _fail(121, f"{flag} needs a value")
        value = argv[i + 1]
        i += 2
        try:
            if flag == "--pdeathsig":
                spec["pdeathsig"] = int(value)
            elif flag == "--parent":
                spec["parent_pid"] = int(value)
            elif flag == "--guard-proc":
                guard["procs"].append(value)
            elif flag == "--guard-token":
                guard["token"] = value
            elif flag == "--cgroup":
                spec["cgroup_procs"].append(value)
            elif flag == "--rlimit":
                name, limits = value.split("=", 1)
                soft, hard = (int(x) for x in limits.split(":", 1))
                spec["rlimits"][name] = [soft, hard]
            elif flag in ("--info-fd", "--block-fd"):
                spec[flag[2:].replace("-", "_")] = int(value)
            elif flag == "--user":
                spec["user"] = [int(x) for x in value.split(":", 1)]
            elif flag == "--seccomp":
                spec["seccomp_fd"] = int(value)
            else:
                _fail(121, f"unknown flag {flag}")
        except ValueError:
            _fail(121, f"bad value for {flag}: {value}")
    _fail(121, "usage: launcher.py [FLAGS] -- ARGV...")
    raise AssertionError  # unreachable: _fail exits


def main(argv: list[str]) -> None:
    spec, target = parse(argv)
    if not target:
        _fail(121, "nothing to run")
    apply(spec)
    try:
        os.execvp(target[0], target)
    except OSError as exc:
        _fail(127, f"cannot run {target[0]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv)
