"""Wasm apps through the whole runtime (supervisor actor and kernel), both modes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from estarter.hosting.base import ExitReason
from estarter.runtime import Runtime
from tests.apps import wait_until

SPIN = """(module
  (import "estarter" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "spinning")
  (func (export "_start")
    (call $log (i32.const 1) (i32.const 0) (i32.const 8))
    (loop $forever (br $forever))))
"""

# Calls system.info (not granted) and logs the response JSON.
DENIED = """(module
  (import "estarter" "log" (func $log (param i32 i32 i32)))
  (import "estarter" "api_call" (func $call (param i32 i32) (result i32)))
  (import "estarter" "api_response" (func $resp (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\\"method\\":\\"system.info\\",\\"params\\":{}}")
  (func (export "_start")
    (local $n i32)
    (drop (call $call (i32.const 0) (i32.const 36)))
    (local.set $n (call $resp (i32.const 1024) (i32.const 1024)))
    (call $log (i32.const 1) (i32.const 1024) (local.get $n))))
"""


def wasm_app(root: Path, app_id: str, wat: str, **manifest: Any) -> Path:
    folder = root / app_id
    folder.mkdir(parents=True)
    (folder / "app.wat").write_text(wat)
    (folder / "manifest.json").write_text(json.dumps(
        {"id": app_id, "runtime": "wasm", "entry": "app.wat", **manifest}))
    return folder


def logged(rt: Runtime, app_id: str) -> list[str]:
    return [e["message"] for e in rt.events(0, 0, app_id)["events"] if e["event"] == "log"]


def test_spinning_guest_is_stopped_and_its_supervisor_answers(runtime: Runtime,
                                                              tmp_path: Path) -> None:
    handle = runtime.launch(wasm_app(tmp_path, "spin", SPIN))
    assert wait_until(lambda: "spinning" in logged(runtime, "spin"), 30)
    for _ in range(3):  # the supervisor answers while its guest spins
        assert handle.info()["state"] == "running"
    t0 = time.monotonic()
    info = handle.stop(grace=1)
    assert info.reason is ExitReason.STOPPED
    assert time.monotonic() - t0 < 60  # the epoch interrupt ended it: no hang (loaded host)


def test_max_runtime_interrupts_a_spinning_guest(runtime: Runtime, tmp_path: Path) -> None:
    t0 = time.monotonic()
    handle = runtime.launch(wasm_app(tmp_path, "spin-timeout", SPIN, maxRuntimeSeconds=1))
    info = handle.wait(timeout=30)
    elapsed = time.monotonic() - t0
    assert info is not None and info.reason is ExitReason.TIMEOUT
    assert elapsed >= 1  # never before the deadline; after it, as soon as a loaded host can


def test_every_api_call_is_permission_checked(runtime: Runtime, tmp_path: Path) -> None:
    handle = runtime.launch(wasm_app(tmp_path, "wasm-denied", DENIED,
                                     permissions=["ui.notification"]))
    info = handle.wait(timeout=30)
    assert info is not None and info.reason is ExitReason.EXITED
    assert wait_until(lambda: any("-32001" in line for line in logged(runtime, "wasm-denied")),
                      10)
    response = next(json.loads(line) for line in logged(runtime, "wasm-denied")
                    if line.startswith("{"))
    assert response["error"]["code"] == -32001
    assert response["error"]["data"] == {"permission": "system.info", "appId": "wasm-denied",
                                         "requested": False}
    denied = [a for a in runtime.kernel.audit("wasm-denied") if a["decision"] == "denied"]
    assert [a["permission"] for a in denied] == ["system.info"]
