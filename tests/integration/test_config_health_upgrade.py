"""Issue 13, in both modes: an app's configuration (a secret reaches the app and
nothing an operator reads), the heartbeat watchdog (``unresponsive``), and an
upgrade of a running app with its rollback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from estarter.apps import describe
from estarter.cli import app as cli
from estarter.console.backend import RuntimeBackend
from estarter.hosting.base import ExitReason
from estarter.runtime import Runtime
from tests.apps import reports, wait_until, write_app

SECRET = "estarter-secret-7f3a9c1e2b"
ENV = [{"name": "API_KEY", "description": "the service's key", "secret": True},
       {"name": "GREETING", "default": "hello"}]

CONFIGURED = """\
import hashlib, os, sys, time
print("on stdout", flush=True)
print("on stderr", file=sys.stderr, flush=True)
client.log("info", "a log call")
report(key=hashlib.sha256(os.environ.get("API_KEY", "").encode()).hexdigest(),
       greeting=os.environ.get("GREETING"), names=sorted(os.environ))
while True:
    time.sleep(0.2)
"""

VERSIONED = """\
import os, time
report(version=VERSION, pid=os.getpid())
while True:
    time.sleep(0.2)
"""

# Beats at once (the first deadline has a long start grace), then never again: the
# watchdog ends it heartbeatSeconds later.
SILENT = """\
import time
report(beat=client.heartbeat())
while True:
    time.sleep(0.2)
"""


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def text_of(value: Any) -> str:
    return json.dumps(value, default=str)


def test_a_secret_reaches_the_app_and_nothing_the_operator_reads(
        runtime: Runtime, tmp_path: Path) -> None:
    home = str(runtime.home)
    runtime.install(write_app(tmp_path, "configured", CONFIGURED, env=ENV))
    shown = run_cli("config", "set", "configured", f"API_KEY={SECRET}", "--secret",
                    "--home", home).output
    listed = run_cli("config", "list", "configured", "--json", "--home", home).output
    got = run_cli("config", "get", "configured", "API_KEY", "--home", home).output
    assert "(secret, set)" in got
    runtime.launch("configured")
    assert wait_until(lambda: reports(runtime, "configured"), 120)
    seen = reports(runtime, "configured")[0]
    assert seen["key"] == hashlib.sha256(SECRET.encode()).hexdigest()  # it reached the app
    assert seen["greeting"] == "hello"  # a declared default
    others = {n for n in seen["names"] if not n.startswith("ESTARTER_")}
    # Nothing of the host's (PWD: bubblewrap sets it to the app's working folder).
    assert others <= {"API_KEY", "GREETING", "PATH", "LANG", "PWD"}, others
    assert wait_until(lambda: any("a log call" in line for line in
                                  runtime.logs("configured", 1000)), 60)

    backend = RuntimeBackend(runtime)
    operator_views = {
        "cli": shown + listed + got,
        "ps": runtime.list(),
        "inspect": runtime.info("configured"),
        "inspect at rest": describe(runtime.home, "configured"),
        "logs": runtime.logs("configured", 10000),
        "events": runtime.events(0, 0.0),
        "notifications": runtime.notifications(1000),
        "audit": runtime.permission_authority().audit(None, 10000),
        "console apps": backend.apps(),
        "console app": backend.app("configured"),
    }
    for view, value in operator_views.items():
        assert SECRET not in text_of(value), view
    runtime.stop("configured", 5.0)
    # The one file holding it is the 0600 secrets file; no log, database or record has it.
    holders = [p for p in runtime.home.rglob("*")
               if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert holders == [runtime.home / "config" / "configured.secrets.json"]
    assert holders[0].stat().st_mode & 0o777 == 0o600


def test_an_app_that_stops_its_heartbeat_ends_unresponsive(
        runtime: Runtime, tmp_path: Path) -> None:
    folder = write_app(tmp_path, "silent", SILENT, restart="never",
                       healthCheck={"heartbeatSeconds": 1, "startGraceSeconds": 60})
    handle = runtime.launch(folder)
    end = handle.wait(180)
    assert end is not None and end.reason is ExitReason.UNRESPONSIVE, end
    assert reports(runtime, "silent")[0]["beat"] == {"watched": True, "heartbeatSeconds": 1}
    assert any("no system.heartbeat within 1 s" in line
               for line in runtime.logs("silent", 1000))


def test_an_unresponsive_app_is_restarted_per_its_policy(
        runtime: Runtime, tmp_path: Path) -> None:
    folder = write_app(tmp_path, "silent2", SILENT, restart="on-failure",
                       healthCheck={"heartbeatSeconds": 1, "startGraceSeconds": 60})
    runtime.launch(folder)
    try:
        assert wait_until(lambda: len(reports(runtime, "silent2")) >= 2, 180)  # run, rerun
        assert any("app ended: unresponsive" in line for line in runtime.logs("silent2", 1000))
    finally:
        runtime.stop("silent2", 2.0)


def test_upgrading_a_running_app_restarts_it_on_the_new_version_and_rollback_returns(
        runtime: Runtime, tmp_path: Path) -> None:
    def versioned(version: str) -> Path:
        source = f"VERSION = {version!r}\n" + VERSIONED
        return write_app(tmp_path / version, "versioned", source, version=version)

    def running(version: str, after: int) -> bool:
        seen = reports(runtime, "versioned")[after:]
        return any(r["version"] == version for r in seen)

    runtime.install(versioned("0.1.0"))
    runtime.launch("versioned")
    try:
        assert wait_until(lambda: running("0.1.0", 0), 120)
        count = len(reports(runtime, "versioned"))
        deferred = runtime.install(versioned("0.2.0"), restart=False)
        assert deferred["version"] == "0.2.0" and deferred["restarted"] is False
        assert runtime.list_installed()[0]["version"] == "0.2.0"
        assert len(reports(runtime, "versioned")) == count  # still the old run
        runtime.install(versioned("0.3.0"))  # keeps 0.2.0 as the previous version
        assert wait_until(lambda: running("0.3.0", count), 120)
        count = len(reports(runtime, "versioned"))
        back = runtime.rollback("versioned")
        assert (back["version"], back["from"], back["restarted"]) == ("0.2.0", "0.3.0", True)
        assert wait_until(lambda: running("0.2.0", count), 120)
        states = [r for r in runtime.list() if r["appId"] == "versioned"]
        assert states[0]["state"] in ("starting", "running")
    finally:
        runtime.stop("versioned", 2.0)
    stopped = runtime.install(versioned("0.4.0"))  # not running: installed, not started
    assert stopped["restarted"] is False
    assert [r["state"] for r in runtime.list() if r["appId"] == "versioned"] == ["exited"]


HEARTBEAT_C = """\
#include "estarter.h"
int main(void) {
    char out[256];
    if (estarter_heartbeat() < 0) return 3;
    int n = estarter_call("system.heartbeat", 0, out, (int)sizeof out);
    /* watched by its supervisor: {"result":{"watched":true,...}} */
    return (n > 0 && strstr(out, "\\"watched\\":true")) ? 0 : 4;
}
"""


def test_a_wasm_app_heartbeats_through_its_supervisor(runtime: Runtime, tmp_path: Path) -> None:
    import shutil
    import subprocess

    import pytest

    if shutil.which("clang") is None:
        pytest.skip("clang (wasm32-wasi) is not installed")
    folder = tmp_path / "beater"
    folder.mkdir()
    (folder / "app.c").write_text(HEARTBEAT_C)
    sdk_c = Path(__file__).resolve().parents[2] / "sdk" / "c"
    subprocess.run(["clang", "--target=wasm32-wasi", "-O2", f"-I{sdk_c}", "-o",
                    str(folder / "app.wasm"), str(folder / "app.c")], check=True, timeout=120)
    (folder / "manifest.json").write_text(json.dumps({
        "id": "beater", "runtime": "wasm", "entry": "app.wasm",
        "healthCheck": {"heartbeatSeconds": 30}}))
    end = runtime.launch(folder).wait(120)
    assert end is not None and (end.reason, end.code) == (ExitReason.EXITED, 0), end
