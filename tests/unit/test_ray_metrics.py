"""The supervisor's copy of an app's counters into Ray's metrics (actors.metrics):
deltas, not totals; a new run's counters start again; and it copies no more often
than Ray reports them. No Ray is started: the Ray metric objects are fakes."""

from __future__ import annotations

from typing import Any, cast

from actors import ray_api
from actors.metrics import Exporter


class Recorded:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.seen.append(("inc", value, tags))

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.seen.append(("set", value, tags))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.seen.append(("observe", value, tags))


class FakeMetrics:
    def __init__(self) -> None:
        self.calls, self.latency, self.exits = Recorded(), Recorded(), Recorded()
        self.restarts, self.cpu, self.memory = Recorded(), Recorded(), Recorded()
        self.dropped = Recorded()


def info(calls: int, cpu: float, restarts: int = 0) -> dict[str, Any]:
    return {"restarts": restarts, "usage": {"cpuSeconds": cpu, "memoryBytes": 1000},
            "metrics": {"calls": [{"method": "system.ping", "outcome": "ok",
                                   "count": calls}],
                        "latency": {"buckets": [0.001], "counts": [calls, 0]}}}


def test_each_copy_adds_what_changed_since_the_last_one() -> None:
    exporter = Exporter("app1", lambda: {}, interval=3600)
    try:
        m = FakeMetrics()
        export = cast(Any, exporter.export)
        export(m, info(calls=5, cpu=1.5))
        export(m, info(calls=7, cpu=2.0))
        export(m, info(calls=7, cpu=2.0))  # nothing new: nothing added
        tags = {"app": "app1", "method": "system.ping", "outcome": "ok"}
        assert m.calls.seen == [("inc", 5, tags), ("inc", 2, tags)]
        assert [v for _, v, _ in m.cpu.seen] == [1.5, 0.5]
        assert len(m.latency.seen) == 7  # one per call
        assert m.memory.seen[-1] == ("set", 1000.0, {"app": "app1"})
        # A restarted app's counters start at 0 again: the new run's count is added.
        export(m, info(calls=3, cpu=0.25, restarts=1))
        assert m.calls.seen[-1] == ("inc", 3, tags)
        assert m.restarts.seen == [("inc", 1.0, {"app": "app1"})]
    finally:
        exporter.close()


def test_it_copies_as_often_as_ray_reports_metrics_not_more() -> None:
    exporter = Exporter("app2", lambda: {})
    try:
        assert exporter._interval == ray_api.metrics_report_seconds()
        assert exporter._interval >= 1.0
    finally:
        exporter.close()
