"""Operator commands reach a runtime that is up over the kernel's socket (issue 13):
``ps start stop restart`` without a Ray driver, operator methods closed to app
tokens and to wrong or absent operator tokens, and an honest ``ps`` (restart
backoff, no stale pids, uninstalled apps gone). Subprocesses against ``estarter up``
in a home of its own, brought ``down`` at the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from estarter.daemon import read_runtime, runtime_processes
from estarter.protocol.framing import FrameDecoder, encode_frame
from tests.apps import wait_until, write_app
from tests.integration.test_cli_lifecycle import ROOT

# A long backoff, so that an app that crashes stays ``restarting`` for a while.
SLOW_RESTARTS = {"ESTARTER_RESTART_INITIAL_DELAY": "120", "ESTARTER_RESTART_MAX_DELAY": "120"}

# Runs a CLI command in this interpreter and says whether Ray was imported.
CLI_NO_RAY = """
import sys
from estarter.cli import app
rc = app(sys.argv[1:], standalone_mode=False)
print("RAY-IMPORTED", "ray" in sys.modules)
sys.exit(rc or 0)
"""


def env_for(home: Path) -> dict[str, str]:
    env = {**os.environ, "ESTARTER_HOME": str(home), **SLOW_RESTARTS}
    for var in ("RAY_ADDRESS", "ESTARTER_RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    return env


def estarter(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "estarter", *args], capture_output=True,
                          text=True, env=env_for(home), cwd=ROOT, timeout=timeout)


def over_socket(home: Path, *args: str) -> Any:
    """``estarter ARGS --json`` in a process that must not import Ray; its JSON."""
    proc = subprocess.run([sys.executable, "-c", CLI_NO_RAY, *args, "--json"],
                          capture_output=True, text=True, env=env_for(home), cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    *body, last = proc.stdout.strip().splitlines()
    assert last == "RAY-IMPORTED False", (args, proc.stdout, proc.stderr)
    return json.loads("\n".join(body))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("opsock")
    home = root / "home"
    try:
        up = estarter(home, "up", "--no-console", "--json", timeout=600)
        assert up.returncode == 0, up.stderr
        yield home
    finally:
        info = read_runtime(home)
        down = estarter(home, "down", "--json", timeout=600)
        assert down.returncode == 0, down.stderr
        if info is not None:
            left = runtime_processes(info.temp_dir, info.gcs_port)
            assert not left, [p.pid for p in left]


def rows(home: Path) -> dict[str, dict[str, Any]]:
    return {r["appId"]: r for r in over_socket(home, "ps")}


def hello(home: Path, token: Any, method: str = "operator.ps") -> list[dict[str, Any]]:
    """Say hello on the kernel socket with ``token`` (None: no token at all) and, if
    accepted, call ``method``; every message the kernel sent."""
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(60)
        raw.connect(str(home / "run" / "kernel.sock"))
        decoder = FrameDecoder()
        got: list[dict[str, Any]] = []

        def read_until(msg_id: int) -> None:
            while not any(msg.get("id") == msg_id for msg in got):
                data = raw.recv(65536)
                if not data:
                    return
                got.extend(json.loads(b) for b in decoder.feed(data))

        params = {} if token is None else {"token": token}
        raw.sendall(encode_frame({"jsonrpc": "2.0", "id": 1, "method": "auth.hello",
                                  "params": params}))
        read_until(1)
        if got and "error" not in got[0]:
            raw.sendall(encode_frame({"jsonrpc": "2.0", "id": 2, "method": method,
                                      "params": {"appId": "x"}}))
            read_until(2)
    return got


def test_ps_start_stop_restart_over_the_socket(home: Path, tmp_path: Path) -> None:
    app = write_app(tmp_path, "op.ticker", "import time\nwhile True:\n    time.sleep(0.2)\n",
                    prelude=False, restart="never")
    installed = estarter(home, "install", str(app), "--json")
    assert installed.returncode == 0, installed.stderr
    started = over_socket(home, "start", "op.ticker")
    assert started["appId"] == "op.ticker"
    assert wait_until(lambda: rows(home)["op.ticker"]["state"] == "running", 120)
    row = rows(home)["op.ticker"]
    assert psutil.pid_exists(row["pid"]) and row["restarts"] == 0
    assert row["memoryBytes"] and row["memoryBytes"] > 0 and row["uptime"] is not None
    first_pid = row["pid"]

    restarted = over_socket(home, "restart", "op.ticker", "--grace", "1")
    assert restarted["runId"] > started["runId"]
    assert wait_until(lambda: rows(home)["op.ticker"]["state"] == "running", 120)
    row = rows(home)["op.ticker"]
    assert row["runId"] == restarted["runId"] and row["pid"] != first_pid

    stopped = over_socket(home, "stop", "op.ticker", "--grace", "1")
    assert stopped["state"] in ("exited", "failed") and stopped["exit"]["reason"] == "stopped"
    row = rows(home)["op.ticker"]
    assert row["pid"] is None and row["exit"]["reason"] == "stopped"  # no stale pid

    uninstalled = over_socket(home, "uninstall", "op.ticker")
    assert uninstalled["uninstalled"] is True
    assert "op.ticker" not in rows(home)  # uninstalled apps leave the list


def test_ps_shows_an_app_in_restart_backoff_as_restarting(home: Path, tmp_path: Path) -> None:
    app = write_app(tmp_path, "op.crasher", "raise SystemExit(3)\n", prelude=False,
                    restart="always")
    over_socket(home, "start", str(app))
    # Crashed once, now waiting out a 120 s backoff: nothing runs.
    assert wait_until(lambda: rows(home)["op.crasher"]["state"] == "restarting", 120)
    row = rows(home)["op.crasher"]
    assert row["pid"] is None and row["restarts"] == 1 and row["restartAt"] is not None
    assert row["cpuSeconds"] is None and row["uptime"] is None
    stopped = over_socket(home, "stop", "op.crasher", "--grace", "1")
    assert stopped["exit"]["reason"] == "stopped"
    assert rows(home)["op.crasher"]["state"] in ("exited", "failed")


def test_app_token_cannot_call_operator_methods(home: Path, tmp_path: Path) -> None:
    issued = estarter(home, "token", "op.client")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    for method in ("operator.ps", "operator.start", "operator.stop", "operator.restart",
                   "operator.info"):
        got = hello(home, token, method)
        assert got[0]["result"] == {"appId": "op.client"}
        answer = next(m for m in got if m.get("id") == 2)
        assert answer["error"]["code"] == -32601, answer


def test_wrong_or_absent_operator_token_is_refused(home: Path) -> None:
    real = (home / "run" / "operator-token").read_text().strip()
    assert (home / "run" / "operator-token").stat().st_mode & 0o777 == 0o600
    for bad in (None, "", "x" * len(real), real[:-1], real + "="):
        got = hello(home, bad)
        assert len(got) == 1 and got[0]["error"]["code"] == -32001, (bad, got)
    got = hello(home, real)  # and the real one is accepted
    assert got[0]["result"]["operator"] is True
    assert next(m for m in got if m.get("id") == 2)["result"] is not None
