"""The spawner's watcher loop through a fake of ``actors.ray_api``: it reports each
supervisor's end, and keeps reporting after a step fails (a Ray hiccup, a report
that raises). No Ray is started."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from actors import ray_api
from actors.spawner import RaySpawner

TIMEOUT = 30.0


class FakeRef:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome


class FakeWait:
    def __init__(self, final: dict[str, Any]) -> None:
        self.final = final

    def remote(self, _: Any) -> FakeRef:
        return FakeRef(self.final)


class FakeSupervisor:
    def __init__(self, app_id: str) -> None:
        self.wait = FakeWait({"code": 0, "reason": "exited", "detail": app_id})


class FakePool:
    def __init__(self) -> None:
        self.given_back: list[Any] = []

    def give_back(self, handle: Any) -> None:
        self.given_back.append(handle)

    def expire(self) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    hiccups = {"wait": 1}

    def wait(refs: list[Any], timeout: float) -> tuple[list[Any], list[Any]]:
        if hiccups["wait"] > 0:
            hiccups["wait"] -= 1
            raise RuntimeError("the GCS did not answer")
        return list(refs), []

    monkeypatch.setattr(ray_api, "wait", wait)
    monkeypatch.setattr(ray_api, "get", lambda ref, timeout=None: ref.outcome)
    monkeypatch.setattr(ray_api, "kill", lambda handle, no_restart=True: None)
    return hiccups


def test_watcher_survives_failed_steps_and_keeps_reporting(fake_ray: dict[str, int],
                                                           tmp_path: Path) -> None:
    spawner = RaySpawner(tmp_path, pool_size=0)
    pool = FakePool()
    spawner.pool = pool  # type: ignore[assignment]  # a fake that records give_back
    reported: list[str] = []
    done = threading.Event()

    def on_exited(app_id: str, run_id: int, final: dict[str, Any]) -> None:
        reported.append(app_id)
        if app_id == "bad":
            raise RuntimeError("the kernel's report handler failed")
        if app_id == "later":
            done.set()

    spawner.on_exited = on_exited
    bad, good = FakeSupervisor("bad"), FakeSupervisor("good")
    spawner._add_watch(bad, "bad", 1, "node", False)
    spawner._add_watch(good, "good", 1, "node", False)
    later = FakeSupervisor("later")
    spawner._add_watch(later, "later", 1, "node", False)
    assert done.wait(TIMEOUT), reported
    assert sorted(reported) == ["bad", "good", "later"]
    assert fake_ray["wait"] == 0  # the failed step happened, and the loop went on
    assert {id(h) for h in pool.given_back} == {id(bad), id(good), id(later)}
