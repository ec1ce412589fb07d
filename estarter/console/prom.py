"""``/metrics``: the console's rows in the Prometheus text format.

Written with ``prometheus_client``'s metric families and encoder (the reference
implementation of the format: escaping of label values, ``_total`` / ``_bucket``
suffixes), from one ``Backend.apps()`` snapshot per scrape: nothing is sampled
between scrapes, so a console nobody scrapes costs nothing. Counters are per run of
an app (its supervisor's), so they reset when an app is launched again: Prometheus'
``rate()`` and ``increase()`` handle resets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

STATES = ("installed", "starting", "running", "restarting", "stopping", "exited", "failed")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    def __init__(self, apps: list[dict[str, Any]], pending: list[dict[str, Any]]) -> None:
        self.apps = apps
        self.pending = pending

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.apps, self.pending))


def render(apps: list[dict[str, Any]], pending: list[dict[str, Any]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(apps, pending))
    return generate_latest(registry)


def families(apps: Iterable[dict[str, Any]], pending: list[dict[str, Any]]) -> list[Metric]:
    info = GaugeMetricFamily("estarter_app_info", "Installed or known app (value 1)",
                             labels=["app", "version", "runtime"])
    state = GaugeMetricFamily("estarter_app_state",
                              "1 for the app's current state, 0 for the others",
                              labels=["app", "state"])
    up = GaugeMetricFamily("estarter_app_up", "1 while the app's process runs",
                           labels=["app"])
    restarts = CounterMetricFamily("estarter_app_restarts",
                                   "Restarts by the supervisor in the current run",
                                   labels=["app"])
    exits = CounterMetricFamily("estarter_app_exits", "Ends of the app's process by reason",
                                labels=["app", "reason"])
    ooms = CounterMetricFamily("estarter_app_oom_kills",
                               "Ends because the app went over memoryLimitMb", labels=["app"])
    cpu = CounterMetricFamily("estarter_app_cpu_seconds",
                              "CPU time of the app's processes (user + system)",
                              labels=["app"])
    mem = GaugeMetricFamily("estarter_app_memory_bytes",
                            "Resident memory of the app's processes", labels=["app"])
    dropped = CounterMetricFamily("estarter_app_log_lines_dropped",
                                  "App log lines dropped by the log budget", labels=["app"])
    calls = CounterMetricFamily("estarter_api_calls", "API calls by method and outcome",
                                labels=["app", "method", "outcome"])
    denials = CounterMetricFamily("estarter_permission_denials",
                                  "API calls answered permission denied (-32001)",
                                  labels=["app"])
    latency = HistogramMetricFamily("estarter_api_call_duration_seconds",
                                    "API call latency seen by the app's supervisor",
                                    labels=["app"])
    waiting = GaugeMetricFamily("estarter_permission_requests_pending",
                                "permission.request calls waiting for the operator",
                                labels=["app"])
    for row in apps:
        app = str(row["appId"])
        info.add_metric([app, str(row.get("version") or ""), str(row.get("runtime") or "")], 1)
        current = str(row.get("state") or "installed")
        for name in STATES:
            state.add_metric([app, name], 1.0 if current == name else 0.0)
        up.add_metric([app], 1.0 if current == "running" and row.get("pid") else 0.0)
        restarts.add_metric([app], float(row.get("restarts") or 0))
        if row.get("cpuSeconds") is not None:
            cpu.add_metric([app], float(row["cpuSeconds"]))
        if row.get("memoryBytes") is not None:
            mem.add_metric([app], float(row["memoryBytes"]))
        dropped.add_metric([app], float(row.get("droppedLogLines") or 0))
        m = row.get("metrics") or {}
        denied = 0
        for c in m.get("calls", []):
            calls.add_metric([app, c["method"], c["outcome"]], float(c["count"]))
            if c["outcome"] == "denied":
                denied += c["count"]
        denials.add_metric([app], float(denied))
        by_reason = m.get("exits") or {}
        for reason, n in sorted(by_reason.items()):
            exits.add_metric([app, reason], float(n))
        ooms.add_metric([app], float(by_reason.get("memory_limit", 0)))
        lat = m.get("latency")
        if lat:
            cumulative, buckets = 0, []
            for bound, n in zip([*lat["buckets"], float("inf")], lat["counts"], strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)),
                                float(cumulative)))
            latency.add_metric([app], buckets, float(lat["sum"]))
    per_app: dict[str, int] = {}
    for p in pending:
        per_app[p["appId"]] = per_app.get(p["appId"], 0) + 1
    for app, n in sorted(per_app.items()):
        waiting.add_metric([app], float(n))
    return [info, state, up, restarts, exits, ooms, cpu, mem, dropped, calls, denials,
            latency, waiting]
