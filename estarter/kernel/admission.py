"""Per-app admission: no app can take every thread that serves calls.

Calls that may wait (``methods.BLOCKING_METHODS``) hold a thread each for as long
as they wait: each app may have at most ``MAX_WAITING_CALLS`` of them in progress,
whatever the number of its connections; one more is answered Busy (-32005) at once
(``Admission``). Quick calls are never refused: each app has at most
``MAX_QUICK_CALLS`` of them on the pool's threads, and the rest wait in the app's own
queue (``FairExecutor``), so an app flooding calls from many threads or connections
queues behind itself, not in front of other apps. Hosted apps are held the same way
by their supervisor (one quick call at a time, the same cap of waiting ones);
socket clients by the kernel's socket server.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from ..errors import Busy
from .methods import MAX_QUICK_CALLS, MAX_WAITING_CALLS


class Admission:
    """Thread-safe counts of each app's waiting calls in progress."""

    def __init__(self, max_waiting: int = MAX_WAITING_CALLS) -> None:
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._waiting: dict[str, int] = {}

    def enter(self, app_id: str, method: str) -> None:
        """Admit one waiting call of ``app_id``, or raise Busy."""
        with self._lock:
            now = self._waiting.get(app_id, 0)
            if now >= self.max_waiting:
                raise Busy(f"more than {self.max_waiting} waiting calls at once",
                           {"method": method})
            self._waiting[app_id] = now + 1

    def leave(self, app_id: str) -> None:
        with self._lock:
            left = self._waiting.get(app_id, 0) - 1
            if left > 0:
                self._waiting[app_id] = left
            else:
                self._waiting.pop(app_id, None)

    def waiting(self, app_id: str) -> int:
        with self._lock:
            return self._waiting.get(app_id, 0)


class FairExecutor:
    """Runs each app's jobs on ``pool``, at most ``per_app`` of one app at once;
    an app's other jobs wait in its own FIFO queue. Thread-safe."""

    def __init__(self, pool: concurrent.futures.Executor,
                 per_app: int = MAX_QUICK_CALLS) -> None:
        self._pool = pool
        self.per_app = per_app
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._queued: dict[str, collections.deque[tuple[concurrent.futures.Future[Any],
                                                        Callable[[], Any]]]] = {}

    def submit(self, app_id: str, fn: Callable[..., Any], *args: Any
               ) -> concurrent.futures.Future[Any]:
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()
        job = (out, lambda: fn(*args))
        with self._lock:
            if self._running.get(app_id, 0) >= self.per_app:
                self._queued.setdefault(app_id, collections.deque()).append(job)
                return out
            self._running[app_id] = self._running.get(app_id, 0) + 1
        self._start(app_id, job)
        return out

    def queued(self, app_id: str) -> int:
        with self._lock:
            return len(self._queued.get(app_id, ()))

    def _start(self, app_id: str,
               job: tuple[concurrent.futures.Future[Any], Callable[[], Any]]) -> None:
        out, call = job

        def run() -> None:
            try:
                if out.set_running_or_notify_cancel():
                    try:
                        out.set_result(call())
                    except BaseException as exc:
                        out.set_exception(exc)
            finally:
                self._next(app_id)

        try:
            self._pool.submit(run)
        except RuntimeError as exc:  # the pool is shut down
            out.set_exception(exc)
            self._next(app_id)

    def _next(self, app_id: str) -> None:
        with self._lock:
            queue = self._queued.get(app_id)
            if queue:
                job = queue.popleft()
                if not queue:
                    del self._queued[app_id]
            else:
                job = None
                left = self._running.get(app_id, 1) - 1
                if left > 0:
                    self._running[app_id] = left
                else:
                    self._running.pop(app_id, None)
        if job is not None:
            self._start(app_id, job)
