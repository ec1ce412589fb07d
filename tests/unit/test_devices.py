"""The original's Camera, Mic, Location and Overlay permissions: granted only where
the host has the device, refused at grant time with the reason everywhere else."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from estarter import devices
from estarter import permissions as perms
from estarter.apps import install
from estarter.cli import app
from estarter.errors import NotSupported
from estarter.kernel.permissions import PermissionManager
from estarter.store import AppStore

ORIGINAL = {"Camera": "device.camera", "Mic": "device.mic", "Location": "device.location",
            "Overlay": "ui.overlay"}
REASONS = {"device.camera": "no camera", "device.mic": "no microphone",
           "device.location": "no location provider", "ui.overlay": "no display server"}


def test_original_names_are_known_device_permissions_in_no_bundle() -> None:
    for alias, name in ORIGINAL.items():
        assert perms.normalize(alias) == {name} and name in perms.ALL
        assert name in perms.DEVICES and perms.describe(alias) == perms.MEANINGS[name]
    for bundle in perms.BUNDLES.values():
        assert not bundle & perms.DEVICES


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX)
    try:
        yield sock
    finally:
        sock.close()


def test_probes_on_a_fake_host(tmp_path: Path, unix_socket: socket.socket) -> None:
    root = tmp_path / "host"
    (root / "dev" / "snd").mkdir(parents=True)
    env: dict[str, str] = {}
    for name, why in REASONS.items():
        found = devices.probe(name, root, env)
        assert not found.available and why in found.reason
    # Character devices (a symlink to /dev/null is one), sockets for gpsd and X11.
    (root / "dev" / "video0").symlink_to("/dev/null")
    (root / "dev" / "snd" / "pcmC0D0p").symlink_to("/dev/null")  # playback: not a mic
    (root / "dev" / "videoX").write_text("a file is not a device")
    assert devices.probe("device.camera", root, env).paths == (root / "dev" / "video0",)
    assert not devices.probe("device.mic", root, env).available
    (root / "dev" / "snd" / "pcmC0D0c").symlink_to("/dev/null")
    assert devices.probe("device.mic", root, env).available
    (root / "run").mkdir()
    unix_socket.bind(str(root / "run" / "gpsd.sock"))
    assert devices.probe("device.location", root, env).available
    (root / "tmp" / ".X11-unix").mkdir(parents=True)
    (root / "tmp" / ".X11-unix" / "X3").symlink_to(root / "run" / "gpsd.sock")
    assert not devices.probe("ui.overlay", root, {"DISPLAY": ":2"}).available
    assert devices.probe("ui.overlay", root, {"DISPLAY": ":3.0"}).available
    assert devices.refusals(["fs.read", *ORIGINAL.values()], root, {}) == {
        "ui.overlay": "ui.overlay cannot be granted: " + devices.probe("ui.overlay", root,
                                                                       {}).reason}
    with pytest.raises(ValueError):
        devices.probe("fs.read")


def test_grant_where_the_device_exists(tmp_path: Path) -> None:
    pm = PermissionManager(tmp_path / "state.db", device_refusals=lambda _: {})
    try:
        pm.register("cam", {"fs.read", "device.camera"})
        assert pm.grant("cam", ["Camera"]) == {"fs.read", "device.camera"}
    finally:
        pm.close()


@pytest.mark.parametrize("alias", sorted(ORIGINAL))
def test_grant_on_this_host_follows_its_devices(tmp_path: Path, alias: str) -> None:
    """This machine has no camera, microphone, gpsd or display: each grant is refused
    with the reason, and nothing is granted (where a device exists, it is granted)."""
    name = ORIGINAL[alias]
    here = devices.probe(name)
    pm = PermissionManager(tmp_path / "state.db")
    try:
        pm.register("orig", {"fs.read", "fs.write", name})
        if here.available:
            assert name in pm.grant("orig", [alias, "fs.write"])
            return
        with pytest.raises(NotSupported) as info:
            pm.grant("orig", ["fs.write", alias])
        assert f"{name} cannot be granted: {here.reason}" == str(info.value)
        assert REASONS[name] in str(info.value)
        assert info.value.data["permission"] == name
        assert pm.granted("orig") == {"fs.read"} and pm.grants("orig") == {}
    finally:
        pm.close()


def make_app(root: Path, permissions: list[str]) -> Path:
    folder = root / "devapp"
    folder.mkdir()
    (folder / "app.py").write_text("print('hi')\n")
    (folder / "manifest.json").write_text(json.dumps(
        {"id": "devapp", "runtime": "python", "entry": "app.py",
         "permissions": permissions}))
    return folder


def test_install_refuses_a_grant_of_a_missing_device_before_anything_lands(
        tmp_path: Path) -> None:
    if devices.probe("device.camera").available:
        pytest.skip("this host has a camera")
    folder = make_app(tmp_path, ["fs.read", "Camera"])
    with pytest.raises(NotSupported, match="no camera"):
        install(tmp_path / "home", folder, ["Camera"], False)
    assert AppStore(tmp_path / "home").list() == []
    result = CliRunner().invoke(app, ["install", str(folder), "--grant", "Camera",
                                      "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert "device.camera cannot be granted: this host has no camera" in result.output


def test_grant_all_grants_the_rest_and_reports_the_refused(tmp_path: Path) -> None:
    refused = devices.refusals(ORIGINAL.values())
    folder = make_app(tmp_path, ["fs.read", "fs.write", *ORIGINAL])
    row = install(tmp_path / "home", folder, [], True)
    assert "fs.write" in row["granted"]
    assert set(row["granted"]).isdisjoint(refused)
    assert row.get("refused", {}) == refused
    assert not any(p in (row["grantCommand"] or "") for p in refused)
    result = CliRunner().invoke(app, ["permissions", "grant", "devapp", "Overlay",
                                      "--home", str(tmp_path / "home")])
    if "ui.overlay" in refused:
        assert result.exit_code == 2
        assert "ui.overlay cannot be granted: this host has no display server" in (
            result.output)
    else:
        assert result.exit_code == 0 and "ui.overlay" in result.output


def test_the_sandbox_shows_granted_devices_only(tmp_path: Path,
                                                unix_socket: socket.socket) -> None:
    root = tmp_path / "host"
    (root / "dev" / "snd").mkdir(parents=True)
    (root / "dev" / "video0").symlink_to("/dev/null")
    (root / "dev" / "snd" / "pcmC0D0c").symlink_to("/dev/null")
    (root / "run").mkdir()
    unix_socket.bind(str(root / "run" / "gpsd.sock"))
    (root / "tmp" / ".X11-unix").mkdir(parents=True)
    (root / "tmp" / ".X11-unix" / "X7").symlink_to(root / "run" / "gpsd.sock")
    env = {"DISPLAY": ":7"}
    assert devices.sandbox_args({"fs.read", "net.access"}, root, env) == []
    assert devices.sandbox_args({"device.camera"}, root, env) == [
        "--dev-bind", str(root / "dev" / "video0"), "/dev/video0"]
    assert devices.sandbox_args({"device.mic"}, root, env) == [
        "--dev-bind", str(root / "dev" / "snd"), "/dev/snd"]
    assert devices.sandbox_args({"device.location"}, root, env) == [
        "--ro-bind", str(root / "run" / "gpsd.sock"), "/run/gpsd.sock",
        "--setenv", "GPSD_SOCKET", "/run/gpsd.sock"]
    assert devices.sandbox_args({"ui.overlay"}, root, env) == [
        "--ro-bind", str(root / "tmp" / ".X11-unix" / "X7"), "/tmp/.X11-unix/X7",
        "--setenv", "DISPLAY", ":7"]
    # Granted once, gone since: nothing is bound.
    assert devices.sandbox_args({"ui.overlay"}, root, {}) == []


def test_bwrap_argv_carries_the_granted_devices(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from estarter.hosting.limits import sandbox

    from .test_limits_cgroups import make_ctx, make_policy

    seen: list[frozenset[str]] = []

    def fake(granted: frozenset[str]) -> list[str]:
        seen.append(frozenset(granted))
        return ["--dev-bind", "/dev/video9", "/dev/video9"]

    monkeypatch.setattr(sandbox.devices, "sandbox_args", fake)
    policy = make_policy(tmp_path, sandboxed=True,
                         granted=frozenset({"fs.read", "device.camera"}))
    argv = sandbox.bwrap_argv("/usr/bin/bwrap", policy, make_ctx(tmp_path))
    i = argv.index("/dev/video9")
    assert argv[i - 1] == "--dev-bind" and argv.index("/dev") < i  # after the fresh /dev
    assert seen == [frozenset({"fs.read", "device.camera"})]


def test_the_console_refuses_a_device_grant_with_the_reason(tmp_path: Path) -> None:
    """The console's grant (RuntimeBackend.grant) is PermissionManager.grant, as
    here; its refusal is a 400 with the reason, not a 500 and not a grant."""
    from starlette.testclient import TestClient

    from tests.console_fakes import TOKEN, FakeBackend, make_console

    pm = PermissionManager(tmp_path / "state.db")

    class Backend(FakeBackend):
        def grant(self, app_id: str, permission: str) -> list[str]:
            return sorted(pm.grant(app_id, [permission], by="console"))

    backend = Backend(tmp_path / "home")
    backend.home.mkdir()
    backend.add_app("orig", "Original")
    pm.register("orig", {"fs.read", *ORIGINAL.values()})
    try:
        with TestClient(make_console(backend), base_url="http://127.0.0.1:8470") as client:
            for alias, name in ORIGINAL.items():
                resp = client.post(f"/api/apps/orig/permissions/{alias}/grant",
                                   headers={"Authorization": f"Bearer {TOKEN}"})
                here = devices.probe(name)
                if here.available:
                    assert name in resp.json()["granted"]
                else:
                    assert resp.status_code == 400
                    assert resp.json() == {"error": f"{name} cannot be granted: "
                                                    f"{here.reason}"}
    finally:
        pm.close()
