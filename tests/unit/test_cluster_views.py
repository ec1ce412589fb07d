"""One view of files and logs on a cluster (issue 16), without Ray: which nodes mount
the zones (estarter.storage), the sandbox without mounts, and ``estarter logs`` of a
running app read by its supervisor through the kernel socket (operator.logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from estarter.errors import InvalidParams
from estarter.hosting.base import ExitInfo, ExitReason, HostContext
from estarter.hosting.limits.sandbox import zone_mounts
from estarter.kernel.core import AppRecord, Kernel
from estarter.kernel.operator_access import OperatorService
from estarter.kernel.permissions import PermissionManager
from estarter.manifest import parse_manifest
from estarter.paths import kernel_db, log_file, state_db
from estarter.policy import SandboxPolicy
from estarter.state import AppRecords
from estarter.storage import (
    SHARED_STORAGE_ENV,
    log_elsewhere,
    lost_log_note,
    shared_from_env,
    zone_storage,
    zone_view,
)
from tests.apps import FAKE_RUNTIME_UP

ROOT = Path(__file__).resolve().parents[2]


def test_zone_view_mounts_only_where_the_files_are_the_vfs_ones() -> None:
    assert zone_view(None, "n1").direct  # one machine
    assert zone_view({"shared": False, "vfsNode": "head"}, "head").direct
    off = zone_view({"shared": False, "vfsNode": "head"}, "worker")
    assert not off.direct and SHARED_STORAGE_ENV in off.reason
    assert zone_view({"shared": True, "vfsNode": "head"}, "worker").direct
    assert shared_from_env({SHARED_STORAGE_ENV: "1"})
    assert shared_from_env({SHARED_STORAGE_ENV: "yes"})
    assert not shared_from_env({SHARED_STORAGE_ENV: "0"}) and not shared_from_env({})
    assert "only on the VFS" in zone_storage({"shared": False, "vfsNode": "h"})["directMounts"]


def test_no_zone_mounts_without_direct_zones(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    manifest = parse_manifest(json.dumps({"id": "a", "runtime": "python", "entry": "app.py",
                                          "permissions": ["fs.read", "fs.write"]}))
    policy = SandboxPolicy.from_manifest(manifest, tmp_path, frozenset({"fs.read", "fs.write"}))

    def ctx(direct: bool) -> HostContext:
        return HostContext(api=lambda m, p: None, log=lambda lv, m: None,  # type: ignore[arg-type,return-value]
                           on_exit=lambda e: None, home=tmp_path, appdata=tmp_path / "ad",
                           zones={"shared": tmp_path / "sh"}, direct_zones=direct)

    assert {v for v, _, _ in zone_mounts(policy, ctx(True))} == {"/appdata", "/shared"}
    assert zone_mounts(policy, ctx(False)) == []


class LogKernel:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.asked: list[tuple[str, int]] = []

    def app_log(self, app_id: str, lines: int = 100) -> dict[str, object]:
        self.asked.append((app_id, lines))
        return {"appId": app_id, "source": "supervisor", "lines": ["x"]}


def test_operator_logs_asks_the_kernel_and_checks_lines(tmp_path: Path) -> None:
    kernel = LogKernel(tmp_path)
    service = OperatorService(kernel)  # type: ignore[arg-type]
    assert service.handle("operator.logs", {"appId": "a", "lines": 5})["lines"] == ["x"]
    assert kernel.asked == [("a", 5)]
    for bad in (-1, "5", True, 10**6):
        with pytest.raises(InvalidParams):
            service.handle("operator.logs", {"appId": "a", "lines": bad})


def test_cli_logs_of_a_running_app_come_from_its_supervisor(tmp_path: Path) -> None:
    """``estarter logs APP`` and ``-f`` against a fake kernel behind the real socket
    server: the lines its supervisor read (no log file on this node), each once."""
    script = FAKE_RUNTIME_UP + textwrap.dedent("""
        L = "2026-11-29 10:00:0%d,000 INFO stdout line %d"
        answers = [["supervisor", [L % (1, 1), L % (2, 2)]],      # logs a
                   ["supervisor", [L % (1, 1), L % (2, 2)]],      # logs a -f: first
                   ["supervisor", [L % (0, 0), L % (1, 1), L % (2, 2), L % (3, 3)]],
                   ["file", [L % (2, 2), L % (3, 3), L % (4, 4)]]]  # ended
        calls = []

        class FakeKernel:
            def __init__(self):
                self.home = home
            def app_log(self, app_id, lines=100):
                calls.append([app_id, lines])
                source, got = answers.pop(0) if answers else ("file", [])
                return {"appId": app_id, "source": source, "nodeId": "w1", "lines": got}

        server = SocketServer(home / "run", lambda *a: None, lambda t: None,
                              lambda *a: None, lambda *a: None,
                              operator=OperatorService(FakeKernel()))
        server.start()
        from estarter.cli import app
        print("RUN1")
        assert not app(["logs", "a", "--home", str(home)], standalone_mode=False)
        print("RUN2")
        assert not app(["logs", "a", "-f", "-n", "2", "--home", str(home)],
                       standalone_mode=False)
        server.close()
        print("CALLS", json.dumps(calls))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESTARTER_", "RAY_"))}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    first = out[out.index("RUN1") + 1:out.index("RUN2")]
    assert [ln.rsplit(" ", 2)[1:] for ln in first] == [["line", "1"], ["line", "2"]]
    second = [ln for ln in out[out.index("RUN2") + 1:] if " stdout line " in ln]
    assert [ln.rsplit(" ", 1)[1] for ln in second] == ["1", "2", "3", "4"]
    calls = json.loads(next(ln for ln in out if ln.startswith("CALLS "))[6:])
    assert calls[0] == ["a", 100] and calls[1] == ["a", 2]


def test_log_elsewhere_only_for_another_node_without_shared_storage() -> None:
    assert log_elsewhere({"shared": False, "vfsNode": "head"}, "w1")
    assert not log_elsewhere({"shared": False, "vfsNode": "head"}, "head")
    assert not log_elsewhere({"shared": True, "vfsNode": "head"}, "w1")  # one file view
    assert not log_elsewhere(None, "w1")  # one machine
    assert not log_elsewhere({"shared": False, "vfsNode": "head"}, None)
    note = lost_log_note("a", "10.0.0.7", "w1" * 10)
    assert "10.0.0.7" in note and "lost" in note and "w1w1w1" in note


class LogSpawner:
    """A Ray spawner's log side: the ended run's node answers, or is gone."""

    places_apps = True

    def __init__(self, lost: bool) -> None:
        self.storage = {"shared": False, "vfsNode": "head"}
        self.lost = lost
        self.asked: list[tuple[str, str, int]] = []

    def read_log(self, node_id: str, app_id: str, lines: int = 100) -> dict[str, object]:
        self.asked.append((node_id, app_id, lines))
        if self.lost:
            return {"lost": True, "node": "worker-1", "nodeId": node_id, "lines": []}
        return {"lost": False, "node": "worker-1", "nodeId": "w1-again", "lines": ["there"]}


@pytest.mark.parametrize("lost", [False, True])
def test_log_of_a_run_ended_on_another_node_is_read_there_or_said_lost(
        tmp_path: Path, lost: bool) -> None:
    """Not this node's file of the same name (another file, without shared storage)."""
    home = tmp_path / "h"
    spawner = LogSpawner(lost)
    kernel = Kernel(home, PermissionManager(state_db(home)), spawner=spawner)  # type: ignore[arg-type]
    try:
        (tmp_path / "app.py").write_text("")
        manifest = parse_manifest(json.dumps({"id": "a", "runtime": "python",
                                              "entry": "app.py"}))
        rec = AppRecord("a", 1, SandboxPolicy.from_manifest(manifest, tmp_path, frozenset()),
                        0.0)
        rec.node_id = "w1"
        rec.exit = ExitInfo(None, ExitReason.NODE_LOST)
        kernel._apps["a"] = rec
        here = log_file(home, "a")
        here.parent.mkdir(parents=True, exist_ok=True)
        here.write_text("2026-11-29 10:00:00,000 INFO stdout the head's own file\n")
        got = kernel.app_log("a", 7)
        assert spawner.asked == [("w1", "a", 7)]
        if lost:
            assert got["source"] == "lost" and got["lines"] == []
            assert "worker-1" in got["note"] and "not reachable" in got["note"]
        else:
            assert got["source"] == "node" and got["lines"] == ["there"]
            assert got["nodeId"] == "w1-again"
        rec.node_id = "head"  # a run on the kernel's node: its file here
        assert "the head's own file" in kernel.app_log("a")["lines"][0]
    finally:
        kernel.shutdown()
        kernel.permissions.close()


def test_log_of_a_run_on_another_node_is_read_there_after_a_kernel_restart(
        tmp_path: Path) -> None:
    """The kernel's runs in memory are gone after a restart: the node of the app's
    last run comes from its record, not this node's file of the same name."""
    home = tmp_path / "h"
    records = AppRecords(kernel_db(home))
    run = records.begin_run("a", "a", "never")
    records.supervised("a", run, "sup-a", node_id="w1")
    records.ended("a", run, "exited", {"code": 0})
    here = log_file(home, "a")
    here.parent.mkdir(parents=True, exist_ok=True)
    here.write_text("2026-11-29 10:00:00,000 INFO stdout the head's own file\n")
    spawner = LogSpawner(lost=False)
    kernel = Kernel(home, PermissionManager(state_db(home)), spawner=spawner,  # type: ignore[arg-type]
                    records=records)
    try:
        assert "a" not in kernel._apps  # as after a restart
        got = kernel.app_log("a", 5)
        assert spawner.asked == [("w1", "a", 5)]
        assert got["source"] == "node" and got["lines"] == ["there"]
        assert kernel.app_log("b")["source"] == "file"  # no record: this node's file
        assert spawner.asked == [("w1", "a", 5)]
    finally:
        kernel.shutdown()
        kernel.permissions.close()
        records.close()


def test_cli_logs_of_a_lost_node_say_so(tmp_path: Path) -> None:
    """``estarter logs APP`` whose last run's node is gone: one line naming the node,
    exit 2, no traceback, not this node's file."""
    script = FAKE_RUNTIME_UP + textwrap.dedent("""
        (home / "logs").mkdir(parents=True, exist_ok=True)

        class FakeKernel:
            def __init__(self):
                self.home = home
            def app_log(self, app_id, lines=100):
                return {"appId": app_id, "source": "lost", "nodeId": "w1", "lines": [],
                        "note": "the last run's log of a was on node worker-1: lost"}

        server = SocketServer(home / "run", lambda *a: None, lambda t: None,
                              lambda *a: None, lambda *a: None,
                              operator=OperatorService(FakeKernel()))
        server.start()
        from estarter.cli import main
        sys.argv = ["estarter", "logs", "a", "--home", str(home)]
        try:
            main()
        finally:
            server.close()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESTARTER_", "RAY_"))}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "was on node worker-1: lost" in proc.stderr
    assert "Traceback" not in proc.stderr
