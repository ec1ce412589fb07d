"""The warm pool of supervisor actors through a fake of ``actors.ray_api``: what
it creates, hands out, takes back and kills. No Ray is started."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from actors import ray_api
from actors.pool import SupervisorPool, shape_key


class FakeMethod:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any) -> tuple[str, str]:
        self.handle.calls.append(self.name)
        return (self.handle.name, self.name)


class FakeHandle:
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name, self.options, self.calls = name, options, []
        self.ready = FakeMethod(self, "ready")
        self.reset = FakeMethod(self, "reset")
        self.expect = FakeMethod(self, "expect")
        self.forget = FakeMethod(self, "forget")
        self.start = FakeMethod(self, "start")


class FakeRay:
    def __init__(self) -> None:
        self.created: list[FakeHandle] = []
        self.killed: list[str] = []

    def create(self, actor_class: Any, options: dict[str, Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(f"sup-{len(self.created)}", dict(options))
        self.created.append(handle)
        return handle


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    ray = FakeRay()
    monkeypatch.setattr(ray_api, "create", ray.create)
    monkeypatch.setattr(ray_api, "kill", lambda h, no_restart=True: ray.killed.append(h.name))
    return ray


def test_pool_starts_its_size_ahead_with_the_options_of_the_cluster(fake: FakeRay) -> None:
    pool = SupervisorPool(2, lambda: {"resources": {"estarter_app_slot": 1.0}})
    assert [h.name for h in fake.created] == ["sup-0", "sup-1"]
    assert all(h.options == {"resources": {"estarter_app_slot": 1.0}} for h in fake.created)
    assert all(h.calls == ["ready"] for h in fake.created)
    pool.close()
    assert sorted(fake.killed) == ["sup-0", "sup-1"]


def test_take_hands_out_an_idle_one_then_fresh_ones(fake: FakeRay) -> None:
    pool = SupervisorPool(1)
    handle, ready, dedicated = pool.take()
    assert (handle.name, ready, dedicated) == ("sup-0", ("sup-0", "ready"), False)
    handle2, _, dedicated2 = pool.take()  # none idle (the refill is a second later)
    assert handle2.name == "sup-1" and dedicated2 is False
    pool.close()


def test_an_app_with_requests_gets_a_dedicated_supervisor(fake: FakeRay) -> None:
    pool = SupervisorPool(1, shapes=0)
    handle, _, dedicated = pool.take({"num_cpus": 0.5})
    assert dedicated is True and handle.options == {"num_cpus": 0.5}
    assert len(pool._idle) == 1  # the warm one is still there for the next app
    pool.close()


MEM = {"num_cpus": 0.0, "memory": 256 << 20}
CPU = {"num_cpus": 0.5}


def test_a_shape_launched_once_has_a_warm_supervisor_for_the_next(fake: FakeRay) -> None:
    """Ray fixes an actor's resources: a warm supervisor per request shape (most apps
    ask for memory), made after the first launch of that shape."""
    pool = SupervisorPool(0, room=lambda opts: True)
    first, _, dedicated = pool.take(MEM)
    assert dedicated is True and first.options == MEM  # the first pays the start
    pool.fill_shape(pool_key := next(iter(pool._shaped)))  # the refill, a second later
    warm = fake.created[-1]
    assert warm is not first and warm.options == MEM and warm.calls == ["ready"]
    assert pool.wake("app", dict(MEM)) is not None  # the launch's hint goes to it
    second, ready, dedicated = pool.take(dict(MEM))
    assert second is warm and ready == (warm.name, "ready") and dedicated is True
    assert warm.calls == ["ready", "expect"]
    pool.fill_shape(pool_key)
    pool.fill_shape(pool_key)  # one warm per shape, never two
    assert len(fake.created) == 3
    pinned, _, _ = pool.take({**MEM, "scheduling_strategy": "node-x"})
    assert pinned.options["scheduling_strategy"] == "node-x"  # never pooled
    assert len(pool._shaped) == 1
    pool.close()
    assert fake.killed == [fake.created[2].name]  # the idle one; the taken ones run apps


def test_warm_shapes_hold_no_room_a_launch_needs(fake: FakeRay) -> None:
    """A shape is refilled only while there is room for two of it; the least recent
    shape beyond ``shapes`` goes; a launch short of room drops the idle ones."""
    room = {"ok": False}
    pool = SupervisorPool(0, shapes=2, room=lambda opts: room["ok"])
    pool.take(MEM)
    pool.fill_shape(next(iter(pool._shaped)))
    assert len(fake.created) == 1  # no room: no warm one
    room["ok"] = True
    for shape in (MEM, CPU):
        pool.take(shape)
        pool.fill_shape(list(pool._shaped)[-1])
    # sup-1 and sup-3 run the apps of those launches; sup-2 and sup-4 wait warm.
    assert [h.options for h in fake.created[1:]] == [MEM, MEM, CPU, CPU]
    pool.take({"num_cpus": 1.0})  # a third shape: the least recent (MEM) goes
    assert list(pool._shaped) == [shape_key(CPU), shape_key({"num_cpus": 1.0})]
    assert fake.killed == ["sup-2"]
    assert pool.drop_shaped() == {"CPU": 0.5} and fake.killed == ["sup-2", "sup-4"]
    assert pool.drop_shaped() == {}
    pool.close()
    assert fake.killed == ["sup-2", "sup-4"]  # nothing else was idle


def test_give_back_reuses_while_there_is_room_then_kills(fake: FakeRay) -> None:
    pool = SupervisorPool(1)
    first, _, _ = pool.take()
    second, _, _ = pool.take()
    pool.give_back(first)
    assert first.calls == ["ready", "reset"] and fake.killed == []
    pool.give_back(second)  # the pool is full again
    assert fake.killed == [second.name]
    assert pool.take()[0] is first
    pool.close()


def test_a_supervisor_given_back_beats_a_refill_still_starting(
        fake: FakeRay, monkeypatch: pytest.MonkeyPatch) -> None:
    """Launches one after another: the refill made while an app ran is still
    starting when the app's supervisor comes back, so the warm one stays (a launch
    would wait for the refill's worker); once the refill is up, the pool is full."""
    up: set[str] = set()
    monkeypatch.setattr(ray_api, "wait", lambda refs, timeout=None: (
        [r for r in refs if r[0] in up], [r for r in refs if r[0] not in up]))
    monkeypatch.setattr(SupervisorPool, "_later", lambda self, action: None)
    pool = SupervisorPool(1)
    up.add("sup-0")
    first, _, _ = pool.take()
    pool.fill()  # the take's refill, while the app runs: sup-1, starting
    pool.give_back(first)
    assert fake.killed == ["sup-1"]
    assert first.calls == ["ready", "reset"]
    assert pool.take()[0] is first
    pool.fill()  # sup-2, up by the time the app ends
    up.add("sup-2")
    pool.give_back(first)
    assert fake.killed == ["sup-1", "sup-0"]
    assert pool.take()[0].name == "sup-2"
    pool.close()


def test_wake_tells_the_supervisor_the_next_launch_will_take(fake: FakeRay) -> None:
    pool = SupervisorPool(1)
    abandon = pool.wake("app")
    handle, _, _ = pool.take()
    assert handle.calls == ["ready", "expect"]  # the one woken is the one taken
    assert abandon is not None
    abandon()  # the launch failed: what it made goes
    assert handle.calls == ["ready", "expect", "forget"]
    assert pool.wake("app") is None  # none idle (the refill is a second later)
    assert [h.calls for h in fake.created] == [["ready", "expect", "forget"]]
    pool.close()


# -- a supervisor that stays pending -------------------------------------------------


def _pending(monkeypatch: pytest.MonkeyPatch, free: dict[str, float],
             room_before: bool) -> Exception:
    """The error of a launch whose supervisor never becomes ready."""
    from types import SimpleNamespace

    from actors.spawner import RaySpawner
    from estarter.placement import ResourceRequest

    monkeypatch.setattr(ray_api, "wait", lambda refs, timeout=None: ([], list(refs)))
    monkeypatch.setattr(ray_api, "available_resources", lambda: dict(free))
    spawner = SimpleNamespace(pending_timeout=0.0)
    with pytest.raises(Exception) as raised:
        RaySpawner._wait_placed(spawner, SimpleNamespace(app_id="slow"),  # type: ignore[arg-type]
                                ResourceRequest(num_cpus=1.0), "ready-ref", room_before)
    return raised.value


def test_pending_for_capacity_is_unschedulable(monkeypatch: pytest.MonkeyPatch) -> None:
    from estarter.errors import Unschedulable

    err = _pending(monkeypatch, free={"CPU": 0.0}, room_before=False)
    assert isinstance(err, Unschedulable) and "cluster is full" in str(err)
    assert err.data["pending"] is True


def test_pending_with_room_is_a_worker_that_did_not_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from estarter.errors import ApiTimeout, Unschedulable

    # Room before and now: the actor is placed but its worker has not started.
    for room_before, free in ((True, {"CPU": 0.0}), (False, {"CPU": 2.0})):
        err = _pending(monkeypatch, free=free, room_before=room_before)
        assert isinstance(err, ApiTimeout) and not isinstance(err, Unschedulable)
        assert "did not start" in str(err) and "full" not in str(err)


def test_a_launch_short_of_room_counts_what_the_idle_shapes_held(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The room they freed decides whether the launch waits (placed soon) or is
    refused as Unschedulable (the cluster is full all the same)."""
    from types import SimpleNamespace

    from actors.spawner import RaySpawner
    from estarter.placement import ResourceRequest

    monkeypatch.setattr(ray_api, "available_resources", lambda: {"CPU": 0.25})
    dropped = {"CPU": 0.5}
    spawner = SimpleNamespace(pool=SimpleNamespace(drop_shaped=lambda: dict(dropped)))
    room = RaySpawner._room_after_drop
    assert room(spawner, ResourceRequest(num_cpus=0.75)) is True  # type: ignore[arg-type]
    assert room(spawner, ResourceRequest(num_cpus=1.0)) is False  # type: ignore[arg-type]
    dropped.clear()
    assert room(spawner, ResourceRequest(num_cpus=0.25)) is False  # type: ignore[arg-type]


def test_the_launch_hint_names_the_shape_without_asking_the_gcs() -> None:
    """``expect_launch`` runs on the launch's path: it picks the warm supervisor by
    the node view it has (a GCS query there cost 10 ms after a pause)."""
    import threading
    from types import SimpleNamespace

    from actors.spawner import RaySpawner

    woken: list[tuple[str | None, Any]] = []

    def no_query(fresh: bool = False) -> Any:
        raise AssertionError("asked the GCS for the nodes")

    slot_node = SimpleNamespace(totals={"estarter_app_slot": 4.0})
    spawner = SimpleNamespace(
        _lock=threading.Lock(), _nodes_seen=(0.0, [slot_node]), _live_nodes=no_query,
        pool=SimpleNamespace(wake=lambda app_id, opts: woken.append((app_id, opts))))
    RaySpawner.expect_launch(spawner, "a", (50, 64 << 20))  # type: ignore[arg-type]
    RaySpawner.expect_launch(spawner, "b", (0, 0))  # type: ignore[arg-type]
    assert woken == [("a", {"num_cpus": 0.5, "memory": 64 << 20,
                            "resources": {"estarter_app_slot": 1.0}}),
                     ("b", {})]


def test_a_shape_not_launched_for_a_while_is_forgotten(fake: FakeRay) -> None:
    """An idle Ray worker costs CPU and memory: a warm one waits only for shapes in use."""
    now = [0.0]
    pool = SupervisorPool(0, room=lambda opts: True, clock=lambda: now[0])
    pool.take(MEM)
    pool.fill_shape(shape_key(MEM))
    now[0] = 300.0
    pool.take(CPU)
    pool.fill_shape(shape_key(CPU))
    warm_mem, warm_cpu = fake.created[1], fake.created[3]
    assert pool.expire(600.0) == 0
    now[0] = 650.0
    assert pool.expire(600.0) == 1 and fake.killed == [warm_mem.name]
    assert list(pool._shaped) == [shape_key(CPU)]  # MEM's next launch starts afresh
    now[0] = 900.0
    assert pool.expire(600.0) == 1 and fake.killed == [warm_mem.name, warm_cpu.name]
    assert pool.expire(600.0) == 0 and not pool._shaped
    pool.close()


def test_flush_kills_every_idle_supervisor_and_refills_the_slot_pool(fake: FakeRay) -> None:
    pool = SupervisorPool(1, room=lambda opts: True)
    pool.take(MEM)
    pool.fill_shape(shape_key(MEM))
    idle = [fake.created[0].name, fake.created[2].name]  # the slot pool's, MEM's warm one
    assert pool.flush() == 2 and sorted(fake.killed) == sorted(idle)
    assert len(fake.created) == 4 and pool._idle[0][0] is fake.created[3]  # refilled
    assert shape_key(MEM) in pool._shaped  # the shape is known: refilled at its launch
    pool.close()


# -- a warm slot-pool supervisor lent to an app with requests -------------------------


@pytest.fixture
def up_on(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Readiness refs resolved to node ids: supervisor name -> its node (absent: still
    starting)."""
    nodes: dict[str, str] = {}
    monkeypatch.setattr(ray_api, "wait", lambda refs, timeout=None: (
        [r for r in refs if r[0] in nodes], [r for r in refs if r[0] not in nodes]))
    monkeypatch.setattr(ray_api, "get", lambda ref, timeout=None: nodes[ref[0]])
    return nodes


def test_a_shape_without_a_warm_one_borrows_the_idle_slot_supervisor_where_it_fits(
        fake: FakeRay, up_on: dict[str, str]) -> None:
    """The first launch of a shape took a new worker (about 1 s); the slot pool's idle
    supervisor serves it when its node has room for the app's requests."""
    pool = SupervisorPool(1, room=lambda opts: True)
    idle = fake.created[0]
    assert pool.take(MEM, ask=lambda: lambda node: True)[0] is not idle  # still starting
    up_on[idle.name] = "node-a"
    room = {"node-a": False}
    made, _, dedicated = pool.take(CPU, ask=lambda: lambda node: room[node])
    assert made is not idle and dedicated is True and made.options == CPU  # no room there
    room["node-a"] = True
    pinned, _, _ = pool.take({**MEM, "scheduling_strategy": "node-x"},
                             ask=lambda: lambda node: True)
    assert pinned is not idle  # a pinned launch always gets its own, on its node
    lent, ready, dedicated = pool.take({"num_cpus": 1.0}, ask=lambda: lambda node: room[node])
    assert (lent, ready, dedicated) == (idle, (idle.name, "ready"), False)
    assert not pool._idle and idle.name not in fake.killed  # refilled a second later
    pool.fill_shape(shape_key(CPU))  # the shapes are still made warm after a launch
    warm = fake.created[-1]
    assert warm.options == CPU
    assert pool.take(dict(CPU), ask=lambda: lambda node: True)[0] is warm  # warm first
    pool.close()


def test_the_room_question_is_asked_only_without_a_warm_one_and_before_a_new_actor(
        fake: FakeRay, up_on: dict[str, str]) -> None:
    """``ask`` (the spawner's GCS query about the cluster's room, ~1 ms) is not asked
    when a warm supervisor of the shape waits; otherwise it is asked before any new
    actor holds resources, and what it returns decides a lend."""
    pool = SupervisorPool(1, room=lambda opts: True)
    idle = fake.created[0]
    up_on[idle.name] = "node-a"
    asked: list[int] = []

    def ask(lend: bool) -> Any:
        def question() -> Any:
            asked.append(len(fake.created))  # actors made so far, when asked
            return (lambda node: True) if lend else None
        return question

    made, _, dedicated = pool.take(MEM, ask=ask(False))
    assert asked == [1] and made is fake.created[1] and dedicated is True
    pool.fill_shape(shape_key(MEM))
    warm = fake.created[-1]
    assert pool.take(dict(MEM), ask=ask(False))[0] is warm and asked == [1]  # no question
    pinned, _, _ = pool.take({**MEM, "scheduling_strategy": "node-x"}, ask=ask(True))
    assert asked == [1, 3] and pinned is fake.created[3]
    lent, _, dedicated = pool.take(CPU, ask=ask(True))
    assert asked == [1, 3, 4] and (lent, dedicated) == (idle, False)
    pool.close()


def test_a_shaped_supervisor_whose_app_ended_is_the_next_warm_one_of_its_shape(
        fake: FakeRay) -> None:
    """It holds its shape's resources already, as a new warm one would: kept (reset)
    when its shape has none waiting, so a shape launched again and again needs no
    new worker each time; killed when one waits, or when it was not handed out for
    a shape (pinned)."""
    pool = SupervisorPool(0, room=lambda opts: True)
    first, _, dedicated = pool.take(MEM)
    assert dedicated is True
    pool.give_back_shaped(first)
    assert first.calls == ["ready", "reset"] and "sup-0" not in fake.killed
    pool.fill_shape(shape_key(MEM))  # the take's refill: one waits already
    assert len(fake.created) == 1
    again, ready, dedicated = pool.take(dict(MEM))
    assert (again, ready, dedicated) == (first, ("sup-0", "reset"), True)
    pool.fill_shape(shape_key(MEM))  # this time none waits: a new warm one
    pool.give_back_shaped(first)
    assert fake.killed == ["sup-0"]  # one of its shape waits already
    pinned, _, _ = pool.take({**MEM, "scheduling_strategy": "node-x"})
    pool.take(dict(MEM))  # the warm one goes: the shape has none waiting
    pool.give_back_shaped(pinned)
    assert fake.killed == ["sup-0", pinned.name]
    pool.close()


def test_the_launch_hint_goes_to_the_supervisor_that_will_be_lent(fake: FakeRay) -> None:
    pool = SupervisorPool(1, room=lambda opts: True)
    assert pool.wake("app", dict(MEM)) is not None
    assert fake.created[0].calls == ["ready", "expect"]
    assert pool.wake("app", {**MEM, "scheduling_strategy": "node-x"}) is None  # its own
    assert fake.created[0].calls == ["ready", "expect"]
    pool.close()


def _spawner(monkeypatch: pytest.MonkeyPatch, pool: SupervisorPool,
             starts: list[tuple[str, Any]], answers: list[dict[str, Any]]) -> Any:
    """A RaySpawner on one node with room, whose supervisors' ``start`` answers
    ``answers`` in turn; each start's (supervisor, reserve) is appended to ``starts``."""
    from actors.spawner import RaySpawner

    node = {"id": "node-a", "address": "10.0.0.1",
            "resources": {"CPU": 2.0, "memory": float(4 << 30), "estarter_app_slot": 4.0}}
    monkeypatch.setattr(ray_api, "alive_nodes", lambda: [dict(node)])
    monkeypatch.setattr(ray_api, "available_by_node", lambda: {
        "node-a": {"CPU": 2.0, "memory": float(4 << 30), "estarter_app_slot": 3.0}})

    def call(method: FakeMethod, *args: Any, timeout: float | None = None) -> Any:
        assert method.name == "start"
        starts.append((method.handle.name, args[5]))
        return answers.pop(0)

    monkeypatch.setattr(ray_api, "call", call)
    spawner = RaySpawner.__new__(RaySpawner)
    spawner.__dict__.update(home=Path("/nowhere"), rules=None, storage=None,
                            on_running=None, pending_timeout=1.0, pool=pool,
                            _lock=threading.Lock(), _nodes_seen=(-10.0, []))
    spawner._add_watch = lambda handle, app_id, run_id, node, dedicated: (handle, dedicated)
    return spawner


def test_a_lent_supervisor_holds_the_apps_cpu_and_memory_itself(
        fake: FakeRay, up_on: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    for handle in ("sup-0",):
        up_on[handle] = "node-a"
    pool = SupervisorPool(1, shapes=0, options=lambda: {"resources": {"estarter_app_slot": 1.0}})
    starts: list[tuple[str, Any]] = []
    spawner = _spawner(monkeypatch, pool, starts, [{"nodeId": "node-a"}])
    policy = SimpleNamespace(app_id="app", cpu_quota_percent=50,
                             memory_limit_bytes=256 << 20)
    handle, dedicated = spawner.spawn(policy, 1)
    assert handle.name == "sup-0" and dedicated is False
    # What the slot-pool supervisor does not hold already: no slot twice.
    assert starts == [("sup-0", {"CPU": 0.5, "memory": float(256 << 20)})]
    pool.close()


def test_a_lent_supervisor_without_room_on_its_node_hands_over_to_a_dedicated_one(
        fake: FakeRay, up_on: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    up_on["sup-0"] = "node-a"
    up_on["sup-1"] = "node-a"  # the dedicated one, once Ray has placed it
    pool = SupervisorPool(1, shapes=0, options=lambda: {"resources": {"estarter_app_slot": 1.0}})
    starts: list[tuple[str, Any]] = []
    spawner = _spawner(monkeypatch, pool, starts,
                       [{"noRoom": True, "nodeId": "node-a"}, {"nodeId": "node-a"}])
    policy = SimpleNamespace(app_id="app", cpu_quota_percent=0, memory_limit_bytes=64 << 20)
    handle, dedicated = spawner.spawn(policy, 1)
    assert handle.name == "sup-1" and dedicated is True
    assert handle.options == {"num_cpus": 0.0, "memory": 64 << 20,
                              "resources": {"estarter_app_slot": 1.0}}
    assert starts == [("sup-0", {"memory": float(64 << 20)}), ("sup-1", None)]
    lent = fake.created[0]
    assert lent.calls[-1] == "reset" and pool._idle[0][0] is lent  # back in the pool
    pool.close()


def test_a_supervisor_gives_back_what_it_held_for_its_app(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``start`` with ``reserve``: nothing starts without it; a failed start and the
    reset after the app's end give it back."""
    from types import SimpleNamespace

    from actors.supervisor import SupervisorShell
    from estarter.errors import LaunchError

    placed: list[Any] = [None, "group-1", "group-2"]
    asked: list[tuple[dict[str, float], str]] = []
    released: list[Any] = []

    def reserve(resources: dict[str, float], node: str, timeout: float) -> Any:
        asked.append((resources, node))
        return placed.pop(0)

    monkeypatch.setattr(ray_api, "reserve", reserve)
    monkeypatch.setattr(ray_api, "release", released.append)
    shell = SupervisorShell.__new__(SupervisorShell)
    shell.__dict__.update(node_id="node-a", sup=None, _exporter=None, _reservation=None)
    outcome: list[Any] = [LaunchError("cannot start"), {"pid": 7}]

    def start(*args: Any) -> Any:
        result = outcome.pop(0)
        if isinstance(result, Exception):
            raise result
        shell.sup = SimpleNamespace(wait=lambda timeout: {"code": 0}, close=lambda: None)
        return result

    monkeypatch.setattr(shell, "_start", start)
    policy: Any = SimpleNamespace(app_id="app")
    assert shell.start(policy, 1, "/h", None, None, {"memory": 1.0}) == {
        "noRoom": True, "nodeId": "node-a"}
    assert shell.sup is None and released == []  # nothing held, nothing started
    with pytest.raises(LaunchError):
        shell.start(policy, 1, "/h", None, None, {"memory": 1.0})
    assert released == ["group-1"] and shell._reservation is None
    assert shell.start(policy, 2, "/h", None, None, {"memory": 1.0}) == {"pid": 7}
    assert released == ["group-1"]  # held while the app runs
    assert shell.reset() == "node-a" and released == ["group-1", "group-2"]
    assert asked == [({"memory": 1.0}, "node-a")] * 3


def test_refills_run_later_in_order_on_one_thread_that_survives_a_failure() -> None:
    """A take's refill runs after its delay on the pool's one refill thread, not on a
    thread started per take; a refill that raises does not stop the ones after it."""
    from actors.pool import _Later

    later = _Later()
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def step(name: str) -> None:
        ran.append((name, threading.current_thread().name))
        if name == "boom":
            raise RuntimeError("a refill that fails")
        if name == "last":
            done.set()

    for name in ("first", "boom", "last"):
        later.add(0.01, lambda name=name: step(name))
    assert done.wait(30)
    assert [name for name, _ in ran] == ["first", "boom", "last"]
    assert {thread for _, thread in ran} == {"estarter-pool-refill"}
    again = threading.Event()
    later.add(0.0, again.set)  # the thread may have ended meanwhile: one is started
    assert again.wait(30)
