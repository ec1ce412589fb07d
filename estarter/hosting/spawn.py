"""The command that starts an app's process: launcher flags + wrapper + app argv.

The launcher is the C one (``native/launcher.c``, about 1 ms to start) when it is
built, else the Python reference (``launcher.py``, an interpreter start plus
ctypes: about 17 ms here). Both take the same flags, made here from the spec that
the limits layer plans.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import launcher

NATIVE_DIR = Path(__file__).resolve().parent / "native"
SOURCE = NATIVE_DIR / "launcher.c"
PY_LAUNCHER = str(Path(launcher.__file__).resolve())


def spec_flags(spec: dict[str, Any]) -> list[str]:
    """The launcher flags for a spec (see launcher.py for the keys)."""
    flags: list[str] = []
    if spec.get("setsid", True):
        flags.append("--setsid")
    flags += ["--pdeathsig", str(int(spec.get("pdeathsig", 9)))]
    if spec.get("parent_pid"):
        flags += ["--parent", str(int(spec["parent_pid"]))]
    guard = spec.get("guard")
    if guard:
        flags.append("--guard")
        for path in guard.get("procs", []):
            flags += ["--guard-proc", str(path)]
        if guard.get("token"):
            flags += ["--guard-token", str(guard["token"])]
    for path in spec.get("cgroup_procs", []):
        flags += ["--cgroup", str(path)]
    for name, (soft, hard) in spec.get("rlimits", {}).items():
        flags += ["--rlimit", f"{name}={int(soft)}:{int(hard)}"]
    if spec.get("unshare_net"):
        flags.append("--unshare-net")
    for key in ("info_fd", "block_fd"):
        if spec.get(key) is not None:
            flags += [f"--{key.replace('_', '-')}", str(int(spec[key]))]
    if spec.get("no_new_privs"):
        flags.append("--no-new-privs")
    if spec.get("user"):
        uid, gid = spec["user"]
        flags += ["--user", f"{int(uid)}:{int(gid)}"]
    if spec.get("seccomp_fd") is not None:
        flags += ["--seccomp", str(int(spec["seccomp_fd"]))]
    return flags


def launcher_command(spec: dict[str, Any], argv: list[str]) -> list[str]:
    """The full argv of the child: launcher, its flags, ``--``, then ``argv``."""
    native = native_launcher()
    head = [native] if native else [sys.executable, "-I", "-S", PY_LAUNCHER]
    return [*head, *spec_flags(spec), "--", *argv]


@functools.cache
def native_launcher() -> str | None:
    """The built C launcher, building it once if a C compiler is at hand; else None.

    ``ESTARTER_LAUNCHER=python`` forces the Python launcher (tests of both)."""
    if os.environ.get("ESTARTER_LAUNCHER") == "python":
        return None
    try:
        digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    except OSError:
        return None
    name = f"estarter-launch-{digest}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "estarter"
    for folder in (NATIVE_DIR, cache):
        if os.access(folder / name, os.X_OK):
            return str(folder / name)
    for folder in (NATIVE_DIR, cache):
        built = build(folder / name)
        if built is not None:
            return str(built)
    return None


def build(target: Path) -> Path | None:
    """Compile the launcher to ``target`` (atomically); None without a compiler."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") \
        or shutil.which("clang")
    if cc is None:
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", dir=target.parent)
        os.close(fd)
    except OSError:
        return None
    try:
        subprocess.run([cc, "-O2", "-Wall", "-o", tmp, str(SOURCE)], check=True,
                       capture_output=True, timeout=120)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        return target
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":  # ``python -m estarter.hosting.spawn``: build it now
    path = native_launcher()
    print(path or "no C compiler: the Python launcher will be used")
