"""The outbound network of apps with networkAllowed, without a namespace: the address
list, the route commands, the plan (pipes, wrapper flags, reports), the hand-over
through both launchers, and the refusals of ``SlirpNetwork.attach``."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from estarter.errors import SandboxUnavailable
from estarter.hosting import launcher, limits, spawn
from estarter.hosting.limits import network
from estarter.hosting.limits.network import (
    NO_SLIRP,
    NetworkSetupError,
    SlirpFacts,
    SlirpNetwork,
    blocked_networks,
    route_commands,
)

from .test_limits_cgroups import make_ctx, make_policy
from .test_limits_plan import NO_CGROUPS, launcher_head  # noqa: F401  (a fixture)

FAKE_SLIRP = SlirpFacts("/usr/bin/slirp4netns", "/usr/bin/nsenter", "/usr/sbin/ip",
                        ("--enable-sandbox",), "1.2.0")
WITH_BWRAP = replace(NO_CGROUPS, bwrap="/usr/bin/bwrap", cap_sys_admin=True, slirp=FAKE_SLIRP)


def nets(*items: str) -> list[network.Network]:
    return [ipaddress.ip_network(i) for i in items]


def test_blocked_networks_each_once_link_local_last() -> None:
    got = blocked_networks(["10.1.2.3", "10.9.0.0/16", "192.0.2.2"],
                           local=["192.0.2.2", "fd00::2", "fe80::1%eth0", "192.0.2.2"])
    assert got == nets("192.0.2.2/32", "fd00::2/128", "fe80::1/128", "10.1.2.3/32",
                       "10.9.0.0/16", "169.254.0.0/16")


def test_node_addresses_are_every_interface_address_but_loopback() -> None:
    found = network.node_addresses()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name in ("AF_INET", "AF_INET6"):
                ip = ipaddress.ip_address(a.address.split("%")[0])
                assert (str(ip) in found) is not ip.is_loopback, ip
    default = blocked_networks()
    assert default[-1] == network.LINK_LOCAL
    assert [n.network_address for n in default[:-1]] == [
        ipaddress.ip_address(a) for a in dict.fromkeys(found)]


def test_route_commands_bring_loopback_up_and_prohibit_each() -> None:
    blocked = nets("192.0.2.2/32", "fd00::2/128", "169.254.0.0/16")
    assert route_commands(blocked, ipv6=True) == [
        "link set lo up", "route replace prohibit 192.0.2.2/32",
        "route replace prohibit fd00::2/128", "route replace prohibit 169.254.0.0/16"]
    assert "route replace prohibit fd00::2/128" not in route_commands(blocked, ipv6=False)


def test_describe_names_addresses_and_ranges() -> None:
    assert network.describe(nets("192.0.2.2/32", "fd00::2/128", "169.254.0.0/16")) == (
        "slirp4netns (outbound only; node addresses blocked: 192.0.2.2, fd00::2, "
        "169.254.0.0/16)")


# -- the plan ------------------------------------------------------------------------


def test_without_slirp_an_app_with_network_gets_none(tmp_path: Path) -> None:
    facts = replace(WITH_BWRAP, slirp=replace(NO_SLIRP, error="slirp4netns not installed"))
    lim = limits.prepare(make_policy(tmp_path, sandboxed=True), make_ctx(tmp_path), facts=facts)
    plan = lim.plan(["app"], {}, tmp_path)
    assert plan.wrapper[:2] == ["/usr/bin/bwrap", "--unshare-all"]
    assert "--share-net" not in plan.wrapper and "info_fd" not in plan.spec
    assert "networkAllowed=true (slirp4netns not installed): no network at all" \
        in plan.not_applied
    assert lim.report()["network"] == "none (slirp4netns not installed)"
    # Nothing else missing before the network: no pids or CPU limits asked for.
    strict = limits.prepare(make_policy(tmp_path, sandboxed=True, strict=True, max_processes=0,
                                        cpu_quota_percent=0), make_ctx(tmp_path), facts=facts)
    with pytest.raises(SandboxUnavailable, match="networkAllowed"):
        strict.plan(["app"], {}, tmp_path)


def test_with_slirp_the_launcher_makes_the_namespace_bwrap_shares(tmp_path: Path) -> None:
    ctx = replace(make_ctx(tmp_path), blocked_addresses=("10.9.9.9",))
    lim = limits.prepare(make_policy(tmp_path, sandboxed=True), ctx, facts=WITH_BWRAP)
    plan = lim.plan(["app"], {}, tmp_path)
    try:
        assert lim.net is not None
        info, block = lim.net.child_fds
        flags = spawn.spec_flags(plan.spec)
        assert "--unshare-net" in flags
        assert flags[flags.index("--info-fd") + 1] == str(info)
        assert flags[flags.index("--block-fd") + 1] == str(block)
        assert {info, block} <= set(plan.pass_fds)
        assert plan.wrapper[-2:] == ["--share-net", "--"] and "--unshare-all" in plan.wrapper
        report = lim.report()["network"]
        assert report.startswith("slirp4netns (outbound only; node addresses blocked: ")
        assert "10.9.9.9, 169.254.0.0/16)" in report
        assert f"networkAllowed=true: {report}" in plan.applied
    finally:
        lim.cleanup()
    for fd in (info, block):
        with pytest.raises(OSError):
            os.fstat(fd)  # closed with the launch


def test_without_bwrap_the_launcher_hands_over(tmp_path: Path) -> None:
    facts = replace(NO_CGROUPS, cap_sys_admin=True, slirp=FAKE_SLIRP)
    lim = limits.prepare(make_policy(tmp_path), make_ctx(tmp_path), facts=facts,
                         run_as=(1000, 1000))
    plan = lim.plan(["app"], {}, tmp_path)
    try:
        assert lim.net is not None
        flags = spawn.spec_flags(plan.spec)
        assert "--unshare-net" in flags
        assert flags[flags.index("--info-fd") + 1] == str(lim.net.child_fds[0])
        assert not any(line.startswith("networkAllowed") for line in plan.not_applied)
    finally:
        lim.cleanup()
    as_root = limits.prepare(make_policy(tmp_path), make_ctx(tmp_path), facts=facts,
                             run_as=(0, 0))
    plan = as_root.plan(["app"], {}, tmp_path)
    as_root.cleanup()
    assert any("could change its routes" in line for line in plan.not_applied)
    no_ns = limits.prepare(make_policy(tmp_path), make_ctx(tmp_path),
                           facts=replace(facts, cap_sys_admin=False), run_as=(1000, 1000))
    plan = no_ns.plan(["app"], {}, tmp_path)
    assert "info_fd" not in plan.spec and not plan.pass_fds
    assert any(line.endswith("the host's network") for line in plan.not_applied)
    wrapped = limits.prepare(make_policy(tmp_path, sandboxed=True), make_ctx(tmp_path),
                             facts=replace(WITH_BWRAP, cap_sys_admin=False))
    plan = wrapped.plan(["app"], {}, tmp_path)
    assert "--share-net" not in plan.wrapper and "unshare_net" not in plan.spec
    assert wrapped.report()["network"] == "none (bwrap --unshare-net)"


def test_spec_flags_carry_the_pipes_to_the_python_parser() -> None:
    parsed, _ = launcher.parse(["l", *spawn.spec_flags({"info_fd": 5, "block_fd": 6}), "--", "a"])
    assert parsed["info_fd"] == 5 and parsed["block_fd"] == 6


# -- the hand-over -------------------------------------------------------------------


def test_launcher_reports_then_waits_for_release(launcher_head: list[str],  # noqa: F811
                                                 tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for release in (True, False):
        marker.unlink(missing_ok=True)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        flags = spawn.spec_flags({"pdeathsig": 0, "info_fd": info_w, "block_fd": block_r})
        proc = subprocess.Popen([*launcher_head, *flags, "--", "touch", str(marker)],
                                pass_fds=(info_w, block_r), stderr=subprocess.PIPE)
        try:
            os.close(info_w)
            os.close(block_r)
            assert select.select([info_r], [], [], 10)[0], "no info"
            info = json.loads(os.read(info_r, 4096))
            assert info == {"child-pid": proc.pid,
                            "net-namespace": os.stat("/proc/self/ns/net").st_ino}
            assert not marker.exists()  # it waits
            if release:
                os.write(block_w, b"1")
            os.close(block_w)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == (0 if release else 122), err
            assert marker.exists() is release
        finally:
            os.close(info_r)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_attach_refuses_the_host_namespace() -> None:
    with SlirpNetwork(FAKE_SLIRP, nets("192.0.2.2/32")) as net:
        os.write(net.child_fds[0], json.dumps({"child-pid": os.getpid()}).encode())
        with pytest.raises(NetworkSetupError, match="shares the host's network namespace"):
            net.attach(timeout=5)
        net.release()  # no reader: nothing happens
    net.close()  # idempotent


def test_attach_fails_when_the_child_ends_first() -> None:
    net = SlirpNetwork(FAKE_SLIRP, [])
    with pytest.raises(NetworkSetupError, match="ended before"):
        net.attach(timeout=5)  # nobody else holds the info pipe's write end: EOF
    net.close()
    assert net.setup_seconds is None


def test_probe_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    network.probe_slirp.cache_clear()
    monkeypatch.setattr(network, "TOOL_PATH", "/nonexistent")
    try:
        assert network.probe_slirp() == SlirpFacts(None, error="slirp4netns not installed")
    finally:
        network.probe_slirp.cache_clear()
