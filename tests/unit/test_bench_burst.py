"""benchmarks.common.Burst: a launch that times out is checked, not blindly retried."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import Burst
from estarter.errors import ApiTimeout, EstarterError, NotFound


class FakeRuntime:
    """Apps named by what their launch does: ok, late (times out, runs anyway), lost
    (times out, never reached the kernel: the next launch works), dies (times out,
    the app ended), bad (refused)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.launches: dict[str, int] = {}
        self.stopped: list[str] = []
        self.reads: list[str] = []

    def launch(self, folder: Path) -> None:
        app_id = folder.name
        self.launches[app_id] = self.launches.get(app_id, 0) + 1
        kind = app_id.split("-")[0]
        first = self.launches[app_id] == 1
        if kind == "bad":
            raise EstarterError("refused")
        if kind == "late" and first:
            self.records[app_id] = {"state": "running", "exit": None}
            raise ApiTimeout("the runtime did not answer in time")
        if kind in ("lost", "dies") and first:
            if kind == "dies":
                self.records[app_id] = {"state": "failed", "exit": {"reason": "crashed"}}
            raise ApiTimeout("the runtime did not answer in time")
        self.records[app_id] = {"state": "running", "exit": None}

    def info(self, app_id: str) -> dict[str, Any]:
        self.reads.append(app_id)
        if app_id not in self.records:
            raise NotFound(f"app {app_id} is not known")
        return self.records[app_id]

    def stop(self, app_id: str, grace: float = 5.0) -> None:
        self.stopped.append(app_id)
        if app_id not in self.records:
            raise NotFound(f"app {app_id} is not known")


def _folders(*names: str) -> list[Path]:
    return [Path("/nowhere") / n for n in names]


def test_timed_out_launches_are_read_and_only_the_missing_relaunched() -> None:
    rt = FakeRuntime()
    burst = Burst(rt, 3, settle=0.0, name="t")
    burst.run(_folders("ok-1", "late-1", "lost-1", "dies-1", "bad-1", "ok-2"))
    assert sorted(burst.up) == ["dies-1", "late-1", "lost-1", "ok-1", "ok-2"]
    assert list(burst.failed) == ["bad-1"]
    assert burst.timeouts == 3
    assert rt.launches == {"ok-1": 1, "late-1": 1, "lost-1": 2, "dies-1": 2, "bad-1": 1,
                           "ok-2": 1}
    assert burst.short is None
    burst.stop_all()
    assert sorted(rt.stopped) == sorted(rt.launches)  # everything tried, once each


def test_retries_are_bounded() -> None:
    rt = FakeRuntime()
    rt.launch = lambda folder: (_ for _ in ()).throw(ApiTimeout("slow"))  # type: ignore[method-assign]
    burst = Burst(rt, 2, settle=0.0, retries=2, name="t")
    burst.run(_folders("lost-1", "lost-2"))
    assert burst.up == []
    assert sorted(burst.failed) == ["lost-1", "lost-2"]
    assert "not known" in burst.failed["lost-1"]
    assert burst.timeouts == 6  # the first launch and two retries each


def _short_after(n: int) -> Callable[[], str | None]:
    """A ``before`` that lets ``n`` launches through, then says memory is short."""
    calls = []

    def before() -> str | None:
        calls.append(1)
        return "memory short" if len(calls) > n else None

    return before


def test_before_stops_the_launching_and_says_why() -> None:
    rt = FakeRuntime()
    burst = Burst(rt, 1, before=_short_after(2), settle=0.0, name="t")
    burst.run(_folders(*(f"ok-{i}" for i in range(6))))
    assert burst.up == ["ok-0", "ok-1"]
    assert burst.short == "launches stopped at 2 of 6 apps: memory short"
    assert burst.tried == ["ok-0", "ok-1"]


def test_max_failed_stops_the_launching() -> None:
    rt = FakeRuntime()
    burst = Burst(rt, 1, max_failed=2, settle=0.0, name="t")
    burst.run(_folders("bad-1", "bad-2", "ok-1"))
    assert burst.up == []
    assert burst.short is not None and "2 failed" in burst.short
    assert "ok-1" not in rt.launches


def test_a_timeout_once_the_launching_stopped_is_not_read_nor_retried() -> None:
    rt = FakeRuntime()
    burst = Burst(rt, 1, before=_short_after(2), settle=0.0, name="t")
    burst.run(_folders("lost-1", "ok-1", "ok-2"))
    assert burst.up == ["ok-1"]
    assert list(burst.failed) == ["lost-1"]
    assert rt.reads == [] and rt.launches == {"lost-1": 1, "ok-1": 1}
    burst.stop_all()
    assert sorted(rt.stopped) == ["lost-1", "ok-1"]


def test_an_interrupt_stops_the_queued_launches() -> None:
    rt = FakeRuntime()
    calls = []

    def before() -> str | None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        if len(calls) > 2:
            time.sleep(0.5)  # the main thread takes the interrupt meanwhile
        return None

    burst = Burst(rt, 1, before=before, settle=0.0, name="t")
    with pytest.raises(KeyboardInterrupt):
        burst.run(_folders(*(f"ok-{i}" for i in range(6))))
    assert burst.short == "interrupted"
    assert len(rt.launches) <= 2  # the first, and at most the one begun meanwhile
