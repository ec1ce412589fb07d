"""What an app with networkAllowed can reach, for real (root, bwrap, slirp4netns): not
this node (its loopback, its primary address, the host end of a veth), but a test
host of our own in a network namespace behind that veth. Only loopback and our own
namespace's addresses are ever contacted. Every wait is bounded; the namespace,
veth, listeners and slirp processes go in ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from estarter.hosting import limits, spawn
from estarter.hosting.limits import network

from .test_enforcement import Harness, wait_for

FACTS = limits.detect()
IP = shutil.which("ip", path=network.TOOL_PATH) or "/usr/sbin/ip"
NET = {"net.access"}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(FACTS.bwrap is None, reason=FACTS.bwrap_error),
    pytest.mark.skipif(FACTS.slirp.path is None, reason=FACTS.slirp.error),
]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


def primary_address() -> str:
    """This node's IPv4 address on the default route's interface (any other if none)."""
    out = subprocess.run([IP, "-j", "route", "show", "default"], capture_output=True,
                         text=True, timeout=10).stdout
    routes = json.loads(out or "[]")
    addrs = psutil.net_if_addrs()
    for dev in [r["dev"] for r in routes if "dev" in r] + list(addrs):
        for a in addrs.get(dev, []):
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    pytest.skip("this node has no IPv4 address besides loopback")


@dataclass
class Peer:
    """A test host in a network namespace behind a veth: ``address:port`` answers "peer"."""

    host_side: str  # the host end of the veth: an address of this node
    address: str
    port: int


PEER_SERVER = """\
import socket, sys
srv = socket.socket()
srv.bind((sys.argv[1], 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    conn.sendall(b"peer")
    conn.close()
"""


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    # Per test run: a /30 inside 10.231.77.0/24 and names of our own, so two runs at
    # once (shared machine) do not meet.
    n = os.getpid() % 60
    ns, veth = f"estarter-t{os.getpid()}", f"estv{os.getpid()}"[:13]
    host_side, address = f"10.231.77.{4 * n + 1}", f"10.231.77.{4 * n + 2}"
    server: subprocess.Popen[str] | None = None
    try:
        sh(IP, "netns", "add", ns)
        sh(IP, "link", "add", veth + "h", "type", "veth", "peer", "name", veth + "p",
           "netns", ns)
        sh(IP, "addr", "add", f"{host_side}/30", "dev", veth + "h")
        sh(IP, "link", "set", veth + "h", "up")
        sh(IP, "-n", ns, "addr", "add", f"{address}/30", "dev", veth + "p")
        sh(IP, "-n", ns, "link", "set", veth + "p", "up")
        sh(IP, "-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen([IP, "netns", "exec", ns, sys.executable, "-u", "-c",
                                   PEER_SERVER, address], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        yield Peer(host_side, address, port)
    finally:
        if server is not None:
            server.kill()
            server.wait(5)
        subprocess.run([IP, "link", "del", veth + "h"], capture_output=True, timeout=10)
        subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture
def listeners(peer: Peer) -> Iterator[dict[str, socket.socket]]:
    """TCP listeners of this node that no app may reach, by name; none of them accepts."""
    out: dict[str, socket.socket] = {}
    try:
        for name, addr in (("loopback", "127.0.0.1"), ("primary", primary_address()),
                           ("veth_host", peer.host_side)):
            srv = socket.socket()
            srv.bind((addr, 0))
            srv.listen(8)
            srv.setblocking(False)
            out[name] = srv
        yield out
    finally:
        for srv in out.values():
            srv.close()


def reached(srv: socket.socket) -> bool:
    try:
        srv.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def slirps_of(pid: int) -> list[psutil.Process]:
    """slirp4netns processes started by ``pid`` that still run."""
    out = []
    for p in psutil.Process(pid).children():
        try:
            if p.name() == "slirp4netns" and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def our_slirps() -> list[psutil.Process]:
    return slirps_of(os.getpid())


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()
        assert wait_for(lambda: not our_slirps(), 2), "slirp4netns left behind"
        for p in our_slirps():
            p.kill()


PROBE = """\
import json, socket, subprocess, sys
out = {{}}
def connect(name, host, port):
    try:
        s = socket.create_connection((host, port), timeout=3)
    except OSError as exc:
        out[name] = "fail " + type(exc).__name__
        return
    try:
        s.settimeout(3)
        out[name] = "ok " + s.recv(16).decode()
    except OSError:
        out[name] = "ok"
    s.close()
for name, (host, port) in {targets!r}.items():
    connect(name, host, port)
if {try_route_del!r}:  # no capabilities here: the routes stay, the node out of reach
    r = subprocess.run([{ip!r}, "route", "del", "prohibit", {veth_host!r}], capture_output=True)
    out["route_del"] = r.returncode
    connect("veth_host_again", {veth_host!r}, {veth_port!r})
out["routes"] = subprocess.run([{ip!r}, "route"], capture_output=True, text=True).stdout
out["links"] = subprocess.run([{ip!r}, "-o", "link"], capture_output=True, text=True).stdout
print("net:" + json.dumps(out), file=sys.stderr, flush=True)
"""


def probe(harness: Harness, app_id: str, peer: Peer, listeners: dict[str, socket.socket],
          try_route_del: bool = True, **over: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    ports = {name: srv.getsockname()[1] for name, srv in listeners.items()}
    targets = {name: srv.getsockname() for name, srv in listeners.items()}
    # slirp's gateway is its door to the host's loopback (closed: --disable-host-loopback).
    targets["slirp_gateway"] = ("10.0.2.2", ports["loopback"])
    targets["peer"] = (peer.address, peer.port)
    src = PROBE.format(targets=targets, ip=IP, veth_host=peer.host_side,
                       veth_port=ports["veth_host"], try_route_del=try_route_del)
    host = harness.start(app_id, textwrap.dedent(src), **over)
    out = json.loads(harness.wait_log(app_id, "net:", 20))
    assert host.wait(10) is not None
    for name, srv in listeners.items():
        assert not reached(srv), f"the app reached this node's {name} listener: {out}"
    return out, host.info()["limits"]


def test_outbound_only_this_node_unreachable(harness: Harness, peer: Peer,
                                            listeners: dict[str, socket.socket]) -> None:
    out, lim = probe(harness, "net-out", peer, listeners, network_allowed=True, granted=NET)
    assert out["peer"] == "ok peer", out
    assert out["loopback"].startswith("fail"), out  # its own loopback: nobody listens
    assert out["primary"] == "fail PermissionError", out  # prohibit route
    assert out["veth_host"] == "fail PermissionError", out
    assert out["slirp_gateway"].startswith("fail"), out
    assert out["route_del"] != 0 and out["veth_host_again"] == "fail PermissionError", out
    assert "prohibit 169.254.0.0/16" in out["routes"], out
    assert lim["network"].startswith("slirp4netns (outbound only; node addresses blocked: ")
    assert primary_address() in lim["network"] and peer.host_side in lim["network"]
    assert not [x for x in lim["notApplied"] if "network" in x], lim["notApplied"]
    assert 0 < lim["networkSetupMs"] < 5000


def test_extra_addresses_are_blocked_too(harness: Harness, peer: Peer,
                                         listeners: dict[str, socket.socket]) -> None:
    # The peer stands in for another Ray node: named by the caller, it is out of reach.
    base = harness.ctx
    harness.ctx = lambda app_id: replace(  # type: ignore[method-assign]
        base(app_id), blocked_addresses=(f"{peer.address}/32",))
    out, lim = probe(harness, "net-extra", peer, listeners, network_allowed=True, granted=NET)
    assert out["peer"] == "fail PermissionError", out
    assert f"{peer.address}, 169.254.0.0/16)" in lim["network"]


@pytest.mark.parametrize("which", ["native", "python"])
def test_without_bwrap_the_launcher_namespace_gets_the_same(
        harness: Harness, peer: Peer, listeners: dict[str, socket.socket],
        monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    facts = replace(FACTS, bwrap=None, bwrap_error="bwrap hidden by the test")
    monkeypatch.setattr(limits, "detect", lambda *a, **k: facts)
    if which == "python":  # the reference launcher hands over the same way
        monkeypatch.setattr(spawn, "native_launcher", lambda: None)
    # The app runs as root here (no run_as): it could drop its routes, so it is not asked to.
    out, lim = probe(harness, "net-bare", peer, listeners, try_route_del=False,
                     network_allowed=True, granted=NET)
    assert out["peer"] == "ok peer", out
    assert out["primary"] == "fail PermissionError" and out["veth_host"] == out["primary"], out
    # ... which is said, not hidden (strict mode refuses it).
    assert any("could change its routes" in x for x in lim["notApplied"]), lim["notApplied"]


def test_without_network_only_loopback(harness: Harness, peer: Peer,
                                       listeners: dict[str, socket.socket]) -> None:
    out, lim = probe(harness, "net-none", peer, listeners, network_allowed=False)
    assert out["peer"].startswith("fail") and out["primary"].startswith("fail"), out
    assert [line.split(":")[1].strip() for line in out["links"].splitlines()] == ["lo"], out
    assert lim["network"] == "none (bwrap --unshare-net)" and lim["networkSetupMs"] is None
    assert not our_slirps()


SUPERVISOR = """\
import concurrent.futures, sys, time
from pathlib import Path
from estarter.hosting.base import HostContext
from estarter.hosting.process_host import ProcessHost
from estarter.manifest import RestartPolicy, RuntimeKind
from estarter.policy import SandboxPolicy

root = Path(sys.argv[1])
(root / "app.py").write_text("import time\\ntime.sleep(60)\\n")
def api(method, params):
    f = concurrent.futures.Future(); f.set_result({}); return f
ctx = HostContext(api=api, log=lambda level, msg: None, on_exit=lambda info: None,
                  home=root / "home", appdata=root / "home" / "appdata")
pol = SandboxPolicy(app_id="net-orphan", runtime=RuntimeKind.PYTHON, app_dir=root,
                    entry=root / "app.py", args=(), requested=frozenset({"net.access"}),
                    granted=frozenset({"net.access"}), memory_limit_bytes=0, max_processes=0,
                    cpu_quota_percent=0, network_allowed=True, max_runtime_seconds=0,
                    disk_quota_bytes=0, restart=RestartPolicy.NEVER, sandboxed=True)
host = ProcessHost(pol, ctx)
host.start()
print("up", flush=True)
time.sleep(60)
"""


def test_slirp_goes_with_a_killed_supervisor(tmp_path: Path) -> None:
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path)],
                           stdout=subprocess.PIPE, text=True,
                           cwd=str(Path(__file__).resolve().parents[2]))
    slirps: list[psutil.Process] = []
    try:
        assert sup.stdout is not None and sup.stdout.readline().strip() == "up"
        slirps = slirps_of(sup.pid)
        assert len(slirps) == 1, slirps
        sup.send_signal(signal.SIGKILL)
        sup.wait(5)
        t0 = time.monotonic()

        def gone() -> bool:
            try:
                return slirps[0].status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        assert wait_for(gone, 30.0), f"slirp4netns left after {time.monotonic() - t0:.2f} s"
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait(5)
        for p in slirps:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
