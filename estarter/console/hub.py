"""Live updates for the console's pages: one poller thread, many SSE subscribers.

The poller follows the kernel's event log (a long poll, so an exit or a
notification arrives within one round trip), asks the permissions actor for open
``permission.request`` rows, and rebuilds the app rows at least once a second and
at once after a lifecycle event. It runs only while a page is subscribed: a
console nobody watches asks the runtime nothing. Every subscriber has a bounded
queue; one that falls behind is dropped (its browser reconnects and gets a fresh
snapshot), so a slow tab never holds up the others or grows the console.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
REFRESH_SECONDS = 1.0
QUEUE_ITEMS = 1000
LIFECYCLE_EVENTS = frozenset({"launched", "exit", "relaunch", "recovered", "process.launch"})


@dataclass(eq=False)
class Subscriber:
    """One SSE stream. ``app_id``: also receive that app's log lines."""

    loop: asyncio.AbstractEventLoop
    app_id: str | None = None
    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_ITEMS))
    dropped: bool = False


class Hub:
    def __init__(self, backend: Backend, clock: Callable[[], float] = time.monotonic,
                 poll: float = POLL_SECONDS, refresh: float = REFRESH_SECONDS) -> None:
        self.backend = backend
        self._clock = clock
        self._poll = poll
        self._refresh = refresh
        self._lock = threading.Lock()
        self._subs: set[Subscriber] = set()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._apps: list[dict[str, Any]] | None = None
        self._pending: list[dict[str, Any]] | None = None
        self._cpu: dict[tuple[str, Any], tuple[float, float]] = {}
        self._dirty = True

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, app_id: str | None = None) -> Subscriber:
        sub = Subscriber(asyncio.get_running_loop(), app_id)
        with self._lock:
            self._subs.add(sub)
            if self._apps is not None:
                self._put(sub, {"kind": "apps", "apps": self._apps})
            if self._pending is not None:
                self._put(sub, {"kind": "pending", "pending": self._pending})
            self._dirty = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="estarter-console-hub")
                self._thread.start()
            self._wake.notify_all()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def close(self) -> None:
        """Stop the poller and end every stream. Idempotent."""
        with self._lock:
            self._closed = True
            subs, self._subs = list(self._subs), set()
            self._wake.notify_all()
            thread = self._thread
        for sub in subs:
            self._put(sub, None)
        if thread is not None:
            thread.join(10)

    # -- the poller --------------------------------------------------------------

    def _run(self) -> None:
        cursor: int | None = None
        last_refresh = 0.0
        while True:
            with self._lock:
                while not self._subs and not self._closed:
                    self._wake.wait()  # idle: nobody watches
                if self._closed:
                    return
            try:
                if cursor is None:
                    cursor = self.backend.cursor()
                batch = self.backend.events(cursor, self._poll)
                cursor = int(batch["next"])
                for event in batch["events"]:
                    self._route(event)
                pending = self.backend.pending()
                if pending != self._pending:
                    self._pending = pending
                    self._broadcast({"kind": "pending", "pending": pending})
                now = self._clock()
                if self._dirty or now - last_refresh >= self._refresh:
                    self._dirty = False
                    last_refresh = now
                    apps = self._with_cpu(self.backend.apps(), now)
                    self._apps = apps
                    self._broadcast({"kind": "apps", "apps": apps})
            except Exception as exc:  # the runtime restarting, a lost connection: next round
                log.warning("console poller step failed: %s", exc)
                self._broadcast({"kind": "error", "message": "the runtime did not answer"})
                with self._lock:
                    self._wake.wait(1.0)

    def _route(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "log":
            self._broadcast({"kind": "log", "appId": event.get("appId"),
                             "time": event.get("time"), "level": event.get("level"),
                             "stream": event.get("stream"), "message": event.get("message")},
                            only_app=event.get("appId"))
        elif kind == "notification":
            self._broadcast({"kind": "notification", **{k: event.get(k) for k in (
                "appId", "time", "title", "message", "level", "id")}})
        elif kind in LIFECYCLE_EVENTS:
            self._dirty = True
            self._broadcast({"kind": "event", "event": kind, "appId": event.get("appId"),
                             "time": event.get("time"), "reason": event.get("reason")})

    def _with_cpu(self, apps: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """CPU % since the previous sample of the same run (None for the first)."""
        seen: dict[tuple[str, Any], tuple[float, float]] = {}
        for row in apps:
            key = (row["appId"], row.get("runId"))
            cpu = row.get("cpuSeconds")
            row["cpuPercent"] = None
            if cpu is None:
                continue
            prev = self._cpu.get(key)
            if prev is not None and now > prev[1]:
                row["cpuPercent"] = round(max(0.0, cpu - prev[0]) / (now - prev[1]) * 100, 1)
            seen[key] = (float(cpu), now)
        self._cpu = seen
        return apps

    def _broadcast(self, item: dict[str, Any], only_app: Any = None) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if only_app is None or sub.app_id == only_app:
                self._put(sub, item)

    def _put(self, sub: Subscriber, item: dict[str, Any] | None) -> None:
        def put() -> None:
            if sub.dropped:
                return
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.dropped = True  # fell behind: its stream ends, the page reconnects
                self.unsubscribe(sub)
                sub.queue.get_nowait()
                sub.queue.put_nowait(None)

        try:
            sub.loop.call_soon_threadsafe(put)
        except RuntimeError:  # its loop is closed
            self.unsubscribe(sub)
