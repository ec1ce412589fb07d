"""AppLimits: the limits of one launch, composed from a cgroup backend (or none),
rlimits, the bwrap sandbox and the orphan guard. ProcessHost drives it:
``plan`` -> spawn -> ``started`` -> ... -> ``kill`` -> ``exit_reason`` -> ``cleanup``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

import psutil

from ...errors import SandboxUnavailable
from ...policy import SandboxPolicy
from .. import launcher
from ..base import ExitReason, HostContext
from . import network
from .cgroupfs import Cgroups, remove_later
from .detect import HostFacts
from .plan import LaunchPlan, Outcome
from .rlimits import (
    CPU_FRACTION,
    CPU_SIGNALS,
    MEMORY_PEAK_FRACTION,
    TreeSampler,
    killed_by,
    plan_rlimits,
    tree,
)
from .sandbox import bwrap_argv
from .seccomp import SeccompFilter, program_pipe

TOKEN_ENV = "ESTARTER_LIMITS_TOKEN"


class AppLimits:
    """Limits of one launch. Every method but ``plan`` and ``started`` (strict mode
    only) is idempotent and never raises."""

    def __init__(self, policy: SandboxPolicy, ctx: HostContext, facts: HostFacts,
                 cgroups: Cgroups | None, *, run_as: tuple[int, int] | None = None) -> None:
        self.policy = policy
        self.ctx = ctx
        self.facts = facts
        self.cgroups = cgroups
        self.run_as = run_as
        self.pid: int | None = None
        # Marks every process of this launch in its environment: the kill sweep of
        # the rlimit fallback finds a double-forked daemon by it.
        self.token = secrets.token_hex(8)
        self.rlimits: dict[str, list[int]] = {}
        self.sandboxed = False
        self.wrapped = False  # in bwrap: own PID namespace (sandboxed or host view)
        self.network = "host"
        self.net: network.SlirpNetwork | None = None  # the outbound network's slirp4netns
        self._not_applied: list[str] = []
        self.seccomp: SeccompFilter | None = None  # the filter this launch runs under
        self.seccomp_by = ""  # who installs it: bwrap or the launcher
        self._seccomp_fd: int | None = None  # our end of the pipe with the program
        self.sampler: TreeSampler | None = None
        self._lock = threading.Lock()
        self._cleaned = False

    @property
    def uses_token(self) -> bool:
        """Processes are found by the environment marker (no cgroup, no PID namespace)."""
        return self.cgroups is None and not self.wrapped

    @property
    def backend(self) -> str:
        return self.cgroups.name if self.cgroups is not None else "rlimit"

    def plan(self, argv: list[str], env: dict[str, str], cwd: Path) -> LaunchPlan:
        """The launch; raises SandboxUnavailable (strict) naming what cannot be applied,
        PermissionDenied if a widening manifest flag lacks its grant."""
        self.policy.require_escape_hatch_grants()
        try:
            return self._plan(argv, env, cwd)
        except SandboxUnavailable:
            self.cleanup()
            raise

    def _plan(self, argv: list[str], env: dict[str, str], cwd: Path) -> LaunchPlan:
        policy, facts = self.policy, self.facts
        out = Outcome(policy.app_id, policy.strict)
        spec: dict[str, Any] = {"setsid": True, "pdeathsig": int(signal.SIGKILL),
                                "parent_pid": os.getpid(), "no_new_privs": True}
        out.ok("session: setsid, PDEATHSIG=SIGKILL, no_new_privs")
        handled: set[str] = set()
        if self.cgroups is not None and not self.cgroups.dirs:  # premade: made already
            try:
                self.cgroups.create()
            except OSError as exc:
                self.cgroups.remove()
                self.cgroups = None
                out.missing(f"cgroups ({exc})")
        if self.cgroups is not None:
            # After the mkdirs: a move holds the cgroup mutex through its wait, and a
            # mkdir needs it. The rest of the plan and the spawn overlap the wait
            # (v2 only: v1's join does not wait, see CgroupsV1.join_files).
            self.cgroups.prime()
            handled = self.cgroups.apply(policy, out)
            spec["cgroup_procs"] = self.cgroups.join_files()
        app_is_root = (self.run_as[0] if self.run_as else os.geteuid()) == 0
        self.rlimits = plan_rlimits(policy, handled, app_is_root, out)
        if self.rlimits:
            spec["rlimits"] = self.rlimits
        wrapper: list[str] = []
        if facts.bwrap is not None:
            # Unsandboxed (admin granted) still runs in bwrap: the host's folders
            # read-only, no capabilities, its own PID namespace, secrets masked.
            wrapper = bwrap_argv(facts.bwrap, policy, self.ctx,
                                 self.run_as[0] if self.run_as else os.geteuid())
            self.wrapped = True
            self.sandboxed = policy.sandboxed
            out.ok("sandboxed: bwrap (user/pid/mount/ipc/uts/cgroup namespaces, uid 65534, "
                   "no capabilities, zones by permission)" if policy.sandboxed else
                   "unsandboxed (admin granted): bwrap host view (host folders read-only, "
                   "pid/mount/ipc/uts/cgroup namespaces, no capabilities, estarter home, "
                   "Ray credentials, /tmp and /run masked)")
        else:
            out.missing(f"{'sandboxed' if policy.sandboxed else 'unsandboxed host view'} "
                        f"({facts.bwrap_error})")
        if not policy.network_allowed:
            if self.wrapped:
                self.network = "none (bwrap --unshare-net)"
            elif facts.cap_sys_admin:
                spec["unshare_net"] = True
                self.network = "none (unshare CLONE_NEWNET)"
            else:
                out.missing("networkAllowed=false (no CAP_SYS_ADMIN and no sandbox)")
            if self.network != "host":
                out.ok(f"networkAllowed=false: {self.network}")
        else:
            wrapper = self._plan_outbound(spec, wrapper, out)
        wrapper = self._plan_seccomp(spec, wrapper, out)
        if not self.wrapped or self.cgroups is not None:
            # If the supervisor dies, nobody else would kill a daemon that escaped
            # PDEATHSIG (bwrap's PID namespace does that when wrapped) or remove
            # the cgroups: the guard kills the cgroup (or the token's processes)
            # and removes it.
            spec["guard"] = {"procs": self.cgroups.procs_files() if self.cgroups else [],
                             "token": self.token}
            out.ok("orphan guard: watchdog of the supervisor")
        if self.run_as is not None:
            spec["user"] = list(self.run_as)
        if self.uses_token:
            # Only without cgroups and without bwrap's PID namespace: then the
            # environment marker is the one way to find a double-forked daemon, and
            # the app can see it (reported; every other launch keeps DESIGN's list).
            env = {**env, TOKEN_ENV: self.token}
            out.missing("environment exactly DESIGN's list (no cgroups and no PID "
                        f"namespace: the orphan guard marks processes with {TOKEN_ENV})")
        self._not_applied = out.not_applied
        pass_fds: tuple[int, ...] = self.net.child_fds if self.net else ()
        if self._seccomp_fd is not None:
            pass_fds = (*pass_fds, self._seccomp_fd)
        return LaunchPlan(spec, wrapper, list(argv), env, cwd, out.applied, out.not_applied,
                          pass_fds=pass_fds)

    def _plan_seccomp(self, spec: dict[str, Any], wrapper: list[str],
                      out: Outcome) -> list[str]:
        """The system call filter (``seccomp.py``), last before the app's exec: bwrap's
        ``--seccomp FD`` when wrapped (after its own mounts), else the launcher's. The
        program travels on a pipe the child inherits. The wrapper back."""
        flt = self.facts.seccomp
        if not flt.ok:
            out.missing(f"seccomp filter ({flt.error})")
            return wrapper
        self._seccomp_fd = program_pipe(flt.program)
        self.seccomp = flt
        if self.wrapped:
            self.seccomp_by = "bwrap"
            wrapper = [*wrapper[:-1], "--seccomp", str(self._seccomp_fd), "--"]
        else:
            self.seccomp_by = "launcher"
            spec["seccomp_fd"] = self._seccomp_fd
        out.ok(f"seccomp ({self.seccomp_by}): {flt.summary()}")
        return wrapper

    def _close_seccomp_fd(self) -> None:
        """Our end of the program pipe: the child holds its own once spawned. Idempotent."""
        with self._lock:
            fd, self._seccomp_fd = self._seccomp_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _plan_outbound(self, spec: dict[str, Any], wrapper: list[str],
                       out: Outcome) -> list[str]:
        """networkAllowed: a namespace of its own whose one way out is slirp4netns, this
        node's addresses blocked (``network.py``); never the host's. The launcher makes
        the namespace and waits while the supervisor sets it up; bwrap, started after
        that, shares it (its own loopback set-up would race with ours, and a namespace
        owned by the host's user namespace is out of reach of the app's root, if any).
        The wrapper back."""
        slirp = self.facts.slirp
        if not self.facts.cap_sys_admin:  # slirp4netns needs root anyway
            if self.wrapped:
                self.network = "none (bwrap --unshare-net)"
            out.missing("networkAllowed=true outbound only (no CAP_SYS_ADMIN): "
                        + ("no network at all" if self.wrapped else "the host's network"))
            return wrapper
        if slirp.path is None:
            if not self.wrapped:
                spec["unshare_net"] = True
            self.network = f"none ({slirp.error})"
            out.missing(f"networkAllowed=true ({slirp.error}): no network at all")
            return wrapper
        self.net = network.SlirpNetwork(
            slirp, network.blocked_networks(self.ctx.blocked_addresses))
        self.network = self.net.describe()
        spec["unshare_net"] = True
        spec["info_fd"], spec["block_fd"] = self.net.child_fds
        if self.wrapped:
            wrapper = [*wrapper[:-1], "--share-net", "--"]  # the launcher's own namespace
        elif (self.run_as[0] if self.run_as else os.geteuid()) == 0:
            out.missing("networkAllowed=true: node addresses blocked (the app runs as "
                        "root outside a sandbox and could change its routes)")
        out.ok(f"networkAllowed=true: {self.network}")
        return wrapper

    def started(self, pid: int) -> None:
        """Called with the child's pid right after spawn. An outbound network is set up
        first (the child waits for it); if that fails, the app runs with no network at
        all (reported), or in strict mode is killed and SandboxUnavailable raised."""
        self.pid = pid
        self._close_seccomp_fd()
        if self.net is not None:
            self._attach_network(self.net)
        if self.cgroups is None and ({"RLIMIT_AS", "RLIMIT_CPU"} & self.rlimits.keys()):
            self.sampler = TreeSampler(pid)

    def _attach_network(self, net: network.SlirpNetwork) -> None:
        try:
            net.attach()
        except network.NetworkSetupError as exc:
            line = f"networkAllowed=true (slirp4netns set-up failed: {exc}): no network at all"
            if self.policy.strict:
                self.kill()
                net.close()
                raise SandboxUnavailable(f"{self.policy.app_id}: cannot apply {line} (strict "
                                         "mode refuses to launch)", {"limit": line}) from None
            self.network = f"none (slirp4netns set-up failed: {exc})"
            self._not_applied.append(line)
            self.ctx.log("warning", f"limit not applied: {line}")
        net.release()

    def exit_reason(self, code: int | None,
                    cpu_seconds: float | None = None) -> ExitReason | None:
        """A limit that explains this exit, read from the kernel's counters, or None.
        ``cpu_seconds``: the CPU time of the app's tree from its rusage, if known."""
        if self.cgroups is not None and self.cgroups.oom_kills() > 0:
            return ExitReason.MEMORY_LIMIT
        s = self.sampler
        if s is None:
            return None
        s.stop()
        cpu = self.rlimits.get("RLIMIT_CPU")
        # SIGXCPU under RLIMIT_CPU is the kernel's word that the soft limit was hit:
        # on a busy host the sampler may have seen little of the CPU time before, and
        # behind bwrap the rusage of wait4 may miss the app (bwrap does not always
        # reap its sandbox's init). The app could raise it itself: then it only names
        # its own crash cpu_limit. SIGKILL (the hard limit) is also how we kill, so
        # it needs the CPU time behind it: the sampler's or the rusage's.
        if cpu and killed_by(code, int(signal.SIGXCPU)):
            return ExitReason.CPU_LIMIT
        used = max(s.max_cpu, cpu_seconds or 0.0)
        if cpu and killed_by(code, *CPU_SIGNALS) and used >= CPU_FRACTION * cpu[0]:
            return ExitReason.CPU_LIMIT
        mem = self.rlimits.get("RLIMIT_AS")
        if mem and code not in (0, None) and s.peak_vm >= MEMORY_PEAK_FRACTION * mem[0]:
            return ExitReason.MEMORY_LIMIT
        return None

    def kill(self) -> None:
        """SIGKILL every process of the app: cgroup, session, descendants, token."""
        if self.cgroups is not None:
            self.cgroups.kill()
        if self.pid is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.cgroups is None:
            for p in tree(self.pid)[1:]:
                with contextlib.suppress(psutil.Error):  # gone already: nothing to kill
                    p.kill()
        if self.uses_token:
            for pid in launcher._token_pids(self.token):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def alive_pids(self) -> list[int]:
        """Processes of the app still present (for tests and ``inspect``)."""
        if self.cgroups is not None:
            return self.cgroups.pids()
        pids = set(launcher._token_pids(self.token)) if self.uses_token else set()
        if self.pid is not None:
            pids.update(p.pid for p in tree(self.pid))
        return sorted(pids)

    def report(self) -> dict[str, Any]:
        """What was actually applied to this launch (``estarter inspect``)."""
        cg = self.cgroups
        return {
            "backend": self.backend,
            "cgroups": [str(d) for d in cg.dirs] if cg else [],
            "written": dict(cg.values) if cg else {},
            "rlimits": {k: list(v) for k, v in self.rlimits.items()},
            "sandbox": ("bwrap" if self.sandboxed else "bwrap host view" if self.wrapped
                        else "off"),
            "network": self.network,
            "networkSetupMs": (round(self.net.setup_seconds * 1000, 1)
                               if self.net and self.net.setup_seconds is not None else None),
            "seccomp": ({"by": self.seccomp_by, **self.seccomp.to_dict()}
                        if self.seccomp is not None else None),
            "runAs": list(self.run_as) if self.run_as else None,
            "sampled": self.sampler.snapshot() if self.sampler else None,
        }

    def cleanup(self) -> None:
        """Kill what is left and remove the cgroups (bounded retries). Idempotent."""
        with self._lock:
            if self._cleaned:
                return
            self._cleaned = True
        self._close_seccomp_fd()
        if self.sampler is not None:
            self.sampler.stop()
        if self.net is not None:
            self.net.close()  # slirp4netns stopped and reaped
        cg = self.cgroups
        if cg is None:
            return
        if cg.pids():
            cg.kill()
        left = cg.remove()
        if left:
            self.ctx.log("warning", f"cgroups not removed yet (retrying in the "
                                    f"background): {[str(d) for d in left]}")

            def done(still: list[Path]) -> None:
                if still:
                    self.ctx.log("warning", f"cgroups still busy, left for the stale "
                                            f"sweep: {[str(d) for d in still]}")

            remove_later(left, on_done=done)
