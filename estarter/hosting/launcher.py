"""Child-side launcher: applies the launch spec to itself, then execs the app.

Run as ``python -I -S launcher.py SPEC_JSON -- ARGV...`` by the process host.
It imports only the standard library (it starts on every launch, so it must be
fast) and runs in the new child before any app code: the child is in its session,
bound to its parent's life, in its cgroups and under its rlimits when the app's
first instruction runs. ``preexec_fn`` would do the same in the parent's fork,
which is unsafe in threaded parents such as Ray workers.

Spec keys (all optional):
  pdeathsig: int          signal sent to us when the spawning thread dies
  setsid: bool            new session and process group
  cgroup_procs: [path]    files to write our pid into (cgroup.procs), in order
  rlimits: {name: [soft, hard]}   e.g. {"RLIMIT_AS": [n, n]}
  unshare_net: bool       new network namespace (loopback down, no route out)
  no_new_privs: bool
Exit codes: 121 spec error, 122 set-up failed, 127 exec failed (message on stderr).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000


def _fail(code: int, message: str) -> None:
    os.write(2, f"estarter-launcher: {message}\n".encode())
    os._exit(code)


def apply(spec: dict) -> None:  # type: ignore[type-arg]
    libc = ctypes.CDLL(None, use_errno=True)
    if spec.get("setsid", True):
        os.setsid()
    sig = int(spec.get("pdeathsig", 9))
    if sig and libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        _fail(122, f"prctl(PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    # The parent may have died between fork and prctl: then nobody would kill us.
    if sig and os.getppid() != int(spec.get("parent_pid", os.getppid())):
        os._exit(122)
    for path in spec.get("cgroup_procs", []):
        try:
            with open(path, "w") as fh:
                fh.write(str(os.getpid()))
        except OSError as exc:
            _fail(122, f"cannot join cgroup {path}: {exc.strerror}")
    for name, (soft, hard) in spec.get("rlimits", {}).items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError, AttributeError) as exc:
            _fail(122, f"setrlimit {name}: {exc}")
    if spec.get("unshare_net") and libc.unshare(CLONE_NEWNET) != 0:
        _fail(122, f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
    if spec.get("no_new_privs") and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail(122, f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        _fail(121, "usage: launcher.py SPEC_JSON -- ARGV...")
    try:
        spec = json.loads(argv[1])
    except ValueError as exc:
        _fail(121, f"bad spec: {exc}")
    apply(spec)
    target = argv[3:]
    try:
        os.execvp(target[0], target)
    except OSError as exc:
        _fail(127, f"cannot run {target[0]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv)
