"""Per-app metrics through ``ray.util.metrics``, from each supervisor actor.

The supervisor counts (``estarter.metrics.AppMetrics``, ~1 us per call); a thread
here copies its snapshot into Ray's metrics as deltas, so nothing of Ray's is on the
app's call path. It copies as often as Ray reports a worker's metrics to the node's
agent (``metrics_report_interval_ms``, 10 s by default), not more often: a copy in
between is never seen, and each one walks the app's processes. Names match the
console's ``/metrics`` (Ray adds its own ``ray_`` prefix in its export); every series
has an ``app`` tag.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from estarter.metrics import LATENCY_BUCKETS

from . import ray_api

log = logging.getLogger(__name__)

MAX_OBSERVATIONS = 10000  # per export: a histogram is fed one observation at a time


class _Metrics:
    """The Ray metric objects, made once per worker process."""

    def __init__(self) -> None:
        app = ("app",)
        self.calls = ray_api.metric("counter", "estarter_api_calls",
                                    "API calls by method and outcome",
                                    ("app", "method", "outcome"))
        self.latency = ray_api.metric("histogram", "estarter_api_call_duration_seconds",
                                      "API call latency seen by the supervisor", app,
                                      list(LATENCY_BUCKETS))
        self.exits = ray_api.metric("counter", "estarter_app_exits",
                                    "Ends of the app's process by reason", ("app", "reason"))
        self.restarts = ray_api.metric("counter", "estarter_app_restarts",
                                       "Restarts by the supervisor", app)
        self.cpu = ray_api.metric("counter", "estarter_app_cpu_seconds",
                                  "CPU time of the app's processes", app)
        self.memory = ray_api.metric("gauge", "estarter_app_memory_bytes",
                                     "Resident memory of the app's processes", app)
        self.dropped = ray_api.metric("counter", "estarter_app_log_lines_dropped",
                                      "App log lines dropped by the log budget", app)


_made: _Metrics | None = None


class Exporter:
    """Copies one app's counters into Ray's metrics until ``close``. Idempotent close."""

    def __init__(self, app_id: str, info: Callable[[], dict[str, Any]],
                 interval: float | None = None) -> None:
        self.app_id = app_id
        self._info = info
        self._interval = ray_api.metrics_report_seconds() if interval is None else interval
        self._seen: dict[Any, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"estarter-metrics-{app_id}")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        global _made
        while not self._stop.wait(self._interval):
            try:
                if _made is None:
                    _made = _Metrics()
                self.export(_made, self._info())
            except Exception as exc:  # metrics must never take a supervisor down
                log.warning("metrics export of %s failed: %s", self.app_id, exc)

    def _delta(self, key: Any, value: float) -> float:
        before = self._seen.get(key, 0.0)
        self._seen[key] = value
        return value - before if value >= before else value  # a new run starts at 0

    def export(self, m: _Metrics, info: dict[str, Any]) -> None:
        tags = {"app": self.app_id}
        snap = info.get("metrics") or {}
        for c in snap.get("calls", []):
            d = self._delta(("calls", c["method"], c["outcome"]), c["count"])
            if d > 0:
                m.calls.inc(d, tags={**tags, "method": c["method"], "outcome": c["outcome"]})
        for reason, n in (snap.get("exits") or {}).items():
            d = self._delta(("exits", reason), n)
            if d > 0:
                m.exits.inc(d, tags={**tags, "reason": reason})
        lat = snap.get("latency")
        if lat:
            budget = MAX_OBSERVATIONS
            bounds = [*lat["buckets"], lat["buckets"][-1] * 2]
            for i, (bound, n) in enumerate(zip(bounds, lat["counts"], strict=True)):
                d = int(self._delta(("lat", i), n))
                for _ in range(min(d, budget)):
                    m.latency.observe(bound, tags=tags)  # the bucket's upper bound
                budget -= min(d, budget)
        for key, value, metric in (
                ("restarts", info.get("restarts") or 0, m.restarts),
                ("cpu", (info.get("usage") or {}).get("cpuSeconds") or 0.0, m.cpu),
                ("dropped", (info.get("messages") or {}).get("droppedLogLines")
                 or info.get("droppedLogLines") or 0, m.dropped)):
            d = self._delta(key, float(value))
            if d > 0:
                metric.inc(d, tags=tags)
        m.memory.set(float((info.get("usage") or {}).get("memoryBytes") or 0), tags=tags)
