"""Supervisor restart policy with a fake host, a fake clock and a manual scheduler:
no processes, no sleeps, every delay observed exactly."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.hosting.base import ExitInfo, ExitReason, HostContext, HostState
from estarter.manifest import parse_manifest
from estarter.policy import SandboxPolicy
from estarter.supervision import RestartRules, Supervisor

RULES = RestartRules(initial_delay=1.0, max_delay=8.0, stable_after=30.0, max_restarts=5,
                     window=60.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeHost:
    """Starts at once; ``end(code)`` is the app exiting."""

    def __init__(self, ctx: HostContext, pid: int) -> None:
        self.ctx = ctx
        self._pid = pid
        self._state = HostState.STARTING
        self.closed = False

    @property
    def state(self) -> HostState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self) -> None:
        self._state = HostState.RUNNING

    def end(self, code: int) -> None:
        self._state = HostState.EXITED
        reason = ExitReason.EXITED if code == 0 else ExitReason.CRASHED
        self.ctx.on_exit(ExitInfo(code, reason, f"exit code {code}"))

    def stop(self, grace: float = 5.0) -> ExitInfo:
        if self._state is HostState.RUNNING:
            self._state = HostState.EXITED
            info = ExitInfo(None, ExitReason.STOPPED, "stopped")
            self.ctx.on_exit(info)
            return info
        return ExitInfo(None, ExitReason.STOPPED, "already ended")

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        return None

    def notify(self, method: str, params: Any) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"appId": "app", "state": self._state.value, "pid": self._pid}

    def close(self) -> None:
        self.closed = True


class FakeKernel:
    def __init__(self) -> None:
        self.started: list[int] = []
        self.exits: list[dict[str, Any]] = []

    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        fut.set_result(None)
        return fut

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        self.started.append(info["pid"])

    def logs(self, app_id: str, lines: list[tuple[str, str]]) -> None:
        pass

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        self.exits.append(exit_info)


class Scheduler:
    """Records each (delay, action) instead of starting a timer."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], Any]] = []
        self.delays: list[float] = []

    def __call__(self, delay: float, action: Callable[[], None]) -> Any:
        scheduler = self

        class Handle:
            cancelled = False

            def cancel(self) -> None:
                self.cancelled = True
                scheduler.pending = [p for p in scheduler.pending if p[2] is not self]

        handle = Handle()
        self.pending.append((delay, action, handle))
        self.delays.append(delay)
        return handle

    def fire(self) -> None:
        _, action, _ = self.pending.pop(0)
        action()


class Rig:
    def __init__(self, tmp: Path, restart: str, rules: RestartRules = RULES) -> None:
        manifest = parse_manifest(json.dumps({"id": "app", "runtime": "python",
                                              "entry": "app.py", "restart": restart}))
        self.policy = SandboxPolicy.from_manifest(manifest, tmp, granted=frozenset())
        self.clock = FakeClock()
        self.schedule = Scheduler()
        self.kernel = FakeKernel()
        self.hosts: list[FakeHost] = []
        self.sup = Supervisor(self.policy, 1, self.kernel, tmp / "home",
                              host_factory=self._factory, rules=rules, clock=self.clock,
                              schedule=self.schedule)

    def _factory(self, policy: SandboxPolicy, ctx: HostContext) -> FakeHost:
        host = FakeHost(ctx, 100 + len(self.hosts))
        self.hosts.append(host)
        return host

    @property
    def host(self) -> FakeHost:
        return self.hosts[-1]


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(restart: str, rules: RestartRules = RULES) -> Rig:
        (tmp_path / "app.py").write_text("")
        rig = Rig(tmp_path, restart, rules)
        rigs.append(rig)
        rig.sup.start()
        return rig

    yield make
    for rig in rigs:
        rig.sup.close()


def test_on_failure_backs_off_doubling_capped_then_fails(rig_factory: Callable[..., Rig]
                                                        ) -> None:
    rig = rig_factory("on-failure")
    for _ in range(RULES.max_restarts):
        rig.host.end(1)
        rig.clock.now += 0.5  # crashes at once: no stable run
        rig.schedule.fire()
    assert rig.schedule.delays == [1.0, 2.0, 4.0, 8.0, 8.0]  # doubling, capped at 8
    assert rig.sup.wait(0) is None  # still supervised
    rig.host.end(1)  # one more than max_restarts within the window
    final = rig.sup.wait(0)
    assert final is not None and final["failed"] is True
    assert (final["reason"], final["code"], final["restarts"]) == ("crashed", 1, 5)
    assert rig.kernel.exits == [final]
    assert len(rig.hosts) == 6 and rig.kernel.started == [100, 101, 102, 103, 104, 105]


def test_never_stays_exited(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("never")
    rig.host.end(1)
    final = rig.sup.wait(0)
    assert final is not None and (final["reason"], final["failed"]) == ("crashed", False)
    assert rig.schedule.delays == [] and len(rig.hosts) == 1


def test_on_failure_does_not_restart_a_clean_exit(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("on-failure")
    rig.host.end(0)
    final = rig.sup.wait(0)
    assert final is not None and final["reason"] == "exited"
    assert rig.schedule.delays == []


def test_always_restarts_a_clean_exit(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("always")
    rig.host.end(0)
    assert rig.schedule.delays == [1.0]
    rig.schedule.fire()
    assert rig.host.state is HostState.RUNNING and len(rig.hosts) == 2


def test_backoff_resets_after_a_stable_run(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("on-failure")
    for _ in range(3):
        rig.host.end(1)
        rig.schedule.fire()
    rig.clock.now += RULES.stable_after + RULES.window  # ran long and well
    rig.host.end(1)
    assert rig.schedule.delays == [1.0, 2.0, 4.0, 1.0]


def test_intensity_counts_only_restarts_inside_the_window(rig_factory: Callable[..., Rig]
                                                          ) -> None:
    rules = RestartRules(initial_delay=1.0, max_delay=1.0, stable_after=1e9, max_restarts=2,
                         window=10.0)
    rig = rig_factory("always", rules)
    for _ in range(6):  # a crash every 6 s: never more than 2 restarts in 10 s
        rig.host.end(1)
        rig.clock.now += 6.0
        rig.schedule.fire()
    assert rig.sup.wait(0) is None and len(rig.hosts) == 7


def test_stop_during_backoff_ends_at_once_as_stopped(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("always")
    rig.host.end(1)
    assert len(rig.schedule.pending) == 1
    final = rig.sup.stop(grace=1.0)
    assert (final["reason"], final["failed"]) == ("stopped", False)
    assert rig.schedule.pending == []  # the restart was cancelled
    assert rig.sup.info()["restartAt"] is None


def test_stop_while_running_is_final(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("always")
    final = rig.sup.stop(grace=1.0)
    assert final["reason"] == "stopped" and rig.schedule.delays == []


def test_rules_from_env() -> None:
    rules = RestartRules.from_env({"ESTARTER_RESTART_INITIAL_DELAY": "0.1",
                                   "ESTARTER_RESTART_MAX_RESTARTS": "2"})
    assert (rules.initial_delay, rules.max_restarts, rules.window) == (0.1, 2, 60.0)
    assert RestartRules.from_env({}) == RestartRules()
    with pytest.raises(ValueError, match="ESTARTER_RESTART_WINDOW"):
        RestartRules.from_env({"ESTARTER_RESTART_WINDOW": "soon"})
    with pytest.raises(ValueError, match="must be >= 0"):
        RestartRules.from_env({"ESTARTER_RESTART_MAX_DELAY": "-1"})
    assert RestartRules(**rules.to_dict()) == rules
