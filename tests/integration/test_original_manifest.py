"""An original eStarter manifest (the seed's phase 1 example with ``runtime: dotnet``,
an integer ``minApiVersion`` and the Camera, Mic, Location and Overlay flags) in both
modes: it loads; the device permissions are granted only where the host has the
device (refused with the reason here, through the permissions actor too); without a
.NET host, install and launch refuse it with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from estarter import devices
from estarter.errors import NotSupported
from estarter.hosting import dotnet_app
from estarter.manifest import RuntimeKind, load_manifest
from estarter.runtime import Runtime

FIXTURE = Path(__file__).parent.parent / "fixtures" / "original-estarter"
DEVICE_FLAGS = {"Camera": "device.camera", "Mic": "device.mic",
                "Location": "device.location", "Overlay": "ui.overlay"}


@pytest.fixture
def original(tmp_path: Path) -> Path:
    folder = tmp_path / "original"
    shutil.copytree(FIXTURE, folder)
    return folder


def test_the_original_manifest_loads(original: Path) -> None:
    manifest = load_manifest(original)
    assert manifest.min_api_version == 1 and manifest.runtime is RuntimeKind.DOTNET
    assert set(DEVICE_FLAGS.values()) <= manifest.requested_permissions


def test_original_manifest_gets_the_devices_and_runtime_this_host_has(
        runtime: Runtime, original: Path) -> None:
    if dotnet_app.host() is not None:
        pytest.skip("this host has a .NET host: the refusal cannot be seen here")
    with pytest.raises(NotSupported) as launched:
        runtime.launch(original)
    assert str(launched.value) == dotnet_app.MISSING
    with pytest.raises(NotSupported) as installed:
        runtime.install(original)
    assert str(installed.value) == dotnet_app.MISSING
    assert runtime.list() == []
    authority = runtime.permission_authority()
    authority.register("hello-original", load_manifest(original).requested_permissions)
    for flag, name in DEVICE_FLAGS.items():
        here = devices.probe(name)
        if here.available:
            assert name in authority.grant("hello-original", [flag], "test")
            continue
        with pytest.raises(NotSupported) as refused:
            authority.grant("hello-original", [flag], "test")
        assert str(refused.value) == f"{name} cannot be granted: {here.reason}"
    assert set(authority.granted("hello-original")) == {
        "fs.read", "ui.notification", *(n for n in DEVICE_FLAGS.values()
                                        if devices.probe(n).available)}
