"""Running the console: in the foreground (``estarter console``) or as a process
``estarter up`` starts beside the runtime and ``estarter down`` stops.

Why a process and not an actor: the console is an operator client like the CLI
(it joins the runtime with ``Runtime.connect``), and composition sits above
``actors`` in the layer rule; an HTTP server in a Ray worker would also share that
worker's threads with Ray's. ``up`` records it in ``$ESTARTER_HOME/run/console.json``
(pid, url), and ``down`` stops exactly that pid (ask, wait, kill, reap), after
checking it is still our console.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from ..errors import LaunchError
from ..paths import run_dir
from .auth import METRICS_TOKEN_FILE, OPERATOR_TOKEN_FILE, ensure_token, read_token

DEFAULT_PORT = 8470
CONSOLE_FILE = "console.json"
START_SECONDS = 120.0
STOP_GRACE_SECONDS = 5.0


def pick_port(host: str, port: int | None) -> int:
    """``port`` as given; else the default port if free, else any free port."""
    if port is not None:
        return port
    for candidate in (DEFAULT_PORT, 0):
        with socket.socket(_family(host)) as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise LaunchError(f"no free port on {host}")


def url_of(host: str, port: int) -> str:
    shown = host
    if host in ("0.0.0.0", "::", ""):
        shown = _node_ip()
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def serve(home: Path, host: str = "127.0.0.1", port: int | None = None,
          on_ready: Any = None) -> None:
    """Serve the console for the runtime that is up for ``home`` until SIGINT/SIGTERM."""
    import uvicorn

    from ..runtime import Runtime
    from .api import Console
    from .auth import Gate
    from .backend import RuntimeBackend

    chosen = pick_port(host, port)
    gate = Gate(read_token(ensure_token(home, OPERATOR_TOKEN_FILE)),
                read_token(ensure_token(home, METRICS_TOKEN_FILE)))
    backend = RuntimeBackend(Runtime.connect(home))
    try:
        console = Console(backend, gate, host, chosen)
        config = uvicorn.Config(console, host=host, port=chosen, access_log=False,
                                log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)
        if on_ready is not None:
            on_ready(url_of(host, chosen))
        server.run()
    finally:
        backend.close()


# -- the process ``up`` manages -------------------------------------------------


def console_file(home: Path) -> Path:
    return run_dir(home) / CONSOLE_FILE


def read_console(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(console_file(home).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def start(home: Path, host: str = "127.0.0.1", port: int | None = None) -> dict[str, Any]:
    """Start the console process (or find the one running) and wait until it
    answers; returns ``{"url", "pid", "host", "port"}``. LaunchError if it fails."""
    current = read_console(home)
    if current is not None and _ours(current.get("pid")) and _answers(current["url"]):
        return current
    stop(home)
    ensure_token(home, OPERATOR_TOKEN_FILE)
    ensure_token(home, METRICS_TOKEN_FILE)
    chosen = pick_port(host, port)
    log_path = run_dir(home) / "console.log"
    argv = [sys.executable, "-m", "estarter", "console", "--home", str(home),
            "--host", host, "--port", str(chosen)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env={**os.environ,
                                                             "ESTARTER_HOME": str(home)})
    record: dict[str, Any] = {"pid": proc.pid, "url": url_of(host, chosen), "host": host,
                              "port": chosen, "local": f"http://{_loopback(host)}:{chosen}/"}
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"the console exited ({proc.returncode}): {_last(log_path)}")
        if _answers(record["local"]):
            _write(home, record)
            return record
        time.sleep(0.2)
    _stop_pid(proc.pid)
    raise LaunchError(f"the console did not answer within {START_SECONDS:.0f} s")


def stop(home: Path) -> bool:
    """Stop the console ``up`` started (only if that pid is still our console).
    Idempotent; True if one was stopped."""
    current = read_console(home)
    stopped = False
    if current is not None and _ours(current.get("pid")):
        _stop_pid(int(current["pid"]))
        stopped = True
    with contextlib.suppress(FileNotFoundError):
        console_file(home).unlink()
    return stopped


def _stop_pid(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_GRACE_SECONDS)
    except psutil.Error:
        pass


def _ours(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "estarter" in cmd and "console" in cmd


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _write(home: Path, record: dict[str, Any]) -> None:
    path = console_file(home)
    tmp = path.with_name(f".{CONSOLE_FILE}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _last(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _loopback(host: str) -> str:
    if host in ("0.0.0.0", "", "127.0.0.1"):
        return "127.0.0.1"
    if host in ("::", "::1"):
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _node_ip() -> str:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing address
        return str(s.getsockname()[0])
    return "127.0.0.1"
