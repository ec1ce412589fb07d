"""What estarter inherited (SIGINT ignored, signals blocked) never reaches an app: the
launcher resets dispositions and the mask before the exec, so the app's shutdown
handler runs on stop instead of a kill after the grace (137).

The ProcessHost runs in a child process started the way ``estarter run ... &`` from
a script starts it: SIGINT and SIGQUIT ignored, and here also SIGTERM, SIGINT and
SIGUSR1 blocked. Both launchers (C and the Python reference).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

APP = """
import sys, time
from sdk import EStarterClient

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1], 16)

client = EStarterClient.connect()
try:
    # Python itself ignores SIGPIPE and SIGXFSZ at start-up; everything else is
    # inherited. Printed inside the try: the stop follows this line at once, and on
    # a loaded host its SystemExit could land before a try that came after it.
    print("signals", status("SigBlk"), status("SigIgn"), file=sys.stderr, flush=True)
    while True:
        time.sleep(0.05)
finally:
    print("shutdown handler ran", file=sys.stderr, flush=True)
"""

# Runs as ``python -c``: sets up what a careless parent leaves behind, then hosts APP.
DRIVER = """
import json, signal, sys, threading
from pathlib import Path
from estarter.hosting.base import HostContext
from estarter.hosting.process_host import ProcessHost
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
root = Path(sys.argv[1])
m = AppManifest.model_validate({"id": "sig", "runtime": "python", "entry": "app.py"})
policy = SandboxPolicy.from_manifest(m, root / "app", granted=m.requested_permissions)
logs, ready = [], threading.Event()

def log(level, message):
    logs.append(message)
    if message.startswith("signals"):
        ready.set()

def api(method, params):
    raise AssertionError(method)

ctx = HostContext(api=api, log=log, on_exit=lambda info: None, home=root / "home",
                  appdata=root / "home" / "appdata")
with ProcessHost(policy, ctx) as host:
    host.start()
    assert ready.wait(60), logs
    info = host.stop(grace=20)
print(json.dumps({"code": info.code, "reason": info.reason.value, "logs": logs}))
"""


@pytest.mark.parametrize("launcher", ["c", "python"])
def test_app_shutdown_runs_although_estarter_ignores_and_blocks_signals(
        tmp_path: Path, launcher: str) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(textwrap.dedent(APP))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if launcher == "python":
        env["ESTARTER_LAUNCHER"] = "python"
    else:
        env.pop("ESTARTER_LAUNCHER", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    _, blocked, ignored = next(m for m in got["logs"] if m.startswith("signals")).split()
    assert int(blocked) == 0, got
    for sig in ("SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGHUP"):
        assert not int(ignored) & 1 << (getattr(__import__("signal"), sig) - 1), (sig, got)
    assert "shutdown handler ran" in got["logs"], got
    assert (got["code"], got["reason"]) == (0, "stopped"), got
