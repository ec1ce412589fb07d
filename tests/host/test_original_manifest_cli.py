"""The seed's original eStarter manifest through the ``estarter`` command, as an
operator meets it: it checks; without a .NET host install and run refuse it with a
clear line; with one (a fake ``dotnet`` on PATH) it installs, the device permissions
this host has no device for are refused at grant time with the reason, and
``estarter run`` runs ``dotnet ENTRY`` in the sandbox (bwrap) to exit 0."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from estarter import devices
from estarter.hosting import dotnet_app

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "original-estarter"
ESTARTER = Path(sys.executable).parent / "estarter"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
DEVICE_FLAGS = {"Camera": "device.camera", "Mic": "device.mic",
                "Location": "device.location", "Overlay": "ui.overlay"}


def estarter(home: Path, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path, "ESTARTER_HOME": str(home)}
    return subprocess.run([str(ESTARTER), *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def original(tmp_path: Path) -> Path:
    folder = tmp_path / "original"
    shutil.copytree(FIXTURE, folder)
    return folder


@pytest.fixture
def fake_dotnet_path(tmp_path: Path) -> str:
    """PATH with a ``dotnet`` that says what it was asked to run, then exits 0."""
    bindir = tmp_path / "dotnet-host"
    bindir.mkdir()
    fake = bindir / "dotnet"
    fake.write_text('#!/bin/sh\necho "fake dotnet: uid $(id -u): $*" >&2\nexit 0\n')
    fake.chmod(0o755)
    return f"{bindir}:{SYSTEM_PATH}"


def test_without_a_dotnet_host_install_and_run_refuse(tmp_path: Path, original: Path) -> None:
    if dotnet_app.host(SYSTEM_PATH) is not None:
        pytest.skip("this host has a .NET host")
    checked = estarter(tmp_path / "home", SYSTEM_PATH, "manifest", "check", str(original))
    assert checked.returncode == 0, checked.stderr
    shown = json.loads(checked.stdout)
    assert (shown["minApiVersion"], shown["runtime"]) == (1, "dotnet")
    for args in (["install", str(original)], ["run", "--local", str(original)]):
        done = estarter(tmp_path / "home", SYSTEM_PATH, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.strip() == f"estarter: error: {dotnet_app.MISSING}"


def test_with_a_dotnet_host_it_installs_refuses_absent_devices_and_runs(
        tmp_path: Path, original: Path, fake_dotnet_path: str) -> None:
    home = tmp_path / "home"
    refused = devices.refusals(DEVICE_FLAGS.values())
    if "device.camera" in refused:
        done = estarter(home, fake_dotnet_path, "install", str(original), "--grant", "Camera")
        assert done.returncode == 2
        assert refused["device.camera"] in done.stderr
        assert "no camera" in done.stderr
    done = estarter(home, fake_dotnet_path, "install", str(original), "--grant-all",
                    "--json")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["refused"] == refused if refused else "refused" not in row
    assert set(row["granted"]) == {"fs.read", "ui.notification",
                                   *(set(DEVICE_FLAGS.values()) - set(refused))}
    for flag, name in DEVICE_FLAGS.items():
        if name in refused:
            done = estarter(home, fake_dotnet_path, "permissions", "grant",
                            "hello-original", flag)
            assert done.returncode == 2
            assert done.stderr.strip() == f"estarter: {refused[name]}"
    ran = estarter(home, fake_dotnet_path, "run", "--local", "hello-original")
    assert ran.returncode == 0, ran.stderr
    # Run by the fake host as the sandbox's user (65534), with the installed entry as
    # its one argument.
    found = re.search(r"fake dotnet: uid (\d+): (\S+)$", ran.stderr, re.MULTILINE)
    assert found is not None, ran.stderr
    assert found.group(1) == "65534"
    entry = Path(found.group(2))
    assert entry.name == "app.dll" and entry.is_relative_to(home)
    assert entry.read_bytes() == (original / "app.dll").read_bytes()
    assert "exited: exited, code 0" in ran.stderr
