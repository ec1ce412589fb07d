"""The bubblewrap sandbox: an argv wrapper that gives the app only what it was granted.

The launcher (cgroup join, rlimits) runs outside and then execs ``bwrap``, so the
whole sandbox, bwrap's own init included, is inside the app's cgroups. Inside:
new user (uid/gid 65534, no capabilities), PID, mount, IPC, UTS, cgroup and network
namespaces (``networkAllowed`` adds slirp4netns, see network.py); a new session;
death with the parent; only system folders read-only, the app folder read-only at
its own path, and the VFS zones at their virtual paths, by permission.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ...manifest import RuntimeKind
from ...policy import SandboxPolicy
from ..base import HostContext

SANDBOX_UID = 65534
ZONES = ("appdata", "cache", "temp", "shared")
# Top-level system folders: bound read-only, or recreated as the same symlink
# (merged-/usr systems have /bin -> usr/bin).
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The few /etc entries programs need to start (dynamic loader, TLS roots, time
# zone, name service switch). Never the whole /etc: no shadow, no keys, no configs.
ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl", "ca-certificates",
    "localtime", "nsswitch.conf", "host.conf", "mime.types",
)
ETC_NET_FILES = ("hosts", "resolv.conf", "gai.conf", "protocols", "services")


def python_paths() -> list[Path]:
    """What ``sys.executable -E -s`` needs: its venv, its base install, the ``sdk`` package."""
    paths: list[Path] = []
    for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        paths.append(Path(p).resolve())
    spec = importlib.util.find_spec("sdk")
    if spec is not None and spec.submodule_search_locations:
        # An editable install points into the repo: bind the package folder only.
        paths.extend(Path(p).resolve() for p in spec.submodule_search_locations)
    return _outermost([p for p in paths if not _under(p, Path("/usr")) and p.exists()])


def zone_mounts(policy: SandboxPolicy, ctx: HostContext) -> list[tuple[str, Path, bool]]:
    """(virtual path, host folder, writable) for each zone the grants allow.

    Always read-only, with fs.read or fs.write: ``diskQuotaMb`` is the total an app
    holds, and only the ``fs.*`` API can keep a total (a writable bind mount is held
    per file at best, by RLIMIT_FSIZE; a per-app filesystem or project quota is not
    available everywhere this runs). Writes go through ``fs.write``. DESIGN, "Budgets".
    """
    if not (policy.allows("fs.write") or policy.allows("fs.read")):
        return []
    writable = False
    hosts = {"appdata": ctx.appdata, **ctx.zones}
    out = []
    for name in ZONES:
        host = hosts.get(name)
        if host is None:
            continue
        host.mkdir(parents=True, exist_ok=True)
        out.append((f"/{name}", host, writable))
    return out


def bwrap_argv(bwrap: str, policy: SandboxPolicy, ctx: HostContext) -> list[str]:
    """The wrapper argv, ending with ``--`` (the app argv follows)."""
    # No --share-net here: an app with network gets a namespace of its own from the
    # launcher (network.py), which app.py then has bwrap share.
    argv = [bwrap, "--unshare-all"]
    argv += ["--die-with-parent", "--new-session", "--uid", str(SANDBOX_UID),
             "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
    for name in SYSTEM_DIRS:
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    etc = ETC_FILES + (ETC_NET_FILES if policy.network_allowed else ())
    for name in etc:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if policy.runtime is RuntimeKind.PYTHON:
        for p in python_paths():
            argv += ["--ro-bind", str(p), str(p)]
    argv += ["--ro-bind", str(policy.app_dir), str(policy.app_dir)]
    mounts = zone_mounts(policy, ctx)
    for virtual, host, writable in mounts:
        argv += ["--bind" if writable else "--ro-bind", str(host), virtual]
    system = ctx.zones.get("system")
    if mounts and system is not None and system.is_dir():
        argv += ["--ro-bind", str(system), "/system"]  # read-only for everyone
    argv += ["--chdir", "/appdata" if any(v == "/appdata" for v, _, _ in mounts) else "/"]
    return [*argv, "--"]


def _under(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def _outermost(paths: list[Path]) -> list[Path]:
    """Drop paths inside another listed path (one bind covers them), keep order."""
    out: list[Path] = []
    for p in paths:
        if p in out or any(_under(p, q) for q in paths if q != p):
            continue
        out.append(p)
    return out
