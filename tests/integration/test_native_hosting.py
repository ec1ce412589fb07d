"""Native hosting end to end, in local mode and through Ray (the ``runtime`` fixture)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from estarter.hosting.base import ExitReason
from estarter.runtime import Runtime
from tests.apps import processes_with, reports, wait_until, write_app

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_hello_native_end_to_end(runtime: Runtime) -> None:
    handle = runtime.launch(SAMPLES / "hello-native")
    info = handle.wait(timeout=60)
    assert info is not None
    assert (info.code, info.reason) == (0, ExitReason.EXITED)
    notes = [n for n in runtime.notifications() if n["appId"] == "hello-native"]
    assert [n["title"] for n in notes] == ["Hello from estarter"]


def test_permission_denied_names_permission_and_is_audited(runtime: Runtime,
                                                          tmp_path: Path) -> None:
    src = """
    try:
        client.system.info()
        report(outcome="allowed")
    except ApiError as exc:
        report(outcome="denied", code=exc.code, data=exc.data)
    """
    handle = runtime.launch(write_app(tmp_path, "nosysinfo", src))
    assert handle.wait(timeout=60).reason is ExitReason.EXITED
    assert reports(runtime, "nosysinfo") == [
        {"outcome": "denied", "code": -32001,
         # what the SDK needs to name the permission and the command that grants it
         "data": {"permission": "system.info", "appId": "nosysinfo", "requested": False}}]
    denied = [a for a in runtime.kernel.audit("nosysinfo") if a["decision"] == "denied"]
    assert [(a["permission"], a["method"]) for a in denied] == [("system.info", "system.info")]


def test_granted_permission_is_allowed(runtime: Runtime, tmp_path: Path) -> None:
    src = """
    report(node=client.system.info()["node"] != "")
    """
    folder = write_app(tmp_path, "sysinfo", src, permissions=["ui.notification", "system.info"])
    handle = runtime.launch(folder, grants=["system.info"])
    assert handle.wait(timeout=60).reason is ExitReason.EXITED
    assert reports(runtime, "sysinfo") == [{"node": True}]


def test_crash_keeps_code(runtime: Runtime, tmp_path: Path) -> None:
    handle = runtime.launch(write_app(tmp_path, "crasher", "sys.exit(3)\n"))
    info = handle.wait(timeout=60)
    assert info is not None
    assert (info.code, info.reason) == (3, ExitReason.CRASHED)


def test_unknown_method_is_32601(runtime: Runtime, tmp_path: Path) -> None:
    src = """
    try:
        client.call("no.such.method", {})
    except ApiError as exc:
        report(code=exc.code)
    """
    handle = runtime.launch(write_app(tmp_path, "unknown", src))
    assert handle.wait(timeout=60).reason is ExitReason.EXITED
    assert reports(runtime, "unknown") == [{"code": -32601}]


def test_stop_kills_the_whole_tree(runtime: Runtime, tmp_path: Path) -> None:
    marker = f"estarter-tree-{os.getpid()}-{id(runtime)}"
    src = f"""
    import subprocess, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"])
    report(started=True)
    client.on_shutdown(lambda grace: None)  # ignore the polite request: force the kill
    time.sleep(300)
    """
    handle = runtime.launch(write_app(tmp_path, "tree", src))
    assert wait_until(lambda: reports(runtime, "tree"), 60)
    assert wait_until(lambda: processes_with(marker), 10)
    info = handle.stop(grace=0.5)
    assert info.reason is ExitReason.STOPPED
    assert wait_until(lambda: not processes_with(marker), 5), "a child outlived stop"


def test_protocol_garbage_ends_app_others_keep_serving(runtime: Runtime,
                                                       tmp_path: Path) -> None:
    calm = """
    import time
    report(phase="up")
    while True:
        client.system.ping()
        time.sleep(0.05)
    """
    calm_handle = runtime.launch(write_app(tmp_path, "calm", calm))
    assert wait_until(lambda: reports(runtime, "calm"), 60)
    # Text that is not a frame is the app's stdout (logged); a malformed frame header
    # after it ends the app.
    garbage = """
    import os, time
    os.write(1, b"this is not a frame\\r\\n\\r\\n" * 100)
    os.write(1, b"Content-Length: many\\r\\n\\r\\n")
    time.sleep(30)
    """
    bad = runtime.launch(write_app(tmp_path, "garbage", garbage, prelude=False))
    info = bad.wait(timeout=30)
    assert info is not None and info.reason is ExitReason.PROTOCOL_VIOLATION
    assert any(" stdout this is not a frame" in line for line in runtime.logs("garbage"))
    huge = """
    import os, time
    os.write(1, b"Content-Length: 104857600\\r\\n\\r\\n" + b"x" * 65536)
    time.sleep(30)
    """
    big = runtime.launch(write_app(tmp_path, "huge", huge, prelude=False))
    info = big.wait(timeout=30)
    assert info is not None and info.reason is ExitReason.PROTOCOL_VIOLATION
    assert calm_handle.info()["state"] == "running"
    calm_handle.stop(grace=0.5)


def test_app_that_never_reads_stdin_does_not_block(runtime: Runtime, tmp_path: Path) -> None:
    # Asks for large answers and never reads them: the answers pile up in the
    # supervisor's bounded queue (the pipe holds only 64 KiB), the app is ended as a
    # protocol violation, and the runtime keeps serving another app meanwhile.
    big = runtime.home / "vfs" / "appdata" / "deaf" / "big.txt"
    big.parent.mkdir(parents=True)
    big.write_text("x" * (4 * 1024 * 1024))
    src = """
    import os, json, time
    for i in range(12):
        req = json.dumps({"jsonrpc": "2.0", "id": i, "method": "fs.read",
                          "params": {"path": "/appdata/big.txt"}}).encode()
        os.write(1, b"Content-Length: %d\\r\\n\\r\\n" % len(req) + req)
    time.sleep(60)
    """
    handle = runtime.launch(write_app(tmp_path, "deaf", src, prelude=False))
    other = runtime.launch(SAMPLES / "hello-native")
    other_info = other.wait(timeout=60)
    assert other_info is not None and other_info.reason is ExitReason.EXITED
    info = handle.wait(timeout=60)
    assert info is not None and info.reason is ExitReason.PROTOCOL_VIOLATION
    assert "does not read its stdin" in info.detail


def test_entry_outside_folder_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    from estarter.errors import ManifestError

    outside = tmp_path / "outside.py"
    outside.write_text("print('escaped')\n")
    folder = tmp_path / "escape"
    folder.mkdir()
    (folder / "link.py").symlink_to(outside)
    (folder / "manifest.json").write_text(
        '{"id": "escape", "runtime": "python", "entry": "link.py"}')
    with pytest.raises(ManifestError, match="outside the app folder"):
        runtime.launch(folder)


@pytest.mark.parametrize("runtime", ["ray"], indirect=True)
def test_sigkill_of_supervisor_worker_leaves_no_app_process(runtime: Runtime,
                                                           tmp_path: Path) -> None:
    marker = f"estarter-orphan-{os.getpid()}"
    src = f"""
    import os, subprocess, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"])
    if os.fork() == 0:  # a double-forked daemon in a session of its own
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)",
                                      "{marker}-daemon"])
        os._exit(0)
    report(started=True)
    time.sleep(300)
    """
    handle = runtime.launch(write_app(tmp_path, "orphan", src))
    assert wait_until(lambda: reports(runtime, "orphan"), 60)
    assert wait_until(lambda: len(processes_with(marker)) == 2, 10)
    app_pid = handle.info()["host"]["pid"]
    import psutil

    launcher = psutil.Process(app_pid)
    supervisor_pid = launcher.ppid()
    assert "ray" in " ".join(psutil.Process(supervisor_pid).cmdline()).lower()
    os.kill(supervisor_pid, signal.SIGKILL)
    assert wait_until(lambda: not processes_with(marker) and not psutil.pid_exists(app_pid),
                      30), "an app process outlived its supervisor by 30 s"
    info = handle.wait(timeout=30)
    assert info is not None and info.reason is ExitReason.SUPERVISOR_LOST
