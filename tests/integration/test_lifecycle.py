"""App lifecycle through ``Runtime``: restart policy with real apps (both modes),
the Python API over installed apps, and the kernel actor SIGKILLed under running apps."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import EstarterError
from estarter.hosting.base import ExitReason
from estarter.paths import log_file
from estarter.runtime import Runtime
from estarter.state import home_key
from estarter.supervision import RestartRules
from tests.apps import wait_until, write_app

FAST = RestartRules(initial_delay=0.2, max_delay=1.0, stable_after=30.0, max_restarts=3,
                    window=60.0)


def named_supervisors(home: Path) -> list[str]:
    import ray

    prefix = f"estarter-sup-{home_key(home)}-"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)]


@pytest.fixture(params=["local", "ray"])
def fast_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    local = request.param == "local"
    if not local:
        request.getfixturevalue("ray_session")
    rt = Runtime.start(local=local, home=tmp_path / "home", rules=FAST)
    try:
        yield rt
    finally:
        rt.shutdown()
        if not local:  # detached supervisors must not outlive their runtime
            assert wait_until(lambda: not named_supervisors(rt.home), 30), \
                named_supervisors(rt.home)


def log_lines(rt: Runtime, app_id: str) -> list[str]:
    return log_file(rt.home, app_id).read_text().splitlines()


def stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_on_failure_restarts_with_growing_delays_then_fails(fast_runtime: Runtime,
                                                            tmp_path: Path) -> None:
    rt = fast_runtime
    folder = write_app(tmp_path, "crashy", "import sys; sys.exit(1)\n", prelude=False,
                       restart="on-failure")
    info = rt.launch(folder).wait(timeout=60)
    assert info is not None and (info.code, info.reason) == (1, ExitReason.CRASHED)
    assert rt.info("crashy")["state"] == "failed"
    lines = log_lines(rt, "crashy")
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+) s", "\n".join(lines))]
    assert delays == [0.2, 0.4, 0.8]
    assert any("giving up" in line for line in lines)
    ends = [stamp(line) for line in lines if "app ended: crashed" in line]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    # Each restart waited at least its delay (an upper bound would measure the load).
    assert len(ends) == 4 and all(gap >= delay for gap, delay in zip(gaps, delays, strict=True))


def test_never_stays_exited(fast_runtime: Runtime, tmp_path: Path) -> None:
    rt = fast_runtime
    folder = write_app(tmp_path, "once", "import sys; sys.exit(1)\n", prelude=False,
                       restart="never")
    info = rt.launch(folder).wait(timeout=60)
    assert info is not None and info.reason is ExitReason.CRASHED
    assert rt.info("once")["state"] == "exited"
    assert not any("restarting" in line for line in log_lines(rt, "once"))


def test_always_restarts_until_stopped(fast_runtime: Runtime, tmp_path: Path) -> None:
    rt = fast_runtime
    folder = write_app(tmp_path, "again", "pass\n", prelude=False, restart="always")
    handle = rt.launch(folder)
    assert wait_until(lambda: sum("app ended: exited" in line
                                  for line in log_lines(rt, "again")) >= 2, 30)
    final = handle.stop(grace=2.0)
    assert final.reason in (ExitReason.STOPPED, ExitReason.EXITED)
    assert rt.info("again")["state"] in ("exited", "failed")


def test_python_api_over_installed_apps(fast_runtime: Runtime, tmp_path: Path) -> None:
    rt = fast_runtime
    src = """
    client.fs.write_text("/appdata/hello.txt", "kept")
    print("written", flush=True)
    """
    folder = write_app(tmp_path, "api", src, permissions=["fs.write", "ui.notification"])
    row = rt.install(folder, grants=["fs.write"])
    assert row["granted"] == ["fs.write", "ui.notification"]
    assert [r["appId"] for r in rt.list_installed()] == ["api"]
    info = rt.launch("api").wait(timeout=60)
    assert info is not None and info.reason is ExitReason.EXITED, rt.logs("api")
    assert any("written" in line for line in rt.logs("api"))
    again = rt.restart("api")
    assert again.wait(timeout=60).reason is ExitReason.EXITED  # type: ignore[union-attr]
    assert [r["appId"] for r in rt.list()] == ["api"]
    data = rt.home / "vfs" / "appdata" / "api" / "hello.txt"
    assert data.read_text() == "kept"
    rt.uninstall("api")
    assert rt.list_installed() == [] and not data.exists()


@pytest.mark.usefixtures("ray_session")
def test_kernel_sigkill_apps_next_calls_succeed_nothing_lost(tmp_path: Path) -> None:
    rt = Runtime.start(home=tmp_path / "home", rules=FAST)
    src = """
    import time
    client.call("registry.set", {"key": "before", "value": 41})
    n = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        n += 1
        got = client.call("registry.get", {"key": "before"})
        client.fs.write_text("/appdata/state.json", json.dumps({"n": n, "got": got}))
        time.sleep(0.02)
    """
    folder = write_app(tmp_path, "steady", src,
                       permissions=["fs.read", "fs.write", "ui.notification"])
    state = rt.home / "vfs" / "appdata" / "steady" / "state.json"

    def count() -> int:
        try:
            return int(json.loads(state.read_text())["n"])
        except (OSError, ValueError):
            return 0

    def kernel_call(name: str, *args: Any) -> Any:
        """The test's own calls: retried while Ray restarts the kernel."""
        result: list[Any] = []

        def attempt() -> bool:
            try:
                result.append(getattr(rt.kernel, name)(*args))
                return True
            except EstarterError:
                return False

        assert wait_until(attempt, 60, interval=0.2), f"kernel.{name} never answered"
        return result[0]

    try:
        before = rt.launch(folder, grants=["fs.write"]).record
        assert wait_until(lambda: count() >= 5, 60)
        old_pid = kernel_call("describe")["pid"]
        os.kill(old_pid, signal.SIGKILL)
        at_kill = count()
        assert wait_until(lambda: count() >= at_kill + 50, 90), "the app's calls stopped"
        assert kernel_call("describe")["pid"] != old_pid  # it really was restarted
        rec = kernel_call("app_info", "steady")
        assert (rec["state"], rec["runId"], rec["pid"]) == ("running", before["runId"],
                                                            before["pid"])
        assert json.loads(state.read_text())["got"]["value"] == 41  # registry kept
        assert "fs.write" in kernel_call("grant", "steady", [])  # grants kept
        stopped = kernel_call("stop", "steady", 2.0)
        assert stopped["exit"]["reason"] == "stopped"
    finally:
        rt.shutdown()
    assert wait_until(lambda: not named_supervisors(rt.home), 30), named_supervisors(rt.home)
