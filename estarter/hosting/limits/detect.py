"""What this host can enforce: bwrap, slirp4netns and the seccomp filter found once per
process, the node's cgroup hierarchy at most every ``CGROUP_FACTS_SECONDS``.

``host_capabilities()`` is what ``estarter doctor`` prints, one line per item.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cgroup_v1 import mounted_controllers
from .cgroup_v2 import WANTED as V2_WANTED
from .cgroup_v2 import available_controllers
from .network import NO_SLIRP, SlirpFacts, probe_slirp
from .seccomp import NO_SECCOMP, SeccompFilter, compiled

CGROUP_ROOT = Path("/sys/fs/cgroup")
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class HostFacts:
    cgroup_root: Path
    v2_root: Path | None  # a writable unified hierarchy with controllers
    v2_controllers: frozenset[str]
    v1_mounts: dict[str, Path] = field(default_factory=dict)
    is_root: bool = False
    cap_sys_admin: bool = False
    bwrap: str | None = None
    bwrap_error: str = ""
    slirp: SlirpFacts = NO_SLIRP  # the outbound network of apps with networkAllowed
    seccomp: SeccompFilter = NO_SECCOMP  # the system call filter of native apps

    @property
    def backend(self) -> str:
        if self.v2_root is not None:
            return "cgroup-v2"
        if self.v1_mounts:
            return "cgroup-v1"
        return "rlimit"


def find_v2(root: Path) -> tuple[Path | None, frozenset[str]]:
    """The unified hierarchy, at the root (pure v2) or at ``unified`` (hybrid)."""
    for cand in (root, root / "unified"):
        ctrls = available_controllers(cand)
        # A hybrid host's unified tree may hold only e.g. hugetlb: not ours to use.
        if ctrls & set(V2_WANTED) and os.access(cand, os.W_OK):
            return cand, ctrls
    return None, frozenset()


def _cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


@functools.lru_cache(maxsize=4)
def probe_bwrap() -> tuple[str | None, str]:
    """(path, "") if bwrap can create its namespaces here, else (None, why)."""
    path = shutil.which("bwrap") or (
        "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)
    if path is None:
        return None, "bwrap not installed"
    try:
        r = subprocess.run(
            [path, "--unshare-all", "--uid", "65534", "--gid", "65534", "--ro-bind", "/", "/",
             "--proc", "/proc", "--", "true"],
            capture_output=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bwrap failed: {exc}"
    if r.returncode != 0:
        return None, "bwrap cannot create namespaces: " + r.stderr.decode(errors="replace").strip()
    return path, ""


# The node's own hierarchy is read at most this often per process: every launch asks
# (prepare and the premade cgroups each did: 0.17-0.3 ms of a supervisor's start).
CGROUP_FACTS_SECONDS = 30.0
CgroupFacts = tuple[Path | None, frozenset[str], dict[str, Path], bool]
_cgroup_facts: dict[Path, tuple[float, CgroupFacts]] = {}


def cgroup_facts(root: Path) -> CgroupFacts:
    """(v2 root, v2 controllers, v1 mounts, CAP_SYS_ADMIN): read now, except for the
    node's own ``/sys/fs/cgroup``, reused for ``CGROUP_FACTS_SECONDS``."""
    now = time.monotonic()
    cached = _cgroup_facts.get(root) if root == CGROUP_ROOT else None
    if cached is not None and now - cached[0] < CGROUP_FACTS_SECONDS:
        return cached[1]
    v2_root, v2_ctrls = find_v2(root)
    facts: CgroupFacts = (v2_root, v2_ctrls,
                          {} if v2_root is not None else mounted_controllers(root),
                          _cap_sys_admin())
    if root == CGROUP_ROOT:
        _cgroup_facts[root] = (now, facts)
    return facts


def detect(cgroup_root: Path = CGROUP_ROOT, *, probe_sandbox: bool = True) -> HostFacts:
    v2_root, v2_ctrls, v1_mounts, cap_sys_admin = cgroup_facts(cgroup_root)
    bwrap, why = probe_bwrap() if probe_sandbox else (None, "not probed")
    return HostFacts(
        cgroup_root=cgroup_root,
        v2_root=v2_root,
        v2_controllers=v2_ctrls,
        v1_mounts=dict(v1_mounts),
        is_root=os.geteuid() == 0,
        cap_sys_admin=cap_sys_admin,
        bwrap=bwrap,
        bwrap_error=why,
        slirp=probe_slirp() if probe_sandbox else NO_SLIRP,
        seccomp=compiled() if probe_sandbox else NO_SECCOMP,
    )


def host_capabilities(cgroup_root: Path = CGROUP_ROOT) -> list[dict[str, Any]]:
    """One ``{name, ok, detail}`` per thing ``estarter doctor`` reports."""
    f = detect(cgroup_root)
    lines: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str) -> None:
        lines.append({"name": name, "ok": ok, "detail": detail})

    if f.v2_root is not None:
        add("cgroup", True, f"v2 at {f.v2_root}")
        for c in ("memory", "pids", "cpu"):
            add(f"cgroup.{c}", c in f.v2_controllers,
                "available" if c in f.v2_controllers else "not in cgroup.controllers")
    elif f.v1_mounts:
        add("cgroup", True, f"v1 at {cgroup_root}")
        for c in ("memory", "pids", "cpu", "cpuacct"):
            m = f.v1_mounts.get(c)
            add(f"cgroup.{c}", m is not None, str(m) if m else "not mounted or not writable")
    else:
        add("cgroup", False, "no writable cgroup hierarchy: rlimits only")
    add("namespace.net", f.cap_sys_admin or f.bwrap is not None,
        "unshare(CLONE_NEWNET)" if f.cap_sys_admin
        else ("via bwrap user namespace" if f.bwrap else "needs CAP_SYS_ADMIN or bwrap"))
    add("sandbox.bwrap", f.bwrap is not None,
        f"{f.bwrap}: user, pid, mount, net namespaces" if f.bwrap else f.bwrap_error)
    s = f.slirp
    add("network.outbound", s.path is not None,
        f"slirp4netns {s.version} ({', '.join(s.flags)}): apps with networkAllowed get "
        "outbound only, this node's addresses blocked" if s.path is not None
        else f"{s.error}: apps with networkAllowed get no network (strict: refused)")
    add("seccomp", f.seccomp.ok, f.seccomp.summary() if f.seccomp.ok
        else f"{f.seccomp.error}: native apps run without a system call filter "
             "(strict: refused)")
    add("rlimit.as", True, "RLIMIT_AS (native only; never for wasm)")
    add("rlimit.cpu", True, "RLIMIT_CPU")
    add("rlimit.fsize", True, "RLIMIT_FSIZE (per-file cap for diskQuotaMb)")
    add("rlimit.nofile", True, "RLIMIT_NOFILE = maxOpenFiles (native only)")
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    add("rlimit.nproc", not f.is_root,
        "no effect for root" if f.is_root else f"RLIMIT_NPROC (current {nproc[0]})")
    return lines
