"""The bubblewrap sandbox: an argv wrapper that gives the app only what it was granted.

The launcher (cgroup join, rlimits) runs outside and then execs ``bwrap``, so the
whole sandbox, bwrap's own init included, is inside the app's cgroups. Inside:
new user (uid/gid 65534, no capabilities), PID, mount, IPC, UTS, cgroup and network
namespaces (``networkAllowed`` adds slirp4netns, see network.py); a new session;
death with the parent; only system folders read-only, the app folder read-only at
its own path, and the VFS zones at their virtual paths, by permission.
"""

from __future__ import annotations

import os
from pathlib import Path

from ... import devices
from ...kinds import RuntimeKind
from ...policy import SandboxPolicy
from .. import dotnet_app, python_app
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


def python_mounts(sandboxed: bool) -> list[str]:
    """bwrap arguments for a ``python`` app: the SDK at its mount point; in the
    sandbox also the base interpreter's install, its site-packages masked (the app
    imports the standard library, the SDK and its own folder only)."""
    argv: list[str] = []
    if sandboxed:
        base = python_app.base_prefix()
        if not _under(base, Path("/usr")):
            argv += ["--ro-bind", str(base), str(base)]
        for site in python_app.site_packages():
            argv += ["--tmpfs", str(site)]
    sdk = python_app.sdk_dir()
    if sdk is not None:
        argv += ["--ro-bind", str(sdk), f"{python_app.SDK_MOUNT}/sdk"]
    return argv


def zone_mounts(policy: SandboxPolicy, ctx: HostContext) -> list[tuple[str, Path, bool]]:
    """(virtual path, host folder, writable) for each zone the grants allow.

    Always read-only, with fs.read or fs.write: ``diskQuotaMb`` is the total an app
    holds, and only the ``fs.*`` API can keep a total (a writable bind mount is held
    per file at best, by RLIMIT_FSIZE; a per-app filesystem or project quota is not
    available everywhere this runs). Writes go through ``fs.write``. DESIGN, "Budgets".
    """
    if not (policy.allows("fs.write") or policy.allows("fs.read")) or not ctx.direct_zones:
        return []  # no grant, or this node's folders are not the VFS's (storage.py)
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


def bwrap_argv(bwrap: str, policy: SandboxPolicy, ctx: HostContext,
               app_uid: int = 0) -> list[str]:
    """The wrapper argv, ending with ``--`` (the app argv follows).

    ``sandboxed`` apps see only system folders; an unsandboxed app (``admin``
    granted) sees the host's folders read-only (``host_view``). Both get new PID,
    IPC, UTS, cgroup and mount namespaces, no capabilities, a new session, a
    private /tmp and /dev, and death with the parent."""
    # No --share-net here: an app with network gets a namespace of its own from the
    # launcher (network.py), which app.py then has bwrap share.
    argv = [bwrap, "--unshare-all"]
    argv += ["--die-with-parent", "--new-session"]
    if policy.sandboxed:
        argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    argv += ["--cap-drop", "ALL"]
    if policy.sandboxed:
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
    else:
        argv += host_view(ctx, app_uid)
    argv += devices.sandbox_args(policy.granted)  # granted devices the host has
    if policy.runtime is RuntimeKind.PYTHON:
        argv += python_mounts(policy.sandboxed)
        if policy.python_deps is not None:
            argv += ["--ro-bind", str(policy.python_deps), python_app.DEPS_MOUNT]
    dotnet = dotnet_app.host() if policy.runtime is RuntimeKind.DOTNET else None
    if dotnet is not None and policy.sandboxed:  # the .NET install, read-only
        argv += dotnet_app.mounts(dotnet)
    argv += ["--ro-bind", str(policy.app_dir), str(policy.app_dir)]
    mounts = zone_mounts(policy, ctx)
    for virtual, host, writable in mounts:
        argv += ["--bind" if writable else "--ro-bind", str(host), virtual]
    system = ctx.zones.get("system")
    if mounts and system is not None and system.is_dir():
        argv += ["--ro-bind", str(system), "/system"]  # read-only for everyone
    argv += ["--chdir", "/appdata" if any(v == "/appdata" for v, _, _ in mounts) else "/"]
    # The root is bwrap's own tmpfs, holding only mount points: read-only, so that
    # the writable places are exactly /tmp and the zones.
    argv += ["--remount-ro", "/"]
    return [*argv, "--"]


# Top-level folders an unsandboxed app does not get from the host: fresh ones instead.
HOST_VIEW_FRESH = {"proc": "--proc", "dev": "--dev", "tmp": "--tmpfs", "run": "--tmpfs"}


def secret_paths(ctx: HostContext) -> list[Path]:
    """What even an ``admin`` app must not read: this estarter home (kernel.db, the
    apps' tokens, the operator token, every app's data, our Ray head's auth token)
    and Ray's credentials and sockets (``~/.ray``, ``RAY_AUTH_TOKEN_PATH``, a
    ``RAY_TMPDIR`` outside /tmp). /tmp and /run are fresh anyway."""
    out = [ctx.home, Path.home() / ".ray", Path("/root/.ray")]
    for var in ("RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR", "ESTARTER_HOME"):
        value = os.environ.get(var)
        if value:
            out.append(Path(value))
    return [p.resolve() for p in out if p.is_absolute()]


def host_view(ctx: HostContext, app_uid: int = 0) -> list[str]:
    """bwrap arguments that show the host's folders read-only, secrets masked.

    Root stays a tmpfs (so the zones can appear at their virtual paths); each
    top-level folder of the host is bound read-only; /proc is the new PID
    namespace's, /dev a minimal one (no host terminals), /tmp and /run empty (Ray's
    sessions and sockets, every daemon's socket). Read-only mounts stop writes but
    not ``connect()`` to a socket file, hence the fresh /run and the masks."""
    argv: list[str] = []
    for entry in sorted(os.listdir("/")):
        host = Path("/") / entry
        if entry in HOST_VIEW_FRESH:
            argv += [HOST_VIEW_FRESH[entry], str(host)]
        elif host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    for secret in secret_paths(ctx):
        if not _reachable(secret, app_uid):
            continue  # the app cannot get there anyway (and bwrap, as it, could not mask it)
        if secret.is_dir():
            argv += ["--tmpfs", str(secret)]
        elif secret.exists():
            argv += ["--ro-bind", "/dev/null", str(secret)]
    return argv


def _reachable(path: Path, uid: int) -> bool:
    """Whether ``uid`` can traverse every folder above ``path`` (root always can)."""
    if uid == 0:
        return True
    for parent in path.parents:
        try:
            st = parent.stat()
        except OSError:
            return False
        bit = 0o100 if st.st_uid == uid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def _under(p: Path, root: Path) -> bool:
    return p == root or root in p.parents
