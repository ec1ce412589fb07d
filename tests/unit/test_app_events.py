"""Who hears of other apps starting and ending: the apps that may list processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.kernel.core import Kernel
from estarter.kernel.permissions import PermissionManager
from estarter.paths import kernel_db, state_db
from estarter.policy import SandboxPolicy
from estarter.state import AppRecords


class RecordingPort:
    """A supervisor that keeps what the kernel pushed to its app."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def notify(self, method: str, params: Any) -> None:
        self.pushed.append((method, params))

    def stop(self, grace: float) -> dict[str, Any]:
        return {"code": 0, "reason": "stopped", "detail": ""}

    def info(self) -> dict[str, Any]:
        return {"state": "running"}


class RecordingSpawner:
    def __init__(self) -> None:
        self.ports: dict[str, RecordingPort] = {}

    def spawn(self, policy: SandboxPolicy, run_id: int) -> RecordingPort:
        self.ports[policy.app_id] = RecordingPort()
        return self.ports[policy.app_id]


def _app(root: Path, app_id: str, permissions: list[str], **fields: Any) -> Path:
    folder = root / app_id
    folder.mkdir(parents=True)
    (folder / "app.py").write_text("print('hi')\n")
    (folder / "manifest.json").write_text(json.dumps(
        {"id": app_id, "runtime": "python", "entry": "app.py", "permissions": permissions,
         **fields}))
    return folder


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[tuple[Kernel, RecordingSpawner]]:
    home = tmp_path / "home"
    spawner = RecordingSpawner()
    k = Kernel(home, PermissionManager(state_db(home)), spawner, serve_socket=False)
    try:
        yield k, spawner
    finally:
        k.shutdown()
        k.permissions.close()


def _run(k: Kernel, folder: Path, grants: list[str] | None = None) -> str:
    rec = k.launch(str(folder), grants=grants)
    k.app_running(rec["appId"], rec["runId"], {"pid": 1, "node": "n"})
    return str(rec["appId"])


def _events(port: RecordingPort) -> list[tuple[str, str]]:
    return [(p["name"], p["data"].get("appId", "")) for m, p in port.pushed
            if m == "system.event"]


def test_app_events_reach_only_apps_granted_system_info(kernel: Any, tmp_path: Path) -> None:
    k, spawner = kernel
    _run(k, _app(tmp_path, "watcher", ["system.info"]), grants=["system.info"])
    _run(k, _app(tmp_path, "asked", ["system.info"]))  # requested, not granted
    _run(k, _app(tmp_path, "blind", []))
    newcomer = _run(k, _app(tmp_path, "newcomer", []))
    k.stop(newcomer, 1.0)

    assert _events(spawner.ports["watcher"]) == [
        ("app.launched", "asked"), ("app.launched", "blind"),
        ("app.launched", "newcomer"), ("app.terminated", "newcomer")]
    assert _events(spawner.ports["asked"]) == []
    assert _events(spawner.ports["blind"]) == []


def test_a_start_reported_twice_is_heard_and_recorded_once(kernel: Any,
                                                           tmp_path: Path) -> None:
    # Under Ray the launch and the supervisor both report the same start; a restart
    # in place (another process, same run) is a start of its own.
    k, spawner = kernel
    _run(k, _app(tmp_path, "watcher", ["system.info"]), grants=["system.info"])
    k.records = records = AppRecords(kernel_db(k.home))
    rec = k.launch(str(_app(tmp_path, "twice", [])))
    writes: list[Any] = []
    real = records.supervised
    records.supervised = (  # type: ignore[method-assign]
        lambda *a, **kw: (writes.append(a), real(*a, **kw)))
    for _ in range(2):
        k.app_running("twice", rec["runId"], {"pid": 7, "node": "n", "nodeId": "abc",
                                              "actorName": "sup"})
    k.app_running("twice", rec["runId"], {"pid": 8, "node": "n", "nodeId": "abc",
                                          "actorName": "sup"})
    try:
        assert _events(spawner.ports["watcher"]) == [("app.launched", "twice")] * 2
        assert len(writes) == 2
        row = records.get("twice")
        assert row is not None and row.node_id == "abc"
    finally:
        k.records = None  # the fixture's shutdown runs without this test's records
        records.close()


def test_a_grant_revoked_stops_the_app_events(kernel: Any, tmp_path: Path) -> None:
    k, spawner = kernel
    _run(k, _app(tmp_path, "watcher", ["system.info"]), grants=["system.info"])
    _run(k, _app(tmp_path, "first", []))
    k.permissions.revoke("watcher", ["system.info"])
    _run(k, _app(tmp_path, "second", []))
    assert _events(spawner.ports["watcher"]) == [("app.launched", "first")]


def test_system_shutdown_still_reaches_every_app(kernel: Any, tmp_path: Path) -> None:
    k, spawner = kernel
    _run(k, _app(tmp_path, "blind", []))
    k.system_shutdown()  # the fixture's shutdown after it is a no-op
    assert ("system.event", {"name": "system.shutdown", "data": {}}) in \
        spawner.ports["blind"].pushed


def test_a_spawner_hears_of_a_launch_once_resolved_and_releases_what_it_readied(
        tmp_path: Path) -> None:
    from estarter.errors import Busy, EstarterError

    class ExpectingSpawner(RecordingSpawner):
        def __init__(self) -> None:
            super().__init__()
            self.expected: list[tuple[str | None, int]] = []  # (app, apps spawned then)
            self.released: list[tuple[str | None, int]] = []
            self.requests: list[tuple[int, int] | None] = []  # (cpu %, memory bytes)

        def expect_launch(self, app_id: str | None,
                          requests: tuple[int, int] | None = None) -> Any:
            self.expected.append((app_id, len(self.ports)))
            self.requests.append(requests)
            return lambda: self.released.append((app_id, len(self.ports)))

    home = tmp_path / "home"
    spawner = ExpectingSpawner()
    k = Kernel(home, PermissionManager(state_db(home)), spawner, serve_socket=False)
    try:
        one = _app(tmp_path, "one", [])
        k.launch(str(one))
        with pytest.raises(EstarterError):
            k.launch(str(tmp_path / "no-such-app"))  # not resolved: nothing announced
        with pytest.raises(Busy):
            k.launch(str(one))  # announced, then refused: released all the same
        assert spawner.expected == [("one", 0), ("one", 1)] and list(spawner.ports) == ["one"]
        assert spawner.released == [("one", 1), ("one", 1)]  # after the spawn, and after Busy
        # What the launch will ask of the cluster, from the manifest: picks the warm
        # supervisor of that shape (actors.pool).
        assert spawner.requests == [(0, 0), (0, 0)]
        big = _app(tmp_path, "big", [], memoryLimitMb=64, cpuQuota=50)
        k.launch(str(big))
        assert spawner.requests[-1] == (50, 64 << 20)
    finally:
        k.shutdown()
        k.permissions.close()
