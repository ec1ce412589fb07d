"""Supervisor actors for the kernel: created from a warm pool, then watched.

Starting a Ray actor means starting a worker process (about 0.4 s here); a launch
should not wait for that. The pool keeps ``size`` idle supervisors started ahead
and refills in the background. A supervisor that dies without reporting its
app's end is reported as ``supervisor_lost`` (``node_lost`` if its node is gone).
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estarter.errors import EstarterError, LaunchError
from estarter.hosting.base import ExitReason
from estarter.kernel.core import lost
from estarter.policy import SandboxPolicy

from . import ray_api
from .supervisor import SupervisorActor

DEFAULT_POOL = int(os.environ.get("ESTARTER_SUPERVISOR_POOL", "1"))

# (app_id, run_id, info) -> None, and (app_id, run_id, exit dict) -> None
RunningCallback = Callable[[str, int, dict[str, Any]], None]
ExitedCallback = Callable[[str, int, dict[str, Any]], None]


class RaySupervisorPort:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._proxy = ray_api.SyncProxy(handle, timeout=60)

    def stop(self, grace: float) -> dict[str, Any]:
        return dict(self._proxy.stop(grace))

    def notify(self, method: str, params: Any) -> None:
        self.handle.notify.remote(method, params)

    def info(self) -> dict[str, Any]:
        return dict(self._proxy.info())


class SupervisorPool:
    """Idle supervisor actors, started ahead. Thread-safe."""

    def __init__(self, size: int = DEFAULT_POOL) -> None:
        self.size = max(0, size)
        self._lock = threading.Lock()
        self._idle: collections.deque[tuple[Any, Any]] = collections.deque()
        self.fill()

    def fill(self) -> None:
        with self._lock:
            while len(self._idle) < self.size:
                handle = SupervisorActor.remote()
                self._idle.append((handle, handle.ready.remote()))

    def take(self, options: dict[str, Any] | None = None) -> Any:
        """A supervisor actor: a warm one when the app needs no special placement."""
        if options:
            return SupervisorActor.options(**options).remote()
        with self._lock:
            pair = self._idle.popleft() if self._idle else None
        if pair is None:
            return SupervisorActor.remote()
        handle, ready = pair
        if not ray_api.get(ready, timeout=120):  # reset refused: it still runs an app
            return SupervisorActor.remote()
        # Refill a little later: a new worker's start-up should not compete for the
        # CPU with the app being launched right now.
        timer = threading.Timer(1.0, self.fill)
        timer.daemon = True
        timer.start()
        return handle

    def give_back(self, handle: Any) -> None:
        """Reuse a supervisor whose app ended, or kill it if the pool is full."""
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append((handle, handle.reset.remote()))
                return
        ray_api.kill(handle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), collections.deque()
            self.size = 0
        for handle, _ in idle:
            ray_api.kill(handle)


class RaySpawner:
    def __init__(self, home: Path, pool_size: int = DEFAULT_POOL) -> None:
        self.home = home
        self.on_running: RunningCallback | None = None
        self.on_exited: ExitedCallback | None = None
        self.pool = SupervisorPool(pool_size)
        self._lock = threading.Lock()
        self._watched: dict[Any, tuple[str, int, Any, str]] = {}
        self._wake = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name="estarter-supervisor-watch")
        self._watcher.start()

    def placement(self, policy: SandboxPolicy) -> dict[str, Any]:
        """Ray options for this app's supervisor; empty means any warm one will do."""
        return {}

    def spawn(self, policy: SandboxPolicy, run_id: int) -> RaySupervisorPort:
        handle = self.pool.take(self.placement(policy))
        try:
            started = ray_api.get(handle.start.remote(policy, run_id, str(self.home)),
                                  timeout=120)
        except EstarterError as exc:
            ray_api.kill(handle)
            raise LaunchError(f"{policy.app_id}: {exc.message}") from None
        if self.on_running is not None:
            self.on_running(policy.app_id, run_id, started)
        with self._lock:
            self._watched[handle.wait.remote(None)] = (policy.app_id, run_id, handle,
                                                       started.get("nodeId", ""))
        self._wake.set()
        return RaySupervisorPort(handle)

    def close(self) -> None:
        self.pool.close()

    def _watch(self) -> None:
        while True:
            with self._lock:
                refs = list(self._watched)
            if not refs:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            ready, _ = ray_api.wait(refs, timeout=0.5)
            for ref in ready:
                with self._lock:
                    app_id, run_id, handle, node = self._watched.pop(ref)
                try:
                    ray_api.get(ref, timeout=5)
                except EstarterError as exc:
                    if self.on_exited is not None:
                        reason = (ExitReason.SUPERVISOR_LOST if ray_api.node_alive(node)
                                  else ExitReason.NODE_LOST)
                        self.on_exited(app_id, run_id, lost(reason, str(exc)))
                    continue
                self.pool.give_back(handle)  # the app ended: reuse or free its worker
