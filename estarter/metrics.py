"""Per-app numbers for operators: API calls by method and outcome, call latency,
exits by reason, CPU and memory of the app's processes. Plain Python, no Ray.

A supervisor keeps one ``AppMetrics`` for its app and reports ``snapshot()`` in its
``info()`` (and with its final exit), so every reader (the console's ``/metrics``,
``ps``, Ray's metrics export in ``actors/metrics.py``) reads the same numbers.

Cost on the call path: one ``perf_counter`` pair, a dict increment and a bisect,
about 1 us beside a ~1 ms call. Method labels come from the method table only
(anything else counts as ``other``), so an app cannot grow the label set.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import Counter
from typing import Any

import psutil

from .errors import PERMISSION_DENIED, EstarterError
from .kernel.methods import METHODS

# Seconds. From a supervisor-local answer (~0.1 ms) to a long wait (permission.request).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES = ("ok", "denied", "error")


def method_label(method: Any) -> str:
    """The method's name if the method table knows it (or ``log``), else ``other``."""
    return method if isinstance(method, str) and method in METHODS else "other"


def outcome_of(exc: BaseException | None) -> str:
    """``ok``, ``denied`` (answered -32001) or ``error``."""
    if exc is None:
        return "ok"
    if isinstance(exc, EstarterError) and exc.code == PERMISSION_DENIED:
        return "denied"
    return "error"


class AppMetrics:
    """Counters of one app's run. Thread-safe; ``snapshot`` is a plain-data copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._exits: Counter[str] = Counter()

    def call_done(self, method: Any, outcome: str, seconds: float) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        key = (method_label(method), outcome)
        with self._lock:
            self._calls[key] += 1
            self._buckets[i] += 1
            self._sum += seconds

    def exited(self, reason: str) -> None:
        with self._lock:
            self._exits[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": [{"method": m, "outcome": o, "count": n}
                          for (m, o), n in sorted(self._calls.items())],
                "latency": {"buckets": list(LATENCY_BUCKETS), "counts": list(self._buckets),
                            "sum": self._sum},
                "exits": dict(self._exits),
            }


def process_usage(pid: int | None) -> dict[str, Any]:
    """CPU seconds (user + system) and resident memory of ``pid`` and its descendants
    (the sandbox's processes); zeros if it is gone. For wasm apps, which run inside
    the supervisor's process, the caller passes None."""
    if not pid:
        return {"cpuSeconds": 0.0, "memoryBytes": 0}
    cpu, rss = 0.0, 0
    try:
        procs = [psutil.Process(p) for p in (pid, *descendants(pid))]
    except psutil.Error:
        return {"cpuSeconds": 0.0, "memoryBytes": 0}
    for proc in procs:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += proc.memory_info().rss
        except psutil.Error:
            continue
    return {"cpuSeconds": cpu, "memoryBytes": rss}


def descendants(pid: int) -> list[int]:
    """The pids below ``pid``, read from its own tree's ``/proc/<pid>/task/*/children``.

    psutil's ``children(recursive=True)`` reads every process of the node to find
    them: each supervisor samples its app every few seconds, so on a node of N apps
    that cost grew with N squared (a measured sixth of the supervisors' CPU at 100
    apps). Kernels without those files (CONFIG_PROC_CHILDREN) get psutil's walk.
    """
    if not _HAS_CHILDREN_FILES:
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # gone meanwhile
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


_HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
