"""SandboxPolicy.from_manifest and the host factory."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import NotSupported
from estarter.hosting.base import HostContext
from estarter.hosting.factory import create_host
from estarter.hosting.process_host import ProcessHost
from estarter.manifest import AppManifest, RestartPolicy, RuntimeKind
from estarter.policy import MIB, SandboxPolicy


def manifest(**extra: Any) -> AppManifest:
    return AppManifest.model_validate({"id": "demo", "entry": "app.py", **extra})


def ctx(tmp_path: Path) -> HostContext:
    def api(method: str, params: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        fut.set_result(None)
        return fut

    return HostContext(api=api, log=lambda level, msg: None, on_exit=lambda info: None,
                       home=tmp_path, appdata=tmp_path / "appdata")


def test_policy_from_manifest(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    m = manifest(memoryLimitMb=64, maxProcesses=4, cpuQuota=20, networkAllowed=True,
                 maxRuntimeSeconds=2, diskQuotaMb=5, restart="always",
                 permissions=["fs.read", "system.info"], args=["x"])
    p = SandboxPolicy.from_manifest(m, tmp_path)
    assert p.entry == (tmp_path / "app.py").resolve()
    assert (p.memory_limit_bytes, p.max_processes, p.cpu_quota_percent) == (64 * MIB, 4, 20)
    assert p.network_allowed and p.max_runtime_seconds == 2.0
    assert p.disk_quota_bytes == 5 * MIB and p.restart is RestartPolicy.ALWAYS
    # networkAllowed asks for net.access: the flag counts only once it is granted
    assert p.args == ("x",) and p.requested == {"fs.read", "system.info", "net.access"}
    assert p.granted == {"fs.read"}  # basic only, without a grant
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_processes = 9  # type: ignore[misc]


def test_policy_never_grants_what_was_not_requested(tmp_path: Path) -> None:
    p = SandboxPolicy.from_manifest(manifest(permissions=["fs.read"]), tmp_path,
                                    granted=frozenset({"fs.read", "admin"}))
    assert p.granted == {"fs.read"}
    assert p.with_grants(frozenset({"fs.write"})).granted == frozenset()


@pytest.mark.parametrize("runtime", ["native", "python"])
def test_factory_gives_process_host(tmp_path: Path, runtime: str) -> None:
    p = SandboxPolicy.from_manifest(manifest(runtime=runtime), tmp_path)
    host = create_host(p, ctx(tmp_path))
    assert isinstance(host, ProcessHost)
    host.close()


def test_factory_gives_wasm_host(tmp_path: Path) -> None:
    from estarter.hosting.wasm_host import WasmAppHost

    p = SandboxPolicy.from_manifest(manifest(runtime="wasm", entry="app.wasm"), tmp_path)
    host = create_host(p, ctx(tmp_path))
    assert isinstance(host, WasmAppHost)
    host.close()


def test_factory_refuses_unknown_runtime(tmp_path: Path) -> None:
    p = dataclasses.replace(SandboxPolicy.from_manifest(manifest(), tmp_path),
                            runtime="java")  # type: ignore[arg-type]
    with pytest.raises(NotSupported):
        create_host(p, ctx(tmp_path))
    assert RuntimeKind("wasm") is RuntimeKind.WASM
