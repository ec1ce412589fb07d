"""A bounded, sequenced log of what happened, for ``estarter run`` and ``logs -f``.

Readers long-poll with the last sequence number they saw; the buffer keeps the
newest ``capacity`` events and at most ``max_bytes`` of their text (each event is
charged the length of its string fields plus a fixed overhead), so a reader that
falls behind loses the oldest ones (it is told how many) and the kernel's memory
stays bounded however big the events an app manages to cause.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

EVENT_LOG_ENTRIES = 20000
EVENT_LOG_BYTES = 16 * 1024 * 1024
EVENT_OVERHEAD = 256  # bytes charged per event besides its strings (dict, floats, ints)


def _cost(fields: dict[str, Any]) -> int:
    return EVENT_OVERHEAD + sum(len(v) for v in fields.values() if isinstance(v, str))


class EventLog:
    def __init__(self, capacity: int = EVENT_LOG_ENTRIES, clock: Callable[[], float] = time.time,
                 max_bytes: int = EVENT_LOG_BYTES) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._costs: collections.deque[int] = collections.deque()
        self._capacity, self._max_bytes = capacity, max_bytes
        self._bytes = 0
        self._cond = threading.Condition()
        self._next = 1
        self._clock = clock

    def append(self, kind: str, app_id: str | None, **fields: Any) -> int:
        with self._cond:
            seq = self._next
            self._next += 1
            cost = _cost(fields)
            self._events.append(
                {"seq": seq, "time": self._clock(), "event": kind, "appId": app_id, **fields}
            )
            self._costs.append(cost)
            self._bytes += cost
            while len(self._events) > 1 and (len(self._events) > self._capacity
                                             or self._bytes > self._max_bytes):
                self._events.popleft()
                self._bytes -= self._costs.popleft()
            self._cond.notify_all()
            return seq

    def statistics(self) -> dict[str, int]:
        """Events and bytes held now, and the caps."""
        with self._cond:
            return {"events": len(self._events), "bytes": self._bytes,
                    "maxEvents": self._capacity, "maxBytes": self._max_bytes}

    def cursor(self) -> int:
        """The sequence number of the newest event (0 if none yet)."""
        with self._cond:
            return self._next - 1

    def since(
        self, seq: int, timeout: float = 0.0, app_id: str | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        """Events after ``seq`` (waiting up to ``timeout`` for one); never blocks longer."""
        deadline = time.monotonic() + max(0.0, min(timeout, 30.0))
        with self._cond:
            while True:
                out = [e for e in self._events
                       if e["seq"] > seq and (app_id is None or e["appId"] == app_id)][:limit]
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    break
                self._cond.wait(remaining)
            oldest = self._events[0]["seq"] if self._events else self._next
            missed = max(0, oldest - seq - 1) if seq > 0 else 0
            last = out[-1]["seq"] if out else seq
            return {"events": out, "next": last, "missed": missed}
