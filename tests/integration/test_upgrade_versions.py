"""Issue 13's upgrade, in both modes: ``install --no-restart`` of a new version while the
old one runs leaves that run, and its crash-restarts, on the old version's files and
policy (its own folder, which nothing changes); the next explicit restart runs the new."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import psutil

from estarter.runtime import Runtime
from estarter.store import AppStore
from tests.apps import processes_with, reports, wait_until, write_app

APP = """\
import os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "data.txt")) as fh:
    data = fh.read()
report(code=VERSION, data=data, args=sys.argv[1:], folder=here, pid=os.getpid())
while True:
    time.sleep(0.2)
"""


def versioned(tmp_path: Path, version: str) -> Path:
    folder = write_app(tmp_path / version, "pinned", f"VERSION = {version!r}\n" + APP,
                       version=version, restart="always", args=[f"policy-{version}"])
    (folder / "data.txt").write_text(f"files-{version}")
    return folder


def test_a_crash_restart_after_a_deferred_upgrade_runs_the_old_version_whole(
        runtime: Runtime, tmp_path: Path) -> None:
    runtime.install(versioned(tmp_path, "0.1.0"))
    v1_folder = AppStore(runtime.home).get("pinned")[1]
    runtime.launch("pinned")
    try:
        assert wait_until(lambda: reports(runtime, "pinned"), 120)
        first = reports(runtime, "pinned")[0]
        v1 = {"code": "0.1.0", "data": "files-0.1.0", "args": ["policy-0.1.0"],
              "folder": str(v1_folder)}
        assert {k: first[k] for k in v1} == v1

        deferred = runtime.install(versioned(tmp_path, "0.2.0"), restart=False)
        assert deferred["restarted"] is False
        v2_folder = AppStore(runtime.home).get("pinned")[1]
        assert v2_folder != v1_folder and v1_folder.is_dir()

        crash(v1_folder)  # the supervisor restarts it
        assert wait_until(lambda: len(reports(runtime, "pinned")) >= 2, 180)
        again = reports(runtime, "pinned")[1]
        assert {k: again[k] for k in v1} == v1  # v1's files, entry, args: not a mix

        runtime.restart("pinned", 5.0)  # an explicit restart takes the current version
        assert wait_until(lambda: len(reports(runtime, "pinned")) >= 3, 180)
        third = reports(runtime, "pinned")[2]
        v2 = {"code": "0.2.0", "data": "files-0.2.0", "args": ["policy-0.2.0"],
              "folder": str(v2_folder)}
        assert {k: third[k] for k in v2} == v2
    finally:
        runtime.stop("pinned", 2.0)


def crash(folder: Path) -> None:
    """SIGKILL the app run from ``folder`` (found by its entry on the command line: the
    pid the app sees is its sandbox's); the sandbox and the app may take each other."""
    victims = processes_with(str(folder / "app.py"))
    assert victims
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def test_a_running_version_outlives_two_upgrades_until_its_run_ends(
        runtime: Runtime, tmp_path: Path) -> None:
    runtime.install(versioned(tmp_path, "0.1.0"))
    v1_folder = AppStore(runtime.home).get("pinned")[1]
    runtime.launch("pinned")
    try:
        assert wait_until(lambda: reports(runtime, "pinned"), 120)
        runtime.install(versioned(tmp_path, "0.2.0"), restart=False)
        runtime.install(versioned(tmp_path, "0.3.0"), restart=False)
        # 0.1.0 is neither current nor previous now, but the run pins its folder.
        store = AppStore(runtime.home)
        assert store.previous("pinned").version == "0.2.0"  # type: ignore[union-attr]
        assert (v1_folder / "data.txt").read_text() == "files-0.1.0"
        crash(v1_folder)
        assert wait_until(lambda: len(reports(runtime, "pinned")) >= 2, 180)
        assert reports(runtime, "pinned")[1]["data"] == "files-0.1.0"
        runtime.restart("pinned", 5.0)
        assert wait_until(lambda: len(reports(runtime, "pinned")) >= 3, 180)
        assert reports(runtime, "pinned")[2]["data"] == "files-0.3.0"
    finally:
        runtime.stop("pinned", 2.0)
    AppStore(runtime.home)  # the 0.1.0 run has ended: the next store change removes it
    assert not v1_folder.exists()
    assert len([p for p in v1_folder.parent.iterdir() if p.is_dir()]) == 2
