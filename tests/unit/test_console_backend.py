"""The console's real backend (``RuntimeBackend``) over a fake runtime: its app rows
come from one ``Kernel.ps`` call, never one ``info`` per app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from estarter.console.backend import RuntimeBackend


class FakeKernel:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.calls = 0

    def ps(self) -> list[dict[str, Any]]:
        self.calls += 1
        return self.rows


class FakeRuntime:
    def __init__(self, home: Path, rows: list[dict[str, Any]]) -> None:
        self.home = home
        self.kernel = FakeKernel(rows)

    def list_installed(self) -> list[dict[str, Any]]:
        return [{"appId": "inst", "name": "Installed", "version": "1.0", "runtime": "python",
                 "state": "installed", "exit": None},
                {"appId": "up", "name": "Up", "version": "2.0", "runtime": "python",
                 "state": "running", "exit": None}]

    def info(self, app_id: str) -> dict[str, Any]:
        raise AssertionError("the console asked an app's info for its list")


def test_app_rows_come_from_one_ps_call(tmp_path: Path) -> None:
    metrics = {"calls": [{"method": "system.ping", "outcome": "ok", "count": 5}]}
    rows = [{"appId": "up", "state": "running", "pid": 42, "node": "10.0.0.1",
             "runId": 3, "runtime": "python", "startedAt": 1.0, "exit": None,
             "restarts": 1, "cpuSeconds": 0.5, "memoryBytes": 1 << 20,
             "restartAt": None, "metrics": metrics, "droppedLogLines": 2},
            {"appId": "adhoc", "state": "restarting", "pid": None, "node": None,
             "runId": 1, "runtime": "wasm", "startedAt": 1.0, "exit": None,
             "restarts": None, "cpuSeconds": None, "memoryBytes": None,
             "restartAt": 5.0, "metrics": None, "droppedLogLines": 0}]
    rt = FakeRuntime(tmp_path, rows)
    apps = {r["appId"]: r for r in RuntimeBackend(rt).apps()}
    assert rt.kernel.calls == 1
    assert set(apps) == {"inst", "up", "adhoc"}
    assert apps["inst"]["state"] == "installed" and apps["inst"]["pid"] is None
    up = apps["up"]
    assert (up["name"], up["version"], up["installed"]) == ("Up", "2.0", True)
    assert (up["pid"], up["restarts"], up["cpuSeconds"]) == (42, 1, 0.5)
    assert up["metrics"] == metrics and up["droppedLogLines"] == 2
    adhoc = apps["adhoc"]
    assert adhoc["installed"] is False and adhoc["state"] == "restarting"
    assert adhoc["restarts"] == 0 and adhoc["restartAt"] == 5.0


def test_logs_carry_the_note_of_a_lost_node(tmp_path: Path) -> None:
    """A last run whose node is gone has no lines: the console shows why, not nothing."""
    note = "the last run's log of far was on node worker-1, which is gone: lost"

    class LogRuntime(FakeRuntime):
        def app_log(self, app_id: str, lines: int = 100) -> dict[str, Any]:
            if app_id == "far":
                return {"appId": app_id, "source": "lost", "nodeId": "w1", "lines": [],
                        "note": note}
            return {"appId": app_id, "source": "file", "lines": ["a", "b"][-lines:]}

    backend = RuntimeBackend(LogRuntime(tmp_path, []))
    assert backend.logs("far", 200) == {"lines": [], "note": note}
    assert backend.logs("near", 1) == {"lines": ["b"]}
