"""``estarter run --watch`` as a user runs it (issue 14, acceptance 3): a change of the
app folder reruns the app, the old run is stopped first and none of its processes is
left; a wasm app's ``build`` command rebuilds it; Ctrl-C ends the loop cleanly."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.apps import processes_with, wait_until

ROOT = Path(__file__).resolve().parents[2]
BOUND = 180.0  # generous: a loaded 2-core machine, and an embedded Ray to start

APP = '''
import time
print("{marker}", flush=True)
time.sleep(600)
'''


class Watching:
    """``estarter run --watch --json`` in a subprocess; its events read by a thread."""

    def __init__(self, folder: Path, home: Path, *extra: str) -> None:
        env = {**os.environ, "ESTARTER_HOME": str(home)}
        for name in ("RAY_ADDRESS", "ESTARTER_RAY_ADDRESS"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "estarter", "run", "--watch", "--json", *extra,
             str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=ROOT)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def wait_for(self, match: Callable[[dict[str, Any]], bool],
                 timeout: float = BOUND) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=min(1.0, deadline - time.monotonic()))
            except queue.Empty:
                continue
            self.seen.append(event)
            if match(event):
                return event
        raise AssertionError(f"no such event within {timeout} s; seen: {self.seen[-30:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def watching() -> Iterator[list[Watching]]:
    started: list[Watching] = []
    try:
        yield started
    finally:
        for w in started:
            w.close()


def log_says(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "log" and e.get("message") == text


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def guard(proc: psutil.Process) -> bool:
    """The native launcher's guard process (a daemon: ppid 1, the launcher's argv)."""
    try:
        return proc.ppid() == 1 and "estarter-launch" in proc.cmdline()[0]
    except (psutil.NoSuchProcess, IndexError):
        return False


def describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} ppid {proc.ppid()} {proc.status()}: {proc.cmdline()[:3]}"
    except psutil.NoSuchProcess:
        return f"{proc.pid} (gone)"


@pytest.mark.parametrize("mode", [["--local"], []], ids=["local", "ray"])
def test_a_change_reruns_and_leaves_nothing_of_the_old_run(
        tmp_path: Path, watching: list[Watching], mode: list[str]) -> None:
    marker = f"watch-{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "app.py").write_text(APP.format(marker="run-1"))
    (folder / "manifest.json").write_text(json.dumps(
        {"id": "watched", "runtime": "python", "entry": "app.py", "args": [marker]}))
    w = Watching(folder, tmp_path / "home", *mode)
    watching.append(w)
    w.wait_for(log_says("run-1"))
    first = processes_with(marker)
    assert first, "the first run's processes carry the marker"

    (folder / "app.py").write_text(APP.format(marker="run-2"))
    rerun = w.wait_for(lambda e: e["event"] == "watch" and e["action"] == "rerun")
    assert rerun["changed"] == ["app.py"]
    w.wait_for(log_says("run-2"))
    kinds = [e["event"] for e in w.seen]
    # the first run ended (stopped) before the second started
    first_exit = next(i for i, e in enumerate(w.seen) if e["event"] == "exit")
    assert w.seen[first_exit]["reason"] == "stopped"
    assert first_exit < kinds.index("watch")
    # Nothing of the app is left once the next run started; the launcher's guard (it
    # sweeps the app's cgroups should the supervisor die) leaves once the supervisor
    # has removed them.
    assert [describe(p) for p in first if alive(p) and not guard(p)] == []
    assert wait_until(lambda: not any(alive(p) for p in first), 150), \
        [describe(p) for p in first if alive(p)]

    second = processes_with(marker)
    assert second and not {p.pid for p in second} & {p.pid for p in first}
    w.proc.send_signal(signal.SIGINT)  # Ctrl-C: the run is stopped, the loop ends, 0
    assert w.proc.wait(120) == 0
    w.wait_for(lambda e: e["event"] == "watch" and e["action"] == "stopped", 30)
    assert wait_until(lambda: not any(alive(p) for p in second), 150), \
        [describe(p) for p in second if alive(p)]


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang for wasm32-wasi")
def test_a_wasm_app_is_rebuilt_by_its_build_command(tmp_path: Path,
                                                     watching: list[Watching]) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "sdk" / "c").mkdir(parents=True)
    shutil.copy(ROOT / "sdk" / "c" / "estarter.h", folder / "sdk" / "c")
    source = (ROOT / "samples" / "hello-wasm" / "app.c").read_text().replace(
        "../../sdk/c/estarter.h", "sdk/c/estarter.h")
    (folder / "app.c").write_text(source)
    manifest = json.loads((ROOT / "samples" / "hello-wasm" / "manifest.json").read_text())
    manifest["build"] = "clang --target=wasm32-wasi -O2 -o app.wasm app.c"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    w = Watching(folder, tmp_path / "home", "--local")
    watching.append(w)
    assert w.wait_for(lambda e: e["event"] == "build")["ok"]
    w.wait_for(lambda e: e["event"] == "notification"
               and e["message"] == "Hello from WebAssembly!")
    w.wait_for(lambda e: e["event"] == "exit")
    (folder / "app.c").write_text(source.replace("Hello from WebAssembly!", "Rebuilt!"))
    build = w.wait_for(lambda e: e["event"] == "build")
    assert build["ok"], build
    w.wait_for(lambda e: e["event"] == "notification" and e["message"] == "Rebuilt!")
    (folder / "app.c").write_text(source.replace("int main", "int broken main"))
    failed = w.wait_for(lambda e: e["event"] == "build")
    assert not failed["ok"] and "error" in failed["output"]
    # a failed build runs nothing: the loop waits for the next change
    assert w.wait_for(lambda e: e["event"] == "watch")["action"] == "waiting"


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_a_native_app_from_init_is_rebuilt_and_rerun(tmp_path: Path,
                                                      watching: list[Watching]) -> None:
    """``estarter init --runtime native`` writes a ``build`` key; the loop runs it."""
    folder = tmp_path / "natapp"
    made = subprocess.run([sys.executable, "-m", "estarter", "init", str(folder),
                           "--runtime", "native"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert made.returncode == 0, made.stderr
    assert json.loads((folder / "manifest.json").read_text()).get("build")
    w = Watching(folder, tmp_path / "home", "--local")
    watching.append(w)
    assert w.wait_for(lambda e: e["event"] == "build")["ok"]
    w.wait_for(lambda e: e["event"] == "notification" and e["message"] == "Hello from natapp!")
    assert w.wait_for(lambda e: e["event"] == "exit")["code"] == 0
    source = (folder / "app.c").read_text()
    (folder / "app.c").write_text(source.replace("Hello from natapp!", "Rebuilt natapp!"))
    assert w.wait_for(lambda e: e["event"] == "build")["ok"]
    w.wait_for(lambda e: e["event"] == "notification" and e["message"] == "Rebuilt natapp!")
    assert w.wait_for(lambda e: e["event"] == "exit")["code"] == 0
