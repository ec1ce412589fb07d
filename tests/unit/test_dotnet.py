"""``runtime: dotnet``: ``dotnet ENTRY`` where a .NET host is on PATH, refused with a
clear message where none is, the host's install read-only in the sandbox."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from estarter.apps import install
from estarter.errors import NotSupported
from estarter.hosting import dotnet_app
from estarter.hosting.factory import create_host
from estarter.hosting.limits.sandbox import bwrap_argv
from estarter.hosting.process_host import ProcessHost, app_command
from estarter.manifest import RuntimeKind
from estarter.policy import SandboxPolicy
from estarter.store import AppStore

from .test_limits_cgroups import make_ctx, make_policy


def dotnet_policy(tmp_path: Path, **over: object) -> SandboxPolicy:
    (tmp_path / "app.dll").write_text("not really an assembly")
    policy = make_policy(tmp_path, runtime=RuntimeKind.DOTNET, entry=tmp_path / "app.dll",
                         args=("--hello", "a b"))
    return replace(policy, **over)  # type: ignore[arg-type]


@pytest.fixture
def no_dotnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def fake_dotnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable named ``dotnet`` on PATH, reached through a symlink as
    /usr/bin/dotnet is; the command must name its real path."""
    install_dir = tmp_path / "opt-dotnet"
    install_dir.mkdir()
    real = install_dir / "dotnet"
    real.write_text("#!/bin/sh\necho \"fake dotnet: $*\" >&2\n")
    real.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dotnet").symlink_to(real)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return real


def test_command_is_dotnet_entry_args(tmp_path: Path, fake_dotnet: Path) -> None:
    policy = dotnet_policy(tmp_path)
    assert dotnet_app.host() == fake_dotnet
    assert app_command(policy) == [str(fake_dotnet), str(tmp_path / "app.dll"),
                                   "--hello", "a b"]
    assert isinstance(create_host(policy, make_ctx(tmp_path)), ProcessHost)


def test_sandbox_shows_the_dotnet_install_read_only(tmp_path: Path, fake_dotnet: Path) -> None:
    argv = bwrap_argv("/usr/bin/bwrap", dotnet_policy(tmp_path, sandboxed=True),
                      make_ctx(tmp_path))
    folder = str(fake_dotnet.parent)
    i = argv.index(folder)
    assert argv[i - 1:i + 2] == ["--ro-bind", folder, folder]
    assert dotnet_app.mounts(Path("/usr/share/dotnet/dotnet")) == []  # /usr is there
    python = bwrap_argv("/usr/bin/bwrap", make_policy(tmp_path, sandboxed=True),
                        make_ctx(tmp_path))
    assert folder not in python


def test_no_dotnet_host_is_refused_with_a_clear_message(tmp_path: Path,
                                                        no_dotnet: None) -> None:
    assert dotnet_app.host() is None
    with pytest.raises(NotSupported) as info:
        app_command(dotnet_policy(tmp_path))
    assert str(info.value) == dotnet_app.MISSING
    assert "`dotnet` is not on PATH" in dotnet_app.MISSING
    argv = bwrap_argv("/usr/bin/bwrap", dotnet_policy(tmp_path, sandboxed=True),
                      make_ctx(tmp_path))
    assert str(tmp_path / "bin") not in argv


def write_dotnet_app(root: Path) -> Path:
    folder = root / "dn"
    folder.mkdir()
    (folder / "app.dll").write_text("x")
    (folder / "manifest.json").write_text(json.dumps(
        {"id": "dn", "runtime": "dotnet", "entry": "app.dll", "minApiVersion": 1}))
    return folder


def test_install_refuses_dotnet_without_a_host(tmp_path: Path, no_dotnet: None) -> None:
    folder = write_dotnet_app(tmp_path)
    with pytest.raises(NotSupported, match=r"needs a \.NET host"):
        install(tmp_path / "home", folder, [], False)
    assert AppStore(tmp_path / "home").list() == []


def test_install_takes_dotnet_with_a_host(tmp_path: Path, fake_dotnet: Path) -> None:
    row = install(tmp_path / "home", write_dotnet_app(tmp_path), [], False)
    assert row["appId"] == "dn"
    assert [m.id for m in AppStore(tmp_path / "home").list()] == ["dn"]
