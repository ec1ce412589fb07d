"""samples/hello-c (a native app in C on sdk/c) under the sandbox, packed, both modes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from estarter.hosting import limits
from estarter.hosting.base import ExitReason
from estarter.packaging import pack
from estarter.runtime import Runtime
from tests.apps import wait_until

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "hello-c"
FACTS = limits.detect()


@pytest.fixture(scope="module")
def hello_c_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample built from source now (its build.sh, the system compiler) and packed."""
    folder = tmp_path_factory.mktemp("hello-c") / "hello-c"
    folder.mkdir()
    shutil.copy(SAMPLE / "manifest.json", folder / "manifest.json")
    subprocess.run(["sh", str(SAMPLE / "build.sh"), str(folder / "app")], check=True,
                   timeout=300, capture_output=True)
    return pack(folder, folder.parent / "hello-c.app.zip")


def logged(rt: Runtime, app_id: str) -> list[str]:
    return [e["message"] for e in rt.events(0, 0, app_id)["events"] if e["event"] == "log"]


def test_hello_c_exits_0_in_its_sandbox(runtime: Runtime, hello_c_zip: Path) -> None:
    handle = runtime.launch(hello_c_zip, grants=["system.info"])
    info = handle.wait(timeout=120)
    assert info is not None
    assert (info.code, info.reason) == (0, ExitReason.EXITED), logged(runtime, "hello-c")
    notes = [n for n in runtime.notifications() if n["appId"] == "hello-c"]
    assert [(n["title"], n["message"]) for n in notes] == [("hello-c", "Hello from C!")]
    assert wait_until(lambda: "stdout still works: it goes to the app's log"
                      in logged(runtime, "hello-c"), 60)
    lines = logged(runtime, "hello-c")
    assert "hello from C: ping answered" in lines
    # system.info was granted: its result came back through the C helper
    assert any(line.startswith('system.info: {"os":') for line in lines), lines
    if os.geteuid() == 0 and FACTS.bwrap is not None:
        sandbox = next(line for line in lines if line.startswith("sandbox: "))
        assert "uid=65534" in sandbox
        if FACTS.seccomp.ok:
            assert "seccomp=2" in sandbox
