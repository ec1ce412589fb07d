"""The operator's side (issue 13): ``up`` outlives its terminal, a stale runtime.json is
said and recovered from, apps stop cleanly whatever ``estarter`` inherited, and the
permission prompt on a terminal. Subprocesses, as an operator runs them."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from estarter.daemon import read_runtime, runtime_processes
from tests.apps import wait_until, write_app
from tests.integration.test_cli_lifecycle import ROOT, env_for, estarter, ok_json

# The session leader of a terminal, as a login shell is: the pty is its controlling
# terminal, ``estarter up`` runs in its session and process group, then it waits for
# the next command until the terminal hangs up (SIGHUP: it dies).
# A login session's leader: SIGHUP at its default (a test run from a nohup'ed or
# background job inherits it ignored, and then the hang-up would kill nothing).
SESSION_LEADER = """
import fcntl, os, signal, subprocess, sys, termios
signal.signal(signal.SIGHUP, signal.SIG_DFL)
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
rc = subprocess.call(sys.argv[1:])
print(f"UP-EXITED {rc}", flush=True)
while True:
    signal.pause()
"""


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Read the pty master until ``needle`` shows up (bounded)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} within {timeout} s: {seen[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every slave end is closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal closed before {needle!r}: {seen!r}")
            seen += chunk
    return seen


def test_up_survives_its_terminal_closing_and_a_stale_record_is_recovered(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_app(tmp_path, "ticker", "import time\nwhile True:\n    time.sleep(0.2)\n",
              prelude=False)
    ok_json(home, "install", str(tmp_path / "ticker"))
    master, slave = os.openpty()
    leader = subprocess.Popen([sys.executable, "-c", SESSION_LEADER, sys.executable, "-m",
                               "estarter", "up"], stdin=slave, stdout=slave, stderr=slave,
                              env=env_for(home), cwd=ROOT)
    os.close(slave)
    try:
        try:
            out = read_until(master, b"UP-EXITED", 180)
            assert b"UP-EXITED 0" in out, out
            started = ok_json(home, "start", "ticker")
            info = read_runtime(home)
            assert info is not None and info.temp_dir
            before = {p.pid for p in runtime_processes(info.temp_dir, info.gcs_port)}
            assert started["pid"] in before or started["state"] == "starting"
        finally:
            os.close(master)  # the terminal hangs up: SIGHUP to its session leader
        assert leader.wait(30) == -signal.SIGHUP
        rows = {r["appId"]: r for r in ok_json(home, "ps")}
        assert rows["ticker"]["state"] == "running", rows
        assert psutil.pid_exists(rows["ticker"]["pid"])
        after = {p.pid for p in runtime_processes(info.temp_dir, info.gcs_port)}
        assert before <= after, sorted(before - after)
        gcs = next(p for p in runtime_processes(info.temp_dir, info.gcs_port)
                   if p.name().startswith("gcs_server"))
        assert (home / "run" / "head.pid").read_text().strip() == str(gcs.pid)
        assert os.getsid(gcs.pid) != os.getsid(0) and os.getsid(gcs.pid) != leader.pid

        # The head dies (kill -9 of the GCS): runtime.json is stale. ``up`` says so,
        # stops what the old head left and starts a new one.
        gcs.kill()
        assert wait_until(lambda: not psutil.pid_exists(gcs.pid), 30)
        up = ok_json(home, "up")
        assert up["status"] == "started" and up["stale"]["address"] == info.address, up
        assert up["stale"]["processes"] > 0, up  # the raylet, workers, the ticker
        assert not [p for p in before if psutil.pid_exists(p)]
        assert up["address"] != info.address
        assert [r["state"] for r in ok_json(home, "ps")] == ["exited"]  # restart: never
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(30)
        down = estarter(home, "down", "--json")
        assert down.returncode == 0, down.stderr
        now = read_runtime(home)
        assert now is None


SIGNALS_APP = """
import sys, time
from sdk import EStarterClient
client = EStarterClient.connect()
print("ready", file=sys.stderr, flush=True)
try:
    while True:
        time.sleep(0.05)
finally:
    print("shutdown handler ran", file=sys.stderr, flush=True)
"""

# ``estarter run ... &`` from a script: SIGINT and SIGQUIT ignored; also some blocked.
CARELESS_PARENT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.mark.parametrize("mode", [["--local"], []], ids=["local", "ray"])
def test_run_started_with_sigint_ignored_still_stops_the_app_through_its_handler(
        tmp_path: Path, mode: list[str]) -> None:
    home = tmp_path / "home"
    folder = write_app(tmp_path, "sig", SIGNALS_APP, prelude=False)
    proc = subprocess.Popen([sys.executable, "-c", CARELESS_PARENT, "-m", "estarter", "run",
                             str(folder), "--json", *mode], env=env_for(home), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        lines: list[dict] = []
        rest = b""
        deadline = time.monotonic() + 180
        while not any(e.get("message") == "ready" for e in lines):
            assert time.monotonic() < deadline, (lines, rest)
            # os.read on the fd, not readline: a buffered reader may already hold the
            # next line (two events in one write), which select() then never reports.
            ready, _, _ = select.select([fd], [], [], 5)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, (lines, proc.stderr.read() if proc.stderr else "")
                *done, rest = (rest + chunk).split(b"\n")
                lines += [json.loads(x) for x in done if x.startswith(b"{")]
        proc.send_signal(signal.SIGINT)  # run's own handler: stop the app (3 s grace)
        out, err = proc.communicate(timeout=60)
        out = rest + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    events = lines + [json.loads(x) for x in out.splitlines() if x.startswith(b"{")]
    assert any(e.get("message") == "shutdown handler ran" for e in events), (events, err)
    end = events[-1]
    assert (end["event"], end["code"], end["reason"]) == ("exit", 0, "stopped"), events
    assert proc.returncode == 0


CONSENT_APP = """
import sys
from sdk import EStarterClient, PermissionDeniedError
client = EStarterClient.connect()
client.fs.write_text("/appdata/consented.txt", "yes")
try:
    client.call("system.info")
except PermissionDeniedError as exc:
    print(f"denied: {exc}", file=sys.stderr, flush=True)
"""


def test_run_on_a_terminal_asks_per_ungranted_permission(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = write_app(tmp_path, "asker", CONSENT_APP, prelude=False,
                       permissions=["fs.read", "fs.write", "system.info"])
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "estarter", "run", "--local", str(folder)],
                            stdin=slave, stdout=slave, stderr=slave, env=env_for(home),
                            cwd=ROOT, start_new_session=True)
    os.close(slave)
    try:
        seen = read_until(master, b"fs.write. Grant it? [y/N]", 60)
        assert b"system.info" not in seen  # one question at a time, in order
        os.write(master, b"y\n")
        read_until(master, b"system.info. Grant it? [y/N]", 60)
        os.write(master, b"n\n")
        seen = read_until(master, b"exited:", 60)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        os.close(master)
    text = seen.decode(errors="replace")
    assert "not granted (requested by its manifest): system.info" in text, text
    assert "grant with: estarter permissions grant asker system.info" in text, text
    # The app's own error names the permission and the command.
    assert "denied: permission system.info is not granted" in text, text
    assert "`estarter permissions grant asker system.info`" in text, text
    assert (home / "vfs" / "appdata" / "asker" / "consented.txt").read_text() == "yes"
    perms = ok_json(home, "permissions", "list", "asker")
    assert perms["granted"] == ["fs.read", "fs.write"]  # a yes persists, as --grant does


@pytest.mark.parametrize("args", [["--json"], []], ids=["json", "human"])
def test_run_without_a_terminal_never_asks_and_lists_what_is_ungranted(
        tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    folder = write_app(tmp_path, "quiet", CONSENT_APP, prelude=False,
                       permissions=["fs.write", "system.info"])
    proc = subprocess.run([sys.executable, "-m", "estarter", "run", "--local", str(folder),
                           "--grant", "fs.write", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env_for(home), cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Grant it?" not in proc.stdout + proc.stderr
    if args:
        events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        perms = [e for e in events if e["event"] == "permissions"]
        assert perms == [{"event": "permissions", "appId": "quiet", "ungranted": ["system.info"],
                          "grantCommand": "estarter permissions grant quiet system.info"}]
    else:
        assert "grant with: estarter permissions grant quiet system.info" in proc.stderr
