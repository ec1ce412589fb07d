"""Test apps written on the fly: a manifest plus a short python-runtime script."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import psutil

from estarter.runtime import Runtime

PRELUDE = """\
import json, sys
from sdk import EStarterClient, ApiError
client = EStarterClient.connect()
def report(**values):
    client.ui.notify("report", json.dumps(values))
"""


def write_app(root: Path, app_id: str, source: str, prelude: bool = True,
              **manifest: Any) -> Path:
    """An app folder ``root/app_id`` running ``source`` with the python runtime."""
    folder = root / app_id
    folder.mkdir(parents=True, exist_ok=True)
    body = (PRELUDE if prelude else "") + textwrap.dedent(source)
    (folder / "app.py").write_text(body)
    data = {"id": app_id, "runtime": "python", "entry": "app.py", **manifest}
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def reports(rt: Runtime, app_id: str) -> list[dict[str, Any]]:
    """What the app sent with ``report(...)``, in order."""
    return [json.loads(n["message"]) for n in rt.notifications(1000)
            if n["appId"] == app_id and n["title"] == "report"]


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line or environment carries ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return bool(value)
        time.sleep(interval)


# The start of a fresh interpreter's script that plays a runtime that is up for the
# home in argv[1] (runtime.json and the operator token): the CLI then talks to the
# socket server the script starts, with a fake kernel behind it.
FAKE_RUNTIME_UP = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from estarter.console.auth import ensure_token
        from estarter.kernel.operator_access import OperatorService
        from estarter.kernel.socket_server import SocketServer

        home = Path(sys.argv[1])
        (home / "run").mkdir(parents=True)
        (home / "run" / "runtime.json").write_text(json.dumps(
            {"home": str(home), "address": "127.0.0.1:1", "started_head": True}))
        ensure_token(home)
""")
