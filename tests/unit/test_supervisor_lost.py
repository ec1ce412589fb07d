"""Supervision under faults (hardening, section 3), without Ray:
- a failed ``wait`` on a supervisor that still answers is a transient error: the
  supervisor is watched again and its app's real end is reported, not
  ``supervisor_lost``;
- a supervisor that does not answer is reported lost; the kernel then applies the
  app's restart policy itself (the supervisor that would have restarted it is gone).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from actors import ray_api
from actors.spawner import RaySpawner, supervisor_answers
from estarter.errors import ActorUnavailable, EstarterError
from estarter.hosting.base import ExitReason, lost
from estarter.kernel.core import Kernel
from estarter.kernel.permissions import PermissionManager
from estarter.paths import state_db
from estarter.store import AppStore
from tests.apps import wait_until

from .test_cli import FakeSpawner, make_app

TIMEOUT = 30.0


class FakeRef:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome


class FakeMethod:
    """A supervisor method: each call takes the next outcome (the last one repeats)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def next(self) -> Any:
        self.calls += 1
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]

    def remote(self, *_: Any) -> FakeRef:
        return FakeRef(self.next())


class FakeSupervisor:
    def __init__(self, waits: list[Any], readies: list[Any]) -> None:
        self.wait = FakeMethod(*waits)
        self.ready = FakeMethod(*readies)


def outcome(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_api, "wait", lambda refs, timeout: (list(refs), []))
    monkeypatch.setattr(ray_api, "get", lambda ref, timeout=None: outcome(ref.outcome))
    monkeypatch.setattr(ray_api, "call", lambda method, *a, timeout=None, group=None:
                        outcome(method.next()))
    monkeypatch.setattr(ray_api, "kill", lambda handle, no_restart=True: None)
    monkeypatch.setattr(ray_api, "node_alive", lambda node: True)


class Pool:
    def __init__(self) -> None:
        self.flushed = 0

    def give_back(self, handle: Any) -> None:
        pass

    def expire(self) -> int:
        return 0

    def flush(self) -> int:
        self.flushed += 1
        return 0

    def close(self) -> None:
        pass


def watch(tmp_path: Path, sup: FakeSupervisor, pool: Pool | None = None) -> dict[str, Any]:
    spawner = RaySpawner(tmp_path, pool_size=0)
    spawner.pool = pool or Pool()  # type: ignore[assignment]
    got: dict[str, Any] = {}
    done = threading.Event()

    def on_exited(app_id: str, run_id: int, final: dict[str, Any]) -> None:
        got.update(final)
        done.set()

    spawner.on_exited = on_exited
    spawner._add_watch(sup, "app", 1, "node-1", False)
    assert done.wait(TIMEOUT), "no end was reported"
    return got


def test_transient_wait_error_of_a_live_supervisor_is_not_a_loss(fake_ray: None,
                                                                 tmp_path: Path) -> None:
    transient = ActorUnavailable("actor is gone: RPC failed (injected)")
    sup = FakeSupervisor(waits=[transient, {"code": 0, "reason": "exited", "detail": ""}],
                         readies=["ready"])
    got = watch(tmp_path, sup)
    assert got["reason"] == "exited"  # the app's real end, after watching again
    assert sup.wait.calls == 2 and sup.ready.calls == 1


def test_a_supervisor_that_does_not_answer_is_lost(fake_ray: None, tmp_path: Path) -> None:
    dead = ActorUnavailable("actor is gone: its worker process has died")
    sup = FakeSupervisor(waits=[dead], readies=[dead])
    pool = Pool()
    got = watch(tmp_path, sup, pool)
    assert got["reason"] == "supervisor_lost" and got["failed"] is True
    assert pool.flushed == 0
    assert sup.ready.calls == 3  # asked CONFIRM_TRIES times before calling it lost


def test_a_lost_node_takes_the_idle_warm_supervisors_out_of_the_pool(
        fake_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch that took a warm supervisor of a dead node would fail: after a node
    loss the pool is flushed (after the lost app is reported); not after a lone
    supervisor's loss."""
    monkeypatch.setattr(ray_api, "node_alive", lambda node: False)
    dead = ActorUnavailable("actor is gone: its node has died")
    pool = Pool()
    got = watch(tmp_path, FakeSupervisor(waits=[dead], readies=[dead]), pool)
    assert got["reason"] == "node_lost"
    assert wait_until(lambda: pool.flushed == 1, TIMEOUT)


def test_supervisor_answers_gives_up_after_the_tries() -> None:
    calls: list[int] = []

    def probe() -> None:
        calls.append(1)
        raise EstarterError("no")

    assert supervisor_answers(probe, tries=3, pause=0.0, sleep=lambda s: None) is False
    assert len(calls) == 3
    assert supervisor_answers(lambda: "ok", tries=3, pause=0.0) is True


@pytest.mark.parametrize("restart,relaunched", [("always", True), ("on-failure", True),
                                                ("never", False)])
def test_kernel_restarts_an_app_whose_supervisor_was_lost(tmp_path: Path, restart: str,
                                                          relaunched: bool) -> None:
    home = tmp_path / "home"
    AppStore(home).install(make_app(tmp_path, "lossy", restart=restart))
    spawner = FakeSpawner()
    kernel = Kernel(home, PermissionManager(state_db(home)), spawner, AppStore(home),
                    serve_socket=False)
    try:
        record = kernel.launch("lossy")
        kernel.app_running("lossy", record["runId"], {"pid": 1})
        kernel.app_exited("lossy", record["runId"],
                          lost(ExitReason.SUPERVISOR_LOST, "its worker process has died"))
        if relaunched:
            assert _wait(lambda: len(spawner.spawned) == 2), spawner.spawned
            again = kernel.app_info("lossy")
            assert again["runId"] != record["runId"] and again.get("exit") is None
            events = kernel.events.since(0, app_id="lossy")["events"]
            assert [e for e in events if e["event"] == "relaunch"], events
        else:
            info = kernel.app_info("lossy")
            assert info["exit"]["reason"] == "supervisor_lost" and len(spawner.spawned) == 1
    finally:
        kernel.shutdown()
        kernel.permissions.close()


def _wait(pred: Any, timeout: float = TIMEOUT) -> bool:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not done.is_set():
            if pred():
                return True
            done.wait(0.01)
        return bool(pred())
    finally:
        deadline.cancel()
