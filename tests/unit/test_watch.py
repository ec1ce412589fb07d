"""estarter.watch: the folder watch (debounce on a fake clock, what is ignored, a
build's own outputs) and the build command (ok, failed, timed out: its group ends)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psutil

from estarter.manifest import parse_manifest
from estarter.watch import FolderWatch, changed, run_build, snapshot


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def touch(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    st = path.stat()  # a new mtime even within the filesystem's timestamp granularity
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def app_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    touch(folder / "app.py", "print(1)")
    touch(folder / "manifest.json", "{}")
    return folder


def test_a_change_is_reported_once_it_has_settled(tmp_path: Path) -> None:
    folder = app_folder(tmp_path)
    clock = Clock()
    watch = FolderWatch(folder, debounce=0.3, clock=clock)
    assert watch.poll() is None
    touch(folder / "app.py", "print(2)")
    assert watch.poll() is None  # seen, settling
    clock.now += 0.2
    touch(folder / "lib" / "util.py", "x = 1")  # still changing: the debounce restarts
    assert watch.poll() is None
    clock.now += 0.2
    assert watch.poll() is None  # 0.2 s of quiet is not enough
    clock.now += 0.2
    assert watch.poll() == ["app.py", os.path.join("lib", "util.py")]
    clock.now += 5
    assert watch.poll() is None  # reported once


def test_ignored_files_are_no_change(tmp_path: Path) -> None:
    folder = app_folder(tmp_path)
    clock = Clock()
    watch = FolderWatch(folder, debounce=0.3, clock=clock)
    for name in (".hidden", "__pycache__/app.cpython-311.pyc", ".git/index", "app.py~",
                 ".app.py.swp", "node_modules/x.js"):
        touch(folder / name, "x")
    watch.poll()
    clock.now += 1
    assert watch.poll() is None
    assert set(snapshot(folder)) == {"app.py", "manifest.json"}


def test_changed_and_changed_back_is_no_change(tmp_path: Path) -> None:
    folder = app_folder(tmp_path)
    before = snapshot(folder)
    touch(folder / "new.txt", "x")
    assert changed(before, snapshot(folder)) == ["new.txt"]
    (folder / "new.txt").unlink()
    assert changed(before, snapshot(folder)) == []


def test_rebase_takes_a_builds_outputs_as_the_baseline(tmp_path: Path) -> None:
    folder = app_folder(tmp_path)
    clock = Clock()
    watch = FolderWatch(folder, debounce=0.3, clock=clock)
    touch(folder / "app.wasm", "built")
    watch.rebase()
    clock.now += 1
    assert watch.poll() is None
    clock.now += 1
    assert watch.poll() is None


def test_wait_ends_when_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    assert FolderWatch(app_folder(tmp_path)).wait(stop) is None


def test_the_manifest_takes_a_build_command() -> None:
    manifest = parse_manifest('{"id": "a", "entry": "app.wasm", "runtime": "wasm", '
                              '"build": "./build.sh"}')
    assert manifest.build == "./build.sh"
    assert parse_manifest('{"id": "a", "entry": "x"}').build is None


def test_build_runs_in_the_app_folder(tmp_path: Path) -> None:
    folder = app_folder(tmp_path)
    result = run_build(folder, "pwd; echo built > out.txt")
    assert result.ok and result.code == 0
    assert result.output.strip() == str(folder)
    assert (folder / "out.txt").read_text() == "built\n"


def test_a_failed_build_says_why(tmp_path: Path) -> None:
    result = run_build(app_folder(tmp_path), "echo 'app.c:3: error: oops' >&2; exit 4")
    assert not result.ok and result.code == 4
    assert "app.c:3: error: oops" in result.output


def test_a_build_that_takes_too_long_is_ended_with_its_children(tmp_path: Path) -> None:
    folder = app_folder(tmp_path)
    result = run_build(folder, "sleep 300 & echo $! > child.pid; wait", timeout=5.0)
    assert not result.ok and "longer than 5 s" in result.output
    child = int((folder / "child.pid").read_text())
    try:
        proc = psutil.Process(child)
        gone = proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        gone = True
    assert gone


def test_watch_needs_a_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from estarter.cli import app

    package = tmp_path / "a.app.zip"
    package.write_bytes(b"PK")
    result = CliRunner().invoke(app, ["run", "--watch", "--local", str(package),
                                      "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert "--watch needs an app folder" in result.output


class FakeHandle:
    app_id = "fake"

    def stop(self, grace: float) -> None:
        raise AssertionError("an app that exited is not stopped")


class FakeRuntime:
    """Launch fails first, then runs an app that exits at once."""

    def __init__(self) -> None:
        self.launches = 0
        self.pending: list[dict[str, object]] = []

    def launch(self) -> FakeHandle:
        from estarter.errors import EstarterError

        self.launches += 1
        if self.launches == 1:
            raise EstarterError("entry: not found")
        self.pending = [{"event": "exit", "appId": "fake", "code": 0, "reason": "exited"}]
        return FakeHandle()

    def event_cursor(self) -> int:
        return 0

    def events(self, cursor: int, timeout: float, app_id: str) -> dict[str, object]:
        out, self.pending = self.pending, []
        return {"events": out, "next": cursor + len(out), "missed": 0}


def test_the_loop_goes_on_after_a_failed_launch(tmp_path: Path) -> None:
    import io
    import json

    from rich.console import Console

    from estarter.cli_watch import WatchLoop

    folder = app_folder(tmp_path)
    touch(folder / "manifest.json", '{"id": "fake", "runtime": "python", "entry": "app.py"}')
    rt = FakeRuntime()
    buf = io.StringIO()
    printed: list[dict[str, object]] = []
    loop = WatchLoop(rt, folder, True, rt.launch, lambda e, _: printed.append(e),
                     Console(file=buf, width=10000), Console(file=io.StringIO()))

    def edit_then_stop() -> None:
        for _ in range(600):  # each step waits for the loop's own output
            if '"action": "waiting"' in buf.getvalue():
                break
            threading.Event().wait(0.05)
        touch(folder / "app.py", "print(2)")
        for _ in range(600):
            if printed:
                break
            threading.Event().wait(0.05)
        loop.stop.set()

    helper = threading.Thread(target=edit_then_stop)
    helper.start()
    assert loop.run() == 0
    helper.join(10)
    said = [json.loads(line) for line in buf.getvalue().splitlines()]
    actions = [e["action"] for e in said]
    assert actions[0] == "error" and "entry: not found" in said[0]["error"]
    assert "rerun" in actions and actions[-1] == "stopped"
    assert rt.launches == 2 and printed[0]["event"] == "exit"
