"""Outbound-only network for an app with ``networkAllowed``: a namespace of its own,
slirp4netns for the way out, and every address of this node made unreachable.

The host's network namespace is never shared: from there an app reaches Ray's GCS,
raylet and kernel worker on 127.0.0.1 and on the node's own addresses. The app's
namespace (made by the launcher, ``--unshare-net``; bwrap then shares it) has its
own loopback and a tap device served by a user-mode TCP/IP stack, slirp4netns, that
the supervisor runs as root outside it (``--disable-host-loopback`` shuts slirp's own
door to the host's loopback, 10.0.2.2). Traffic that leaves through slirp comes out
of the host's namespace, so inside the app's namespace every address of this node
(each interface address, IPv4 and IPv6), the caller's extra addresses (other Ray
nodes) and the link-local range (cloud metadata) get a ``prohibit`` route. The app
has no capabilities there (uid 65534, ``--cap-drop ALL``), so it cannot remove them.

Order, with two pipes passed to the child (flags as bwrap's ``--info-fd`` and
``--block-fd``): the launcher, in its new namespace, writes ``{"child-pid": N,
"net-namespace": INODE}`` to the info pipe, then waits on the block pipe before it
execs bwrap or the app. :meth:`SlirpNetwork.attach` opens that namespace, starts
slirp4netns, adds the routes (``nsenter`` + ``ip -batch``), waits until slirp is
ready, and only then :meth:`~SlirpNetwork.release` lets the launch go on. Not bwrap's
own ``--info-fd``/``--block-fd``: bwrap's child sets up its loopback while the
parent reports, so anything we do in the namespace meanwhile races with it
("loopback: Failed RTM_NEWADDR"); and a namespace the launcher made as root is owned
by the host's user namespace, where no app has a capability.

slirp4netns exits when its ``--exit-fd`` pipe closes: on :meth:`~SlirpNetwork.close`
and, since only the supervisor holds the write end, when the supervisor dies.

Cost measured here (2 cores, shared, bwrap sandbox, medians of 40 launches): the
app's first line comes 3-9 ms later than without network; the set-up itself is
about 7 ms (slirp4netns ready ~2 ms, ``nsenter ip -batch`` ~5 ms), and the
namespace's creation (~12 ms) only moves from bwrap to the launcher. ``start()``
returns once it is all done: ~25-35 ms instead of ~6 ms.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

import psutil

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")  # cloud metadata lives here
SLIRP_ARGS = ("--configure", "--mtu=65520", "--disable-host-loopback")
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ATTACH_TIMEOUT = 10.0  # a blocked child must report within this, slirp be ready too
IPV6 = os.path.exists("/proc/sys/net/ipv6")


class NetworkSetupError(Exception):
    """The outbound network of one launch could not be set up (the reason is the text)."""


@dataclass(frozen=True)
class SlirpFacts:
    """Whether this host can give an app outbound-only network, and with what."""

    path: str | None  # slirp4netns, or None (then ``error`` says why)
    nsenter: str = ""
    ip: str = ""
    flags: tuple[str, ...] = ()  # slirp's own sandbox and seccomp filter, if it has them
    version: str = ""
    error: str = ""


NO_SLIRP = SlirpFacts(None, error="slirp4netns not probed")


@functools.cache
def probe_slirp() -> SlirpFacts:
    """slirp4netns, nsenter and ip, found once per process."""
    path = shutil.which("slirp4netns", path=TOOL_PATH)
    if path is None:
        return SlirpFacts(None, error="slirp4netns not installed")
    nsenter, ip = shutil.which("nsenter", path=TOOL_PATH), shutil.which("ip", path=TOOL_PATH)
    if nsenter is None or ip is None:
        return SlirpFacts(None, error="nsenter or ip (util-linux, iproute2) not installed")
    if os.geteuid() != 0:  # it must enter a namespace owned by the sandbox's user namespace
        return SlirpFacts(None, error="slirp4netns needs the supervisor to run as root")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return SlirpFacts(None, error=f"slirp4netns does not run: {exc}")
    version = out.splitlines()[0].rpartition(" ")[2] if out else "?"
    # --enable-sandbox: slirp pivots into an empty root and drops its capabilities;
    # --enable-seccomp: only when it was built with libseccomp.
    flags = ("--enable-sandbox", "--enable-seccomp") if "libseccomp:" in out \
        else ("--enable-sandbox",)
    return SlirpFacts(path, nsenter, ip, flags, version)


def node_addresses() -> list[str]:
    """Every address of this node's interfaces, IPv4 and IPv6, loopback excepted (in
    the app's namespace 127.0.0.1 and ::1 are its own loopback)."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%", 1)[0])  # fe80::1%eth0
            if not ip.is_loopback:
                found.append(str(ip))
    return found


def blocked_networks(extra: Iterable[str] = (),
                     local: Iterable[str] | None = None) -> list[Network]:
    """What the app must not reach: this node's addresses (``local``, by default
    :func:`node_addresses` now), ``extra`` (addresses or networks, e.g. other Ray
    nodes) and the link-local range. Each once, in that order."""
    out: list[Network] = []
    for item in [*(node_addresses() if local is None else local), *extra, str(LINK_LOCAL)]:
        net = ipaddress.ip_network(str(item).split("%", 1)[0], strict=False)
        if net not in out:
            out.append(net)
    return out


def route_commands(blocked: Sequence[Network], *, ipv6: bool = IPV6) -> list[str]:
    """``ip -batch`` lines for the app's namespace: its loopback up (the launcher's
    fresh namespace has it down) and a ``prohibit`` route for each blocked network
    (connecting gives EACCES at once). ``replace`` is idempotent. Without IPv6 in
    the kernel there is no IPv6 route to add, nor any IPv6 way out."""
    lines = ["link set lo up"]
    lines += [f"route replace prohibit {net}" for net in blocked if ipv6 or net.version == 4]
    return lines


def describe(blocked: Sequence[Network]) -> str:
    """The ``network`` line of ``estarter inspect``."""
    shown = ", ".join(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
                      for n in blocked)
    return f"slirp4netns (outbound only; node addresses blocked: {shown})"


class SlirpNetwork:
    """One app's outbound network, from the pipes the child gets to slirp's reaping.

    ``attach`` once, after the spawn; ``release`` and ``close`` are idempotent and
    never raise. Not thread safe beyond that: the launching thread drives it, and
    ``close`` may come from any thread once ``attach`` has returned.
    """

    def __init__(self, facts: SlirpFacts, blocked: Sequence[Network]) -> None:
        if facts.path is None:
            raise ValueError(f"no slirp4netns: {facts.error}")
        self.facts = facts
        self.blocked = tuple(blocked)
        self._info_r, self._info_w = os.pipe()
        self._block_r, self._block_w = os.pipe()
        self._exit_w: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.child_pid: int | None = None
        self.setup_seconds: float | None = None

    @property
    def child_fds(self) -> tuple[int, int]:
        """(info fd, block fd): pass both to the child (``Popen(pass_fds=...)``)."""
        return self._info_w, self._block_r

    def describe(self) -> str:
        return describe(self.blocked)

    def attach(self, timeout: float = ATTACH_TIMEOUT) -> None:
        """The child's namespace gets slirp4netns and the routes; raises
        NetworkSetupError if it cannot, with slirp stopped: the child still waits,
        to be released (it then has its loopback only) or killed."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._close_fd("_info_w")  # only the child writes now: EOF when it dies
        self._close_fd("_block_r")
        try:
            info = self._read_info(deadline)
            pid = int(info["child-pid"])
            ns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # the child is gone, or close() came first
            raise NetworkSetupError(f"cannot reach the app's namespace: {exc}") from None
        try:
            # The pid could in theory be reused; the namespace's inode cannot lie.
            if "net-namespace" in info and os.fstat(ns).st_ino != int(info["net-namespace"]):
                raise NetworkSetupError("the app's namespace is not the one it reported")
            if os.fstat(ns).st_ino == os.stat("/proc/self/ns/net").st_ino:
                raise NetworkSetupError("the app shares the host's network namespace")
            ready = self._start_slirp(ns)
            self._add_routes(ns)
            self._wait_ready(ready, deadline)
        except NetworkSetupError:
            self._stop_slirp()
            raise
        finally:
            os.close(ns)
        self.child_pid = pid
        self.setup_seconds = time.monotonic() - t0

    def release(self) -> None:
        """Let the child go on (to exec bwrap or the app). Idempotent, never raises."""
        with self._lock:
            fd, self._block_w = self._block_w, -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # the child is gone: nothing to release
                os.write(fd, b"1")
            os.close(fd)

    def close(self) -> None:
        """Stop slirp4netns (SIGKILL; reaped on a thread), close every fd. Idempotent,
        never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_slirp()
        for name in ("_info_r", "_info_w", "_block_r", "_block_w"):
            self._close_fd(name)

    def __enter__(self) -> SlirpNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps -----------------------------------------------------------------

    def _read_info(self, deadline: float) -> dict[str, int]:
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._info_r], [], [], left)[0]:
                raise NetworkSetupError("the app's sandbox did not report its pid in time")
            chunk = os.read(self._info_r, 4096)
            if not chunk:
                raise NetworkSetupError("the app ended before its network was set up")
            buf += chunk
            if len(buf) > 65536:
                raise NetworkSetupError("the app's sandbox reported garbage")
            try:
                info = json.loads(buf)
            except ValueError:
                continue  # not all of it yet
            if not isinstance(info, dict) or not isinstance(info.get("child-pid"), int):
                raise NetworkSetupError(f"the app's sandbox reported {buf[:200]!r}")
            return info

    def _start_slirp(self, ns: int) -> int:
        """Start slirp4netns on the namespace; returns the read end of its ready fd."""
        ready_r, ready_w = os.pipe()
        exit_r, self._exit_w = os.pipe()
        # Kept until close (read for the reason if slirp fails); a few lines at most.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (outlives this call)
        assert self.facts.path is not None
        argv = [self.facts.path, *SLIRP_ARGS, *self.facts.flags, "--ready-fd", str(ready_w),
                "--exit-fd", str(exit_r), "--netns-type=path", f"/proc/self/fd/{ns}", "tap0"]
        try:
            # Its own session: a terminal's ^C to the supervisor's group is not for it.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=self._stderr,
                                          pass_fds=(ready_w, exit_r, ns),
                                          start_new_session=True)
        except OSError as exc:
            os.close(ready_r)
            raise NetworkSetupError(f"cannot start slirp4netns: {exc}") from None
        finally:
            os.close(ready_w)
            os.close(exit_r)
        return ready_r

    def _add_routes(self, ns: int) -> None:
        batch = "".join(line + "\n" for line in route_commands(self.blocked))
        try:
            r = subprocess.run([self.facts.nsenter, f"--net=/proc/self/fd/{ns}", self.facts.ip,
                                "-batch", "-"], input=batch.encode(), capture_output=True,
                               pass_fds=(ns,), timeout=ATTACH_TIMEOUT, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NetworkSetupError(f"cannot add the routes: {exc}") from None
        if r.returncode != 0:
            why = r.stderr.decode(errors="replace").strip()[-300:]
            raise NetworkSetupError(f"cannot add the routes: {why}")

    def _wait_ready(self, ready: int, deadline: float) -> None:
        try:
            left = max(0.0, deadline - time.monotonic())
            got = os.read(ready, 1) if select.select([ready], [], [], left)[0] else None
        finally:
            os.close(ready)
        if got == b"1":
            return
        assert self._stderr is not None
        self._stderr.seek(0)
        why = self._stderr.read()[-300:].decode(errors="replace").strip()
        raise NetworkSetupError("slirp4netns " + ("did not get ready in time" if got is None
                                                  else f"failed: {why or 'no reason given'}"))

    def _stop_slirp(self) -> None:
        self._close_fd("_exit_w")
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                proc.kill()  # it has nothing to save
            # Its exit takes ~30 ms (the kernel removes its tap device): reaped on a
            # thread of its own, so the app's exit is not reported that much later.
            threading.Thread(target=proc.wait, name="estarter-slirp-reaper",
                             daemon=True).start()
        if self._stderr is not None:
            self._stderr.close()

    def _close_fd(self, name: str) -> None:
        fd = getattr(self, name)
        if fd is not None and fd >= 0:
            setattr(self, name, -1)
            with contextlib.suppress(OSError):
                os.close(fd)
