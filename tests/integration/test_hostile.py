"""Hostile apps through the whole runtime, in both modes: a manifest cannot widen
its own sandbox; the operator's grant can, and only as far as DESIGN says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from estarter.errors import PermissionDenied
from estarter.runtime import Runtime

from ..apps import reports, wait_until, write_app

PROBE = """
import os
report(uid=os.getuid(), capeff=[l.split()[1] for l in open("/proc/self/status")
                                if l.startswith("CapEff")][0])
"""


@pytest.mark.parametrize("flags,needs", [
    ({"sandboxed": False, "permissions": ["admin"]}, "admin"),
    ({"networkAllowed": True}, "net.access"),
])
def test_manifest_flag_alone_is_refused(runtime: Runtime, tmp_path: Path,
                                         flags: dict[str, object], needs: str) -> None:
    app = write_app(tmp_path, "hostile-flag", PROBE, **flags)
    with pytest.raises(PermissionDenied, match=f"needs the {needs} permission granted"):
        runtime.launch(app)
    assert [p for p in runtime.list() if p.get("appId") == "hostile-flag"
            and p.get("state") == "running"] == []


def test_admin_grant_runs_unsandboxed_without_capabilities(runtime: Runtime,
                                                            tmp_path: Path) -> None:
    app = write_app(tmp_path, "hostile-admin", PROBE, sandboxed=False,
                    permissions=["admin", "ui.notification"])
    handle = runtime.launch(app, grants=["admin"])
    exit_info = handle.wait(timeout=60)
    assert exit_info.code == 0, exit_info
    assert wait_until(lambda: reports(runtime, "hostile-admin"), 30)
    got = reports(runtime, "hostile-admin")[0]
    assert got == {"uid": 0, "capeff": "0000000000000000"}


@pytest.fixture
def ray_runtime(ray_session: None, tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime.start(local=False, home=tmp_path / "home")
    try:
        yield rt
    finally:
        rt.shutdown()


def test_app_of_a_sigkilled_supervisor_is_restarted_per_policy(ray_runtime: Runtime,
                                                               tmp_path: Path) -> None:
    """Hardening 3: a supervisor's worker SIGKILLed (OOM killer, an operator) ends the
    run as supervisor_lost; an on-failure app is then started again by the kernel."""
    import os
    import signal

    import psutil

    src = "import os, time\nreport(pid=os.getpid())\ntime.sleep(300)\n"
    handle = ray_runtime.launch(write_app(tmp_path, "hostile-lost", src, restart="on-failure"))
    try:
        assert wait_until(lambda: reports(ray_runtime, "hostile-lost"), 60)
        first = handle.info()
        supervisor_pid = psutil.Process(first["host"]["pid"]).ppid()
        os.kill(supervisor_pid, signal.SIGKILL)
        assert wait_until(lambda: len(reports(ray_runtime, "hostile-lost")) >= 2, 120), \
            "the app was not started again after its supervisor was killed"
        again = handle.info()
        assert again["runId"] != first["runId"] and again.get("exit") is None
    finally:
        ray_runtime.stop("hostile-lost", grace=1.0)
