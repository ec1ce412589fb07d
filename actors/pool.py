"""Warm supervisor actors, started ahead of the launches that will take them.

Starting a Ray actor means starting a worker process (0.4-0.6 s here); a launch
should not wait for that. Ray fixes an actor's resources when it is created, so a
warm supervisor serves only launches that ask for exactly what it holds:

- the **slot pool**: ``size`` idle supervisors that ask only for an app slot (when
  the cluster advertises slots), for apps without CPU or memory requests. One whose
  app ended is reset and reused while the pool has room (``give_back``).
- **shapes**: for an app with CPU or memory requests (``cpuQuotaPercent``,
  ``memoryLimitMb``: most apps), one idle supervisor per request shape seen lately,
  the last ``shapes`` of them. The first launch of a shape makes its supervisor
  (dedicated, as before); from then on a warm one waits for the next. It holds its
  shape's resources while idle, so it is made only while the cluster has room for
  two of that shape (a warm one never takes the last room), and a launch that finds
  no room drops the idle ones (``drop_shaped``). A launch whose shape has no warm
  one waiting is **lent** the slot pool's idle supervisor when that one's node has
  room (``take``'s ``room_on``): its start holds the app's CPU and memory in a
  placement group on its node (``SupervisorShell.start``'s ``reserve``), a few ms
  where a new worker is about 1 s. A shape not launched for
  ``SHAPE_IDLE_SECONDS`` is forgotten and its idle supervisor killed (``expire``): an
  idle Ray worker costs ~1.8% of a core and ~50 MiB here. A shaped supervisor whose
  app ended holds its shape's resources, as a warm one does: it becomes its shape's
  warm one when none waits, and is killed otherwise (``give_back_shaped``).

A launch pinned to a node (``scheduling_strategy``) always gets its own actor. When
a node is lost the idle ones go (``flush``): a launch that took a dead one would fail.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from estarter import placement
from estarter.errors import EstarterError

from . import ray_api
from .supervisor import SupervisorActor

DEFAULT_POOL = int(os.environ.get("ESTARTER_SUPERVISOR_POOL", "1"))
DEFAULT_SHAPES = int(os.environ.get("ESTARTER_SUPERVISOR_SHAPES", "4"))
SHAPE_IDLE_SECONDS = float(os.environ.get("ESTARTER_SUPERVISOR_SHAPE_IDLE", "600"))
REFILL_SECONDS = 1.0  # after a take: a new worker's start-up should not compete
# for the CPU with the app being launched right now

Pair = tuple[Any, Any]  # (actor handle, its readiness ref)
log = logging.getLogger(__name__)


def shape_key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def fits_now(options: dict[str, Any], times: float = 1.0) -> bool:
    """Whether the cluster has ``times`` x what a supervisor with these options holds
    free right now (summed over nodes, as the spawner's ``room_before`` check)."""
    return placement.covers(ray_api.available_resources(), placement.held_by(options),
                            times)


class SupervisorPool:
    """Idle supervisor actors. Thread-safe.

    ``options`` gives the Ray options of a slot-pool actor (a slot, when the cluster
    has slots): asked at each fill, so a pool follows the cluster it runs on.
    """

    def __init__(self, size: int = DEFAULT_POOL,
                 options: Callable[[], dict[str, Any]] | None = None,
                 shapes: int = DEFAULT_SHAPES,
                 room: Callable[[dict[str, Any]], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = max(0, size)
        self.shapes = max(0, shapes)
        self._clock = clock
        self._options = options or dict
        self._room = room or (lambda opts: fits_now(opts, times=2.0))
        self._lock = threading.Lock()
        self._idle: collections.deque[Pair] = collections.deque()
        # shape key -> (its options, idle ones); least recently launched first
        self._shaped: collections.OrderedDict[
            str, tuple[dict[str, Any], collections.deque[Pair]]] = collections.OrderedDict()
        self._launched: dict[str, float] = {}  # shape key -> its last launch (clock)
        self._made: set[Any] = set()  # slot-pool ones made by fill, never given back
        # Shaped ones handed out -> their shape key; weak: one whose worker or node
        # died is not given back, and its entry goes with the last reference to it.
        self._shape_of: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._later_runs = _Later()
        self.fill()

    def fill(self) -> None:
        with self._lock:
            missing = self.size - len(self._idle)
        if missing <= 0:
            return
        opts = self._options()
        with self._lock:
            while len(self._idle) < self.size:
                handle = ray_api.create(SupervisorActor, opts)
                self._idle.append((handle, ray_api.submit(handle.ready)))
                self._made.add(handle)

    def take(self, options: dict[str, Any] | None = None,
             ask: Callable[[], Callable[[str], bool] | None] | None = None
             ) -> tuple[Any, Any, bool]:
        """(actor, readiness ref, dedicated). Dedicated: made for these ``options``
        (or warm for their shape); it holds them until its app ends. With ``options``
        and no warm one of their shape, ``ask()`` is called, before any new actor is
        made (the spawner's question about the cluster's room, a GCS query, is asked
        only when its answer is used); it returns ``room_on`` or None. An idle
        slot-pool supervisor on a node where ``room_on(node id)`` says they fit is then
        lent instead (not dedicated): its start must hold ``options``' resources
        itself (``SupervisorShell.start``'s ``reserve``)."""
        if options:
            return self._take_shaped(options, ask)
        with self._lock:
            pair = self._idle.popleft() if self._idle else None
            if pair is not None:
                self._made.discard(pair[0])
        if pair is not None:
            self._later(self.fill)
            return pair[0], pair[1], False
        return self.fresh()

    def _lend(self, room_on: Callable[[str], bool]) -> Pair | None:
        """The idle slot-pool supervisor at the head, if it is up (its node known)
        and ``room_on`` its node: a worker still starting would make the launch wait
        for it, as a supervisor of the app's shape would."""
        with self._lock:
            head = self._idle[0] if self._idle else None
        if head is None or not ray_api.wait([head[1]], timeout=0)[0]:
            return None
        try:
            node = ray_api.get(head[1], timeout=5)
        except EstarterError:
            return None
        if not isinstance(node, str) or not room_on(node):
            return None  # a refused reset (still running), or no room on its node
        with self._lock:
            if not self._idle or self._idle[0] is not head:
                return None  # another launch took it meanwhile
            self._made.discard(self._idle.popleft()[0])
        self._later(self.fill)
        return head

    def _take_shaped(self, options: dict[str, Any],
                     ask: Callable[[], Callable[[str], bool] | None] | None = None
                     ) -> tuple[Any, Any, bool]:
        question = ask if ask is not None else (lambda: None)
        if "scheduling_strategy" in options:  # pinned to a node: its own, there
            question()  # asked all the same: the spawner's wait needs the answer
            return self.made(options)
        if not self.shapes:
            return self._lent_or_made(options, question())
        key = shape_key(options)
        evicted: list[Pair] = []
        with self._lock:
            entry = self._shaped.get(key)
            if entry is None:
                entry = self._shaped[key] = (dict(options), collections.deque())
                while len(self._shaped) > self.shapes:  # the least recent shape goes
                    old, (_, waiting) = self._shaped.popitem(last=False)
                    self._launched.pop(old, None)
                    evicted += waiting
            self._shaped.move_to_end(key)
            self._launched[key] = self._clock()
            pair = entry[1].popleft() if entry[1] else None
        for handle, _ in evicted:
            ray_api.kill(handle)
        self._later(lambda: self.fill_shape(key))
        if pair is not None:
            handle, ready = pair
        else:
            handle, ready, dedicated = self._lent_or_made(options, question())
            if not dedicated:
                return handle, ready, False  # lent: back to the slot pool when its app ends
        with self._lock:
            self._shape_of[handle] = key
        return handle, ready, True

    def _lent_or_made(self, options: dict[str, Any],
                      room_on: Callable[[str], bool] | None) -> tuple[Any, Any, bool]:
        lent = self._lend(room_on) if room_on is not None else None
        return (lent[0], lent[1], False) if lent is not None else self.made(options)

    def fill_shape(self, key: str) -> None:
        """One idle supervisor for the shape ``key``, if it has none and there is room."""
        with self._lock:
            entry = self._shaped.get(key)
            if entry is None or entry[1]:
                return
            opts = entry[0]
        if not self._room(opts):
            return
        handle = ray_api.create(SupervisorActor, opts)
        with self._lock:
            entry = self._shaped.get(key)
            keep = entry is not None and not entry[1]
            if keep:
                assert entry is not None
                entry[1].append((handle, ray_api.submit(handle.ready)))
        if not keep:  # taken meanwhile, or the shape was dropped or closed
            ray_api.kill(handle)

    def expire(self, idle_for: float = SHAPE_IDLE_SECONDS) -> int:
        """Forget the shapes not launched for ``idle_for`` seconds, killing their idle
        supervisors; returns how many were killed. Called by the spawner's watcher."""
        now = self._clock()
        gone: list[Pair] = []
        with self._lock:
            for key in [k for k, t in self._launched.items() if now - t >= idle_for]:
                del self._launched[key]
                entry = self._shaped.pop(key, None)
                if entry is not None:
                    gone += entry[1]
        for handle, _ in gone:
            ray_api.kill(handle)
        return len(gone)

    def drop_shaped(self) -> dict[str, float]:
        """Kill the idle shaped supervisors, whose resources a launch needs now;
        returns what they held (Ray frees it as they go). Their shapes stay known:
        refilled after their next launch."""
        with self._lock:
            idle, freed = self._clear_shaped()
        for handle, _ in idle:
            ray_api.kill(handle)
        return freed

    def _clear_shaped(self) -> tuple[list[Pair], dict[str, float]]:
        """Under the lock: take the idle shaped supervisors out; they and what they held."""
        freed: dict[str, float] = {}
        idle: list[Pair] = []
        for opts, waiting in self._shaped.values():
            for name, amount in placement.held_by(opts).items():
                freed[name] = freed.get(name, 0.0) + amount * len(waiting)
            idle += waiting
            waiting.clear()
        return idle, {name: amount for name, amount in freed.items() if amount > 0}

    def flush(self) -> int:
        """A node was lost: idle supervisors may have gone with it, and a launch that
        took a dead one would fail. Kill every idle one (they are cheap to make again,
        and where each runs is not known for all), then refill the slot pool; shapes
        refill at their next launch. Returns how many were killed."""
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
            self._made.clear()
            shaped, _ = self._clear_shaped()
        for handle, _ in idle + shaped:
            ray_api.kill(handle)
        self.fill()
        return len(idle) + len(shaped)

    def wake(self, app_id: str | None,
             options: dict[str, Any] | None = None) -> Callable[[], object] | None:
        """Tell the idle supervisor the next launch (of ``app_id``, with ``options``)
        will take that it is coming (``SupervisorShell.expect``): an idle worker's
        first task after 0.1-1 s idle arrived 3-9 ms later here than the next one, and
        a process app's cgroups can be made meanwhile. Fire and forget; another launch
        may take it first. Returns what tells it, once the launch is over, to drop what
        it did not use."""
        if options and "scheduling_strategy" in options:
            return None  # pinned: it gets a supervisor of its own (``_take_shaped``)
        with self._lock:
            waiting = self._idle  # a launch with options borrows it when no warm
            if options:          # one of their shape waits (``_lend``)
                entry = self._shaped.get(shape_key(options))
                if entry is not None and entry[1]:
                    waiting = entry[1]
            head = waiting[0][0] if waiting else None
        if head is None or not ray_api.hint(head.expect, app_id):
            return None  # a hint: the launch goes on without it
        return lambda: ray_api.hint(head.forget, app_id)

    def give_back_shaped(self, handle: Any) -> None:
        """A supervisor of a request shape whose app ended: the warm one of its shape
        if none waits (it holds that shape's resources already, as a new one would,
        without a new worker's start: ~0.9 CPU-s and ~1 s here), else killed. One this
        pool did not hand out for a shape (pinned, adopted, made for a lost lend) is
        killed: it held its app's resources."""
        with self._lock:
            key = self._shape_of.pop(handle, None)
            entry = self._shaped.get(key) if key is not None else None
            if entry is not None and not entry[1]:
                entry[1].append((handle, ray_api.submit(handle.reset)))
                return
        ray_api.kill(handle)

    def fresh(self) -> tuple[Any, Any, bool]:
        """A new slot-pool supervisor, for when no idle one is at hand."""
        handle = ray_api.create(SupervisorActor, self._options())
        return handle, ray_api.submit(handle.ready), False

    def give_back(self, handle: Any) -> None:
        """Reuse a slot-pool supervisor whose app ended, or kill it if the pool is full.

        Full with a refill whose worker is still starting, the warm one stays and the
        refill goes: a launch that took the refill would wait for its worker's start
        (0.3-1 s here). That happened to launches made one after another (issue 15):
        the refill timer of one launch fired while the next app ran, made a worker,
        and the supervisor coming back from that app was killed for it."""
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append((handle, ray_api.submit(handle.reset)))
                return
            starting = [pair for pair in self._idle if pair[0] in self._made]
        victim = handle
        late = next((pair for pair in starting
                     if not ray_api.wait([pair[1]], timeout=0)[0]), None)
        with self._lock:
            if late is not None and late in self._idle:
                self._idle.remove(late)
                self._made.discard(late[0])
                self._idle.appendleft((handle, ray_api.submit(handle.reset)))
                victim = late[0]
        ray_api.kill(victim)

    def close(self) -> None:
        with self._lock:
            idle = list(self._idle)
            idle += [pair for _, waiting in self._shaped.values() for pair in waiting]
            self._idle, self._shaped = collections.deque(), collections.OrderedDict()
            self._made = set()
            self._shape_of = weakref.WeakKeyDictionary()
            self._launched = {}
            self.size = self.shapes = 0
        for handle, _ in idle:
            ray_api.kill(handle)

    @staticmethod
    def made(options: dict[str, Any]) -> tuple[Any, Any, bool]:
        """A new supervisor for ``options``, dedicated to one app."""
        handle = ray_api.create(SupervisorActor, options)
        return handle, ray_api.submit(handle.ready), True

    def _later(self, action: Callable[[], None]) -> None:
        self._later_runs.add(REFILL_SECONDS, action)


class _Later:
    """Actions run a delay after they are asked for, in order, on one thread that
    lives as long as actions wait. A ``threading.Timer`` per take started a thread
    on the launch's path (~0.13 ms here, a hundred of them in a burst)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: collections.deque[tuple[float, Callable[[], None]]] = collections.deque()
        self._running = False

    def add(self, delay: float, action: Callable[[], None]) -> None:
        with self._cond:
            self._due.append((time.monotonic() + delay, action))
            if self._running:
                self._cond.notify()
                return
            self._running = True
        threading.Thread(target=self._run, name="estarter-pool-refill", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._due and self._due[0][0] > time.monotonic():
                    self._cond.wait(self._due[0][0] - time.monotonic())
                if not self._due:
                    self._running = False
                    return
                _, action = self._due.popleft()
            try:
                action()
            except Exception:  # a failed refill must not stop the ones after it
                log.exception("supervisor pool: a refill failed")


__all__ = ["DEFAULT_POOL", "DEFAULT_SHAPES", "SupervisorPool", "fits_now", "shape_key"]
