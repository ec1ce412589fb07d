"""DESIGN target 10: operator commands against a runtime that is up, as whole-command
wall time (a new ``estarter`` process each time, as an operator types them), vs
offline ``estarter list`` in the same run: ``ps``, ``start`` and ``stop`` <= 2x.

The runtime is ``estarter up --no-console`` in a temporary ESTARTER_HOME, brought
``down`` at the end. The app is a python-runtime loop; ``stop`` uses ``--grace 0``
(kill at once) so that the figure is the command's cost, not the app's grace
period. Also printed, without a target: ``ps`` through a Ray driver (the path the
CLI falls back to, and what every runtime command took before the kernel socket
served operators), forced by moving the operator token aside for those runs.

Run: ``python -m benchmarks operator``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

Report = Callable[[str, float, float, "float | None", str], None]
ROUNDS = 7
RAY_ROUNDS = 3
TARGET = 2.0
ROOT = Path(__file__).resolve().parents[1]

LOOP = "import time\nwhile True:\n    time.sleep(0.5)\n"


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "ESTARTER_HOME": str(home)}
    for var in ("RAY_ADDRESS", "ESTARTER_RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    return env


def _estarter(home: Path, *args: str, timeout: float = 300) -> float:
    """Run one command; its wall time in seconds. Raises if it fails."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "estarter", *args], capture_output=True,
                          text=True, env=_env(home), cwd=ROOT, timeout=timeout)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"estarter {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return took


def run(report: Report) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="estarter-bench-op-"))
    home = tmp / "home"
    app = tmp / "bench.loop"
    app.mkdir(parents=True)
    (app / "app.py").write_text(LOOP)
    (app / "manifest.json").write_text(json.dumps(
        {"id": "bench.loop", "runtime": "python", "entry": "app.py", "restart": "never"}))
    times: dict[str, list[float]] = {"list": [], "ps": [], "start": [], "stop": [],
                                     "ps-ray": []}
    try:
        _estarter(home, "up", "--no-console", "--json", timeout=600)
        _estarter(home, "install", str(app))
        _estarter(home, "list")  # warm the file cache, as the others are warmed below
        _estarter(home, "ps")
        for _ in range(ROUNDS):  # interleaved: a busy moment weighs on every command
            times["list"].append(_estarter(home, "list"))
            times["ps"].append(_estarter(home, "ps"))
            times["start"].append(_estarter(home, "start", "bench.loop"))
            times["ps"].append(_estarter(home, "ps"))  # with an app running
            times["stop"].append(_estarter(home, "stop", "bench.loop", "--grace", "0"))
            times["list"].append(_estarter(home, "list"))
        token = home / "run" / "operator-token"
        aside = tmp / "operator-token.aside"
        shutil.move(token, aside)
        try:
            for _ in range(RAY_ROUNDS):
                times["ps-ray"].append(_estarter(home, "ps"))
        finally:
            shutil.move(aside, token)
    finally:
        try:
            _estarter(home, "down", "--json", timeout=600)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["list"])
    report("estarter ps (runtime up) vs offline estarter list",
           statistics.median(times["ps"]), base, TARGET, "s")
    report("estarter start (runtime up) vs offline estarter list",
           statistics.median(times["start"]), base, TARGET, "s")
    report("estarter stop --grace 0 (runtime up) vs offline estarter list",
           statistics.median(times["stop"]), base, TARGET, "s")
    report("estarter ps through a Ray driver (the fallback) vs list",
           statistics.median(times["ps-ray"]), base, None, "s")


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["operator"]))
