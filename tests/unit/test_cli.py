"""The CLI's file-only commands in-process (no Ray), app records, and kernel recovery
with a fake spawner."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from estarter.cli import app
from estarter.cli_apps import actor_lines
from estarter.kernel.core import Kernel, kernel_db
from estarter.kernel.permissions import PermissionManager
from estarter.paths import log_file, state_db
from estarter.policy import SandboxPolicy
from estarter.state import AppRecords
from estarter.store import AppStore


def make_app(root: Path, app_id: str, **manifest: Any) -> Path:
    folder = root / app_id
    folder.mkdir(parents=True)
    (folder / "app.py").write_text("print('hi')\n")
    (folder / "manifest.json").write_text(json.dumps(
        {"id": app_id, "runtime": "python", "entry": "app.py", **manifest}))
    return folder


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--home", str(home)])


def ok_json(home: Path, *args: str) -> Any:
    result = run(home, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("estarter: error:"), result.stderr
    return lines[0]


def test_install_list_inspect_uninstall(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = make_app(tmp_path, "notes", permissions=["fs.read", "system.info"],
                      restart="on-failure")
    row = ok_json(home, "install", str(folder), "--grant", "system.info")
    assert (row["appId"], row["restart"]) == ("notes", "on-failure")
    assert row["granted"] == ["fs.read", "system.info"]
    assert (row["ungranted"], row["grantCommand"]) == ([], None)
    listed = ok_json(home, "list")
    assert [(r["appId"], r["state"]) for r in listed] == [("notes", "installed")]
    at_rest = ok_json(home, "inspect", "notes")
    assert at_rest["manifest"]["id"] == "notes" and at_rest["exit"] is None
    assert at_rest["permissions"]["granted"] == ["fs.read", "system.info"]
    gone = ok_json(home, "uninstall", "notes")
    assert gone == {"appId": "notes", "uninstalled": True, "keptData": False}
    assert ok_json(home, "list") == []
    assert PermissionManager(state_db(home)).granted("notes") == frozenset()


def test_install_eapp_and_upgrade(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = make_app(tmp_path, "pkg", version="1.0.0")
    packed = CliRunner().invoke(app, ["pack", str(folder), "-o", str(tmp_path / "pkg.eapp")])
    assert packed.exit_code == 0, packed.stderr
    assert ok_json(home, "install", str(tmp_path / "pkg.eapp"))["version"] == "1.0.0"
    (folder / "manifest.json").write_text(json.dumps(
        {"id": "pkg", "runtime": "python", "entry": "app.py", "version": "1.1.0"}))
    assert ok_json(home, "install", str(folder))["version"] == "1.1.0"
    assert [r["version"] for r in ok_json(home, "list")] == ["1.1.0"]


def test_hostile_zip_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    AppStore(home)  # the folders a home has anyway
    before = {p for p in tmp_path.rglob("*")}
    evil = tmp_path / "evil.app.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"id": "evil", "entry": "app.py"}))
        zf.writestr("app.py", "")
        zf.writestr("../../escaped.txt", "gotcha")
    before.add(evil)
    line = one_error_line(run(home, "install", str(evil)))
    assert "escaped.txt" in line
    assert {p for p in tmp_path.rglob("*")} - before == set()
    assert list((home / "staging").iterdir()) == [] and list((home / "apps").iterdir()) == []


@pytest.mark.parametrize("args", [
    ["install", "/no/such/app"],
    ["uninstall", "never-installed"],
    ["inspect", "never-installed"],
    ["logs", "never-ran"],
    ["start", "anything"],
    ["stop", "anything"],
    ["ps"],
    ["install", "/tmp", "--grant", "no.such.permission"],
    # Every flag that names a permission, checked before anything starts (no Ray here).
    ["run", "--local", "/tmp", "--grant", "bogus.perm"],
    ["run", "/tmp", "--grant", "bogus.perm"],
    ["run", "/tmp", "--grant", "fs.read", "--grant", "bogus"],
    ["start", "anything", "--grant", "bogus"],
    ["install", "/tmp", "--grant", "bogus"],
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    one_error_line(run(tmp_path / "home", *args))


def test_runtime_commands_say_how_to_start_one(tmp_path: Path) -> None:
    assert "estarter up" in one_error_line(run(tmp_path / "home", "ps"))


def test_logs_prints_the_tail(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = log_file(home, "chatty")
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"2026-01-01 00:00:00,000 INFO line {i}\n" for i in range(50)))
    result = run(home, "logs", "chatty", "-n", "3")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"2026-01-01 00:00:00,000 INFO line {i}"
                                          for i in (47, 48, 49)]


def test_doctor_one_line_per_capability(tmp_path: Path) -> None:
    data = ok_json(tmp_path / "home", "doctor")
    assert {c["name"] for c in data["capabilities"]} >= {"cgroup", "sandbox.bwrap"}
    assert data["runtime"] == {"up": False, "address": None, "actors": []}
    human = run(tmp_path / "home", "doctor")
    assert len(human.stdout.splitlines()) == len(data["capabilities"]) + 1


def test_doctor_warns_when_ray_runs_the_actors_below_normal_priority() -> None:
    row = {"role": "kernel", "name": "estarter-kernel", "node": "n", "pid": 1,
           "alive": True}
    assert not any("warning" in line for line in actor_lines([{**row, "nice": 0}]))
    lines = actor_lines([{**row, "nice": 0}, {**row, "role": "supervisor", "nice": 15}])
    assert "nice 15" in lines[1]
    assert lines[-1].startswith("warning: Ray runs estarter's workers at nice 15")
    assert '{"worker_niceness":0}' in lines[-1]


def test_down_without_runtime_is_a_no_op(tmp_path: Path) -> None:
    assert ok_json(tmp_path / "home", "down")["stopped"] is False


# -- app records -------------------------------------------------------------------


def test_records_survive_reopening_and_run_ids_never_repeat(tmp_path: Path) -> None:
    db = kernel_db(tmp_path)
    first = AppRecords(db)
    a = first.next_run_id()
    first.launched("x", a, "x", "always")
    first.supervised("x", a, "estarter-sup-k-1")
    first.close()
    again = AppRecords(db)
    row = again.get("x")
    assert row is not None and (row.wanted, row.supervisor, row.state) == (
        True, "estarter-sup-k-1", "running")
    b = again.next_run_id()
    again.forget("x")
    assert again.next_run_id() > b > a  # a forgotten app does not free its run ids
    again.launched("y", 9, "y", "never")
    again.ended("y", 9, "exited", {"code": 0, "reason": "exited"}, keep_wanted=True)
    assert [r.app_id for r in again.wanted()] == ["y"]  # going down keeps intent
    again.ended("y", 9, "exited", {"code": 0, "reason": "exited"})
    assert again.wanted() == []
    again.close()
    again.close()  # idempotent


def test_records_keep_the_node_of_the_last_run(tmp_path: Path) -> None:
    """Where the run ran survives a kernel restart (its log file is there); a report
    without a node keeps it; a new launch clears it until that run reports."""
    db = kernel_db(tmp_path)
    first = AppRecords(db)
    run = first.begin_run("x", "x", "never")
    assert first.get("x").node_id is None  # type: ignore[union-attr]
    first.supervised("x", run, "sup-1", node_id="w1")
    first.supervised("x", run, "sup-1")  # the supervisor's own report of a restart
    first.ended("x", run, "exited", {"code": 0})
    first.close()
    again = AppRecords(db)
    row = again.get("x")
    assert row is not None and row.node_id == "w1" and row.to_json()["nodeId"] == "w1"
    again.supervised("x", run + 1, "sup-2", node_id="w2")  # not this row's run
    assert again.get("x").node_id == "w1"  # type: ignore[union-attr]
    again.begin_run("x", "x", "never")
    assert again.get("x").node_id is None  # type: ignore[union-attr]
    again.close()


def test_records_of_an_older_version_gain_the_node_column(tmp_path: Path) -> None:
    import sqlite3

    db = kernel_db(tmp_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE app_records (
          app_id TEXT PRIMARY KEY, run_id INTEGER NOT NULL, ref TEXT NOT NULL,
          wanted INTEGER NOT NULL, supervisor TEXT, restart TEXT NOT NULL,
          state TEXT NOT NULL, exit TEXT, updated_at REAL NOT NULL);
        INSERT INTO app_records VALUES ('x', 4, 'x', 1, 'sup-x', 'always', 'running',
                                        NULL, 1.0);""")
    old.commit()
    old.close()
    records = AppRecords(db)
    row = records.get("x")
    assert row is not None and (row.run_id, row.supervisor, row.node_id) == (4, "sup-x", None)
    records.supervised("x", 4, "sup-x", node_id="w1")
    assert records.get("x").node_id == "w1"  # type: ignore[union-attr]
    assert records.begin_run("y", "y", "never") == 5
    records.close()
    AppRecords(db).close()  # opened again: the column is there, nothing to add


def test_begin_run_records_the_launch_with_a_new_run_id(tmp_path: Path) -> None:
    records = AppRecords(kernel_db(tmp_path))
    a = records.next_run_id()
    b = records.begin_run("x", "/apps/x", "on-failure")
    row = records.get("x")
    assert b > a and row is not None
    assert (row.run_id, row.ref, row.wanted, row.restart, row.state) == (
        b, "/apps/x", True, "on-failure", "starting")
    assert records.next_run_id() > b  # the run id it handed out is never handed out again
    records.close()


# -- recovery ----------------------------------------------------------------------


class FakePort:
    def __init__(self, final: dict[str, Any] | None = None) -> None:
        self.stopped = False

    def stop(self, grace: float) -> dict[str, Any]:
        self.stopped = True
        return {"code": None, "reason": "stopped", "detail": ""}

    def notify(self, method: str, params: Any) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"state": "running"}


class FakeSpawner:
    def __init__(self) -> None:
        self.spawned: list[tuple[str, int]] = []

    def spawn(self, policy: SandboxPolicy, run_id: int) -> FakePort:
        self.spawned.append((policy.app_id, run_id))
        return FakePort()


@pytest.fixture
def home_with_records(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    for app_id, restart in (("alive", "never"), ("gone-always", "always"),
                            ("gone-never", "never")):
        AppStore(home).install(make_app(tmp_path, app_id, restart=restart))
    records = AppRecords(kernel_db(home))
    for run_id, app_id in enumerate(("alive", "gone-always", "gone-never"), start=1):
        restart = "always" if app_id == "gone-always" else "never"
        records.launched(app_id, run_id, app_id, restart)
        records.supervised(app_id, run_id, f"sup-{app_id}")
    records.close()
    yield home


def test_recovery_adopts_live_supervisors_and_relaunches_lost_apps_per_policy(
        home_with_records: Path) -> None:
    home = home_with_records
    spawner = FakeSpawner()
    records = AppRecords(kernel_db(home))
    kernel = Kernel(home, PermissionManager(state_db(home)), spawner, AppStore(home),
                    serve_socket=False, records=records)
    live = FakePort()

    def attach(name: str, app_id: str, run_id: int) -> Any:
        if name != "sup-alive":
            return None
        policy = SandboxPolicy.from_manifest(*AppStore(home).get(app_id),
                                             granted=frozenset())
        return live, {"pid": 42, "node": "n1"}, policy

    try:
        report = kernel.recover(attach)
        assert report["adopted"] == ["alive"]
        assert report["lost"] == ["gone-always", "gone-never"]
        assert report["relaunched"] == ["gone-always"]
        assert [a for a, _ in spawner.spawned] == ["gone-always"]
        assert spawner.spawned[0][1] > 3  # a fresh run id
        states = {r["appId"]: r for r in kernel.list_apps()}
        assert (states["alive"]["state"], states["alive"]["pid"]) == ("running", 42)
        assert states["gone-never"]["state"] == "failed"
        assert states["gone-never"]["exit"]["reason"] == "supervisor_lost"
        kernel.stop("alive", 1.0)
        assert live.stopped and records.get("alive").wanted is False  # type: ignore[union-attr]
    finally:
        kernel.shutdown()
        kernel.permissions.close()
        records.close()


def test_install_lists_what_stays_ungranted_and_the_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = make_app(tmp_path, "writer", permissions=["fs.write", "system.info", "ipc.send"])
    row = ok_json(home, "install", str(folder), "--grant", "system.info")
    assert row["granted"] == ["ipc.send", "system.info"]
    assert row["ungranted"] == ["fs.write"]
    assert row["grantCommand"] == "estarter permissions grant writer fs.write"
    human = run(home, "install", str(folder))
    assert human.exit_code == 0, human.stderr
    assert "not granted (requested by its manifest): fs.write" in human.stderr
    assert "grant with: estarter permissions grant writer fs.write" in human.stderr


RUN_WITHOUT_RAY = """
import sys
from typer.testing import CliRunner
from estarter.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(result.exit_code, "ray" in sys.modules)
print(result.output)
"""


@pytest.mark.parametrize("what", ["typo", "broken manifest", "not a folder"])
def test_run_refuses_bad_input_before_any_ray_starts(tmp_path: Path, what: str) -> None:
    # Embedded `run` used to start Ray (5-10 s) before saying that the app does not
    # exist; now the app is read first and Ray is never imported for a bad one.
    import subprocess
    import sys

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"id": "broken", "runtime": "python"')
    (tmp_path / "file.txt").write_text("x")
    ref = {"typo": "nosuchapp", "broken manifest": str(broken),
           "not a folder": str(tmp_path / "file.txt")}[what]
    proc = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_RAY, "run", ref, "--home", str(tmp_path / "h")],
        capture_output=True, text=True, timeout=120)
    status, *output = proc.stdout.splitlines()
    assert status == "2 False", proc.stdout + proc.stderr
    lines = [line for line in output if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("estarter: error: "), lines
