"""The wasm samples run through WasmAppHost with a fake kernel; hello-wasm rebuilds exactly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from estarter.hosting.base import ExitReason, HostContext
from estarter.hosting.wasm_host import WasmAppHost
from estarter.manifest import load_manifest
from estarter.policy import SandboxPolicy

from .test_wasm_host import FakeKernel, Recorder

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.mark.parametrize("sample", ["hello-wasm", "hello-wat"])
def test_sample_notifies_and_exits_0(tmp_path: Path, sample: str) -> None:
    app_dir = SAMPLES / sample
    m = load_manifest(app_dir)
    policy = SandboxPolicy.from_manifest(m, app_dir, granted=m.requested_permissions)
    kernel, rec = FakeKernel(policy.granted), Recorder()
    ctx = HostContext(api=kernel.api, log=rec.log, on_exit=rec.on_exit, home=tmp_path,
                      appdata=tmp_path / "appdata")
    host = WasmAppHost(policy, ctx)
    try:
        host.start()
        info = host.wait(10)
    finally:
        host.close()
    assert info is not None
    assert (info.code, info.reason) == (0, ExitReason.EXITED), rec.text()
    assert rec.exits == [info]
    assert [m for m, _ in kernel.calls] == ["system.ping", "ui.notify"]
    assert len(kernel.notifications) == 1
    assert kernel.notifications[0]["title"] == sample
    assert '"pong":true' in rec.text()


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang for wasm32-wasi is absent")
def test_hello_wasm_rebuilds_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "app.wasm"
    subprocess.run(["sh", str(SAMPLES / "hello-wasm" / "build.sh"), str(out)], check=True,
                   timeout=120, capture_output=True)
    committed = (SAMPLES / "hello-wasm" / "app.wasm").read_bytes()
    assert out.read_bytes() == committed, "app.wasm is not what app.c builds to: run build.sh"
