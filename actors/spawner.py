"""Supervisor actors for the kernel: placed by Ray, created from a warm pool, then watched.

Placement (see estarter.placement): an app's supervisor asks Ray for the CPU and
memory its manifest names, one ``estarter_app_slot`` (when the cluster advertises
slots) and, with ``node=``, a hard affinity to that node. Ray's scheduler picks the
node. A request no live node could ever hold is refused at once (Unschedulable);
one that could fit but finds the cluster full is pending, and is refused after
``pending_timeout`` seconds unless free capacity shows it is only slow to start.

Starting a Ray actor means starting a worker process (0.4-0.6 s here); a launch
should not wait for that: supervisors are taken warm from ``pool.SupervisorPool``,
for apps with CPU or memory requests too (one warm per request shape seen lately,
else the slot pool's one lent, holding the app's requests in a placement group).
A supervisor that dies without reporting its app's end
is reported as ``supervisor_lost``, or ``node_lost`` when its node is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estarter import placement
from estarter.errors import ApiTimeout, EstarterError, LaunchError, Unschedulable
from estarter.hosting.applog import tail_file
from estarter.hosting.base import ExitReason, lost
from estarter.paths import log_file
from estarter.placement import NodeView, ResourceRequest
from estarter.policy import SandboxPolicy

from . import ray_api
from .pool import DEFAULT_POOL, SupervisorPool

log = logging.getLogger(__name__)

# How long a launch may stay pending for capacity before it is refused.
PENDING_SECONDS = float(os.environ.get("ESTARTER_PENDING_SECONDS", "30"))
# A pending actor that would fit the free capacity is only slow to start (worker
# start-up under load); it may take this many pending periods before we give up.
SLOW_START_PERIODS = 4
# How old a view of the live nodes a launch may place by (RaySpawner._live_nodes).
NODES_FRESH_SECONDS = 1.0
# A dead supervisor's node may still look alive for a while when Ray's error does
# not say why it died: the GCS marks a node dead only after its health checks fail
# (about 30 s by default). Ask again for this long before calling it ``supervisor_lost``.
NODE_DEATH_GRACE = float(os.environ.get("ESTARTER_NODE_DEATH_GRACE", "40"))

# A failed wait() is confirmed by asking the supervisor this many times (each
# bounded by CONFIRM_TIMEOUT, CONFIRM_PAUSE apart) before it counts as lost: a dead
# actor fails each at once (about 1 s in all), a live one behind a transient RPC
# error answers and is watched again.
CONFIRM_TRIES = 3
CONFIRM_TIMEOUT = 10.0
CONFIRM_PAUSE = 0.5

# (app_id, run_id, info) -> None, and (app_id, run_id, exit dict) -> None
RunningCallback = Callable[[str, int, dict[str, Any]], None]
ExitedCallback = Callable[[str, int, dict[str, Any]], None]


class RaySupervisorPort:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._proxy = ray_api.SyncProxy(handle, timeout=60)
        # The app's final exit, once the watcher has it: the watcher then frees the
        # actor, and a stop() racing with that free answers with this instead.
        self.final: dict[str, Any] | None = None

    def stop(self, grace: float) -> dict[str, Any]:
        try:
            return dict(self._proxy.stop(grace))
        except EstarterError:
            if self.final is not None:
                return dict(self.final)
            raise

    def notify(self, method: str, params: Any) -> None:
        ray_api.tell(self.handle.notify, method, params)

    def info(self) -> dict[str, Any]:
        return dict(self._proxy.info())

    def log_tail(self, lines: int) -> dict[str, Any]:
        return dict(self._proxy.log_tail(lines))


class RaySpawner:
    places_apps = True  # Kernel.launch passes ``node=`` only to spawners that place

    def __init__(self, home: Path, pool_size: int = DEFAULT_POOL,
                 pending_timeout: float = PENDING_SECONDS) -> None:
        self.home = home
        self.pending_timeout = pending_timeout
        self.rules: Any = None  # RestartRules for every supervisor (None: its env's)
        # {"shared": bool, "vfsNode": id}: where zones are mounted (estarter.storage)
        self.storage: dict[str, Any] | None = None
        self.on_running: RunningCallback | None = None
        self.on_exited: ExitedCallback | None = None
        self._lock = threading.Lock()
        self._nodes_seen: tuple[float, list[NodeView]] = (-NODES_FRESH_SECONDS, [])
        self.pool = SupervisorPool(pool_size, self._pool_options)
        # wait() ref -> (app id, run id, port, node id, dedicated)
        self._watched: dict[Any, tuple[str, int, RaySupervisorPort, str, bool]] = {}
        self._wake = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name="estarter-supervisor-watch")
        self._watcher.start()

    # -- placement -------------------------------------------------------------

    def request(self, policy: SandboxPolicy, node: str | None = None) -> ResourceRequest:
        """What this app asks of the cluster; Unschedulable if no live node could hold it.
        A refusal is always decided on a fresh view of the nodes."""
        nodes = self._live_nodes(fresh=node is not None)
        node_id = None
        if node is not None:
            node_id = placement.resolve_node(node, nodes)
            if node_id is None:
                raise Unschedulable(f"{policy.app_id}: unschedulable: {node!r} names no "
                                    f"live node (give a node id or address)",
                                    {"appId": policy.app_id, "node": node})
        req = placement.request_for(policy, slots=placement.has_slots(nodes), node_id=node_id)
        why = placement.unfit_reason(req, nodes)
        if why is not None and node is None:
            nodes = self._live_nodes(fresh=True)
            req = placement.request_for(policy, slots=placement.has_slots(nodes))
            why = placement.unfit_reason(req, nodes)
        if why is not None:
            raise Unschedulable(f"{policy.app_id}: unschedulable: {why}",
                                {"appId": policy.app_id, "request": req.ray_resources(),
                                 "pending": False})
        return req

    def _live_nodes(self, fresh: bool = False) -> list[NodeView]:
        """The live nodes as Ray saw them at most NODES_FRESH_SECONDS ago (``fresh``:
        now). Asking the GCS at every launch cost 1-2 ms of the launch and GCS CPU in a
        burst. A view that old can only wrongly hold a node that died since, the race
        a launch always had: the actor then waits for room (``_wait_placed``)."""
        with self._lock:
            seen, nodes = self._nodes_seen
            if not fresh and time.monotonic() - seen < NODES_FRESH_SECONDS:
                return nodes
        nodes = _nodes()
        with self._lock:
            self._nodes_seen = (time.monotonic(), nodes)
        return nodes

    # -- logs ------------------------------------------------------------------

    def read_log(self, node_id: str, app_id: str, lines: int = 100) -> dict[str, Any]:
        """The tail of the app's log file on ``node_id`` (where its last run wrote it,
        without shared storage), or on a live node of the same name: a node that comes
        back has a new id but its name (its address, unless set) and, if its disk
        survived, the file. ``lost`` when neither is up."""
        known = ray_api.nodes()
        name = next((n["name"] for n in known if n["id"] == node_id), "")
        live = [n["id"] for n in known if n["alive"] and n["id"] == node_id]
        live += [n["id"] for n in known if n["alive"] and name and n["name"] == name]
        if not live:
            return {"lost": True, "node": name, "nodeId": node_id, "lines": []}
        tail = ray_api.run_on(live[0], _log_tail, str(self.home), app_id, lines, timeout=60)
        return {"lost": False, "node": name, "nodeId": live[0], "lines": list(tail)}

    # -- spawning --------------------------------------------------------------

    def expect_launch(self, app_id: str | None, requests: tuple[int, int] | None = None
                      ) -> Callable[[], object] | None:
        """A launch of ``app_id`` (a process app; None: wasm) is being checked;
        returns what releases what it did not use (``Kernel.launch``). ``requests``
        (``policy.requests_of``) picks the warm supervisor that launch will take."""
        opts = None
        if requests is not None:
            # A hint: the view of the nodes the last launch had, of any age (a slot is
            # a node's setting); a GCS query here cost 10 ms after a pause.
            with self._lock:
                nodes = self._nodes_seen[1]
            slots = placement.has_slots(nodes or self._live_nodes())
            opts = _options(placement.request_of(requests, slots=slots))
        return self.pool.wake(app_id, opts)

    def spawn(self, policy: SandboxPolicy, run_id: int,
              node: str | None = None) -> RaySupervisorPort:
        req = self.request(policy, node)
        opts = _options(req)
        # With room, an idle slot-pool supervisor on a node that has it is lent to
        # the app and holds its CPU and memory there itself: milliseconds, where a
        # supervisor of the app's shape is a new worker (about 1 s here).
        hold = {name: amount for name, amount in req.ray_resources().items()
                if name != placement.APP_SLOT}  # what a lent one must hold beside its slot
        free: dict[str, dict[str, float]] = {}
        room_before: bool | None = None

        def ask() -> Callable[[str], bool] | None:
            # Whether the cluster had room before our actor asked for it: once Ray
            # has placed it, the actor holds its resources while its worker starts
            # (seconds on a loaded node), and "no room now" no longer tells "full"
            # from "slow". Asked by the pool only when no warm supervisor of the
            # shape waits (that one is placed and started: no question; the query
            # was ~1 ms of each such launch here), before it makes a new actor.
            nonlocal room_before
            free.update(ray_api.available_by_node())
            room_before = placement.fits(req, _summed(free))
            return room_on if room_before and hold else None

        def room_on(node_id: str) -> bool:  # beside the slot the lent one holds
            return placement.covers(free.get(node_id, {}), hold)

        handle, ready, dedicated = self.pool.take(opts, ask=ask if opts else None)
        if room_before is False and not ray_api.wait([ready], timeout=0)[0]:
            room_before = self._room_after_drop(req)
        if room_before is None:
            room_before = bool(ray_api.wait([ready], timeout=0)[0]) or placement.fits(
                req, ray_api.available_resources())
        try:
            if self._wait_placed(policy, req, ready, room_before) is False:
                # A pooled supervisor refused its reset (it still runs an app).
                handle, ready, dedicated = self.pool.fresh()
                self._wait_placed(policy, req, ready, room_before)
            started = self._start(handle, policy, run_id, hold if opts and not dedicated
                                  else None)
            if started.get("noRoom"):  # the lent one's node filled up meanwhile
                self.pool.give_back(handle)
                handle, ready, dedicated = self.pool.made(opts)
                self._wait_placed(policy, req, ready, room_before)
                started = self._start(handle, policy, run_id, None)
        except Unschedulable:
            ray_api.kill(handle)
            raise
        except EstarterError as exc:
            ray_api.kill(handle)
            raise LaunchError(f"{policy.app_id}: {exc.message}") from None
        if self.on_running is not None:
            self.on_running(policy.app_id, run_id, started)
        return self._add_watch(handle, policy.app_id, run_id, started.get("nodeId", ""),
                               dedicated)

    def _start(self, handle: Any, policy: SandboxPolicy, run_id: int,
               reserve: dict[str, float] | None) -> dict[str, Any]:
        return dict(ray_api.call(handle.start, policy, run_id, str(self.home), self.rules,
                                 self.storage, reserve, timeout=120))

    def _room_after_drop(self, req: ResourceRequest) -> bool:
        """No room for ``req``: our idle warm supervisors of other shapes go (they
        held room a launch needs). Whether there is room with what they held."""
        freed = self.pool.drop_shaped()
        if not freed:
            return False
        free = ray_api.available_resources()
        return placement.fits(req, {name: free.get(name, 0.0) + freed.get(name, 0.0)
                                    for name in {*free, *freed}})

    def _wait_placed(self, policy: SandboxPolicy, req: ResourceRequest, ready: Any,
                     room_before: bool = False) -> Any:
        """The readiness value once Ray has placed and started the actor. Bounded:
        Unschedulable when it stays pending while the cluster has no room for it.
        ``room_before``: the cluster had room when the actor was asked for, so room
        missing now may be the actor's own (placed, its worker still starting)."""
        started = time.monotonic()
        for _ in range(SLOW_START_PERIODS):
            done, _ = ray_api.wait([ready], timeout=self.pending_timeout)
            if done:
                return ray_api.get(ready, timeout=60)
            if not room_before and not placement.fits(req, ray_api.available_resources()):
                break  # pending for capacity, not merely slow to start
        else:  # there was room all along: its worker did not start (an overloaded node)
            raise ApiTimeout(
                f"its supervisor's Ray worker did not start within "
                f"{time.monotonic() - started:.0f} s (the node is overloaded)",
                {"appId": policy.app_id})
        waited = time.monotonic() - started
        raise Unschedulable(
            f"{policy.app_id}: unschedulable: pending for {waited:.0f} s, no node has "
            f"{req.describe()} free (the cluster is full)",
            {"appId": policy.app_id, "request": req.ray_resources(), "pending": True})

    def _pool_options(self) -> dict[str, Any]:
        if placement.has_slots(self._live_nodes()):
            return {"resources": {placement.APP_SLOT: 1.0}}
        return {}

    def close(self) -> None:
        self.pool.close()

    def watch(self, handle: Any, app_id: str, run_id: int, node: str) -> RaySupervisorPort:
        """Watch again a supervisor found after a kernel restart (Kernel.recover).
        Killed, not pooled, when its app ends: it may hold placement resources."""
        return self._add_watch(handle, app_id, run_id, node, True)

    def _add_watch(self, handle: Any, app_id: str, run_id: int, node: str,
                   dedicated: bool) -> RaySupervisorPort:
        port = RaySupervisorPort(handle)
        self._rewatch(port, app_id, run_id, node, dedicated)
        return port

    def _rewatch(self, port: RaySupervisorPort, app_id: str, run_id: int, node: str,
                 dedicated: bool) -> None:
        with self._lock:
            self._watched[ray_api.submit(port.handle.wait, None)] = (app_id, run_id, port,
                                                                    node, dedicated)
        self._wake.set()

    # -- watching --------------------------------------------------------------

    def _watch(self) -> None:
        """Runs for the kernel's life: a step that fails is logged and the next one
        runs, so one bad exit (or a Ray hiccup) never stops the reporting of others."""
        while True:
            try:
                self.watch_step(timeout=0.5)
                self.pool.expire()
            except Exception:
                log.exception("supervisor watcher: a step failed; going on")
                self._wake.wait(0.5)

    def watch_step(self, timeout: float) -> int:
        """Wait up to ``timeout`` for supervisors whose app ended; report each one.
        Returns how many were handled."""
        with self._lock:
            refs = list(self._watched)
        if not refs:
            self._wake.wait(timeout * 2)
            self._wake.clear()
            return 0
        ready, _ = ray_api.wait(refs, timeout=timeout)
        for ref in ready:
            with self._lock:
                entry = self._watched.pop(ref, None)
            if entry is None:
                continue
            try:
                self._ended(ref, *entry)
            except Exception:
                log.exception("supervisor watcher: reporting the end of %s failed", entry[0])
        return len(ready)

    def _ended(self, ref: Any, app_id: str, run_id: int, port: RaySupervisorPort, node: str,
               dedicated: bool) -> None:
        try:
            final = ray_api.get(ref, timeout=5)
        except EstarterError as exc:
            # Confirmed and classified on a thread of its own: it may wait for the GCS.
            threading.Thread(target=self._confirm_lost,
                             args=(port, app_id, run_id, node, dedicated, str(exc)),
                             daemon=True, name=f"estarter-lost-{app_id}").start()
            return
        port.final = final
        try:
            if final and self.on_exited is not None:
                # Idempotent in the kernel; needed when the supervisor's own report
                # was lost because the kernel was restarting (see watch()).
                self.on_exited(app_id, run_id, final)
        finally:
            if dedicated:  # it holds its app's shape: warm for the next of that shape, or freed
                self.pool.give_back_shaped(port.handle)
            else:
                self.pool.give_back(port.handle)  # the app ended: reuse or free it

    def _confirm_lost(self, port: RaySupervisorPort, app_id: str, run_id: int, node: str,
                      dedicated: bool, detail: str) -> None:
        """A failed ``wait`` is not yet a lost supervisor: a transient RPC error fails
        it too. If the supervisor still answers, watch it again; only one that does
        not answer in CONFIRM_TRIES tries is reported lost."""
        if supervisor_answers(lambda: ray_api.call(port.handle.ready, timeout=CONFIRM_TIMEOUT)):
            log.warning("supervisor of %s run %s: wait failed (%s) but it answers: "
                        "watching it again", app_id, run_id, detail)
            self._rewatch(port, app_id, run_id, node, dedicated)
            return
        self._report_lost(app_id, run_id, node, detail)

    def _report_lost(self, app_id: str, run_id: int, node: str, detail: str) -> None:
        reason = lost_reason(node, detail, ray_api.node_alive, NODE_DEATH_GRACE)
        if self.on_exited is not None:
            self.on_exited(app_id, run_id, lost(reason, detail))
        if reason is ExitReason.NODE_LOST:
            self.pool.flush()  # idle supervisors on that node went with it


def supervisor_answers(probe: Callable[[], Any], tries: int = CONFIRM_TRIES,
                       pause: float = CONFIRM_PAUSE,
                       sleep: Callable[[float], None] = time.sleep) -> bool:
    """True as soon as ``probe`` answers; False once it failed ``tries`` times."""
    for attempt in range(tries):
        try:
            probe()
            return True
        except EstarterError:
            if attempt + 1 < tries:
                sleep(pause)
    return False


def lost_reason(node: str, detail: str, node_alive: Callable[[str], bool],
                grace: float, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> ExitReason:
    """``node_lost`` if the supervisor's node died, else ``supervisor_lost``.

    Ray's error names the cause when it knows it ("its node has died" or "its
    worker process has died"). Otherwise the node is asked about for up to
    ``grace`` seconds: the GCS marks a node dead only after its health checks fail.
    """
    if "node has died" in detail:
        return ExitReason.NODE_LOST
    if not node:
        return ExitReason.SUPERVISOR_LOST
    if "worker process has died" in detail:
        grace = 0.0  # the node's raylet reported the death: the node is up
    deadline = clock() + grace
    while node_alive(node):
        if clock() >= deadline:
            return ExitReason.SUPERVISOR_LOST
        sleep(0.5)
    return ExitReason.NODE_LOST


def _nodes() -> list[NodeView]:
    return [NodeView(n["id"], n["address"], n["resources"]) for n in ray_api.alive_nodes()]


def _summed(by_node: dict[str, dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for free in by_node.values():
        for name, amount in free.items():
            out[name] = out.get(name, 0.0) + amount
    return out


def _options(req: ResourceRequest) -> dict[str, Any]:
    """Ray options of a dedicated supervisor for ``req``; {} = a warm pool one will do."""
    if not req.needs_dedicated:
        return {}
    opts = req.actor_options()
    if req.node_id is not None:
        opts["scheduling_strategy"] = ray_api.node_affinity(req.node_id)
    return opts


def _log_tail(home: str, app_id: str, lines: int) -> list[str]:
    """Runs on the log's node (``read_log``)."""
    return tail_file(log_file(Path(home), app_id), lines)
