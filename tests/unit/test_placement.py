"""Placement: manifest limits -> Ray resource request, feasibility, node names, slots;
and how the spawner tells a lost node from a lost supervisor. No Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.spawner import lost_reason
from estarter.hosting.base import ExitReason
from estarter.manifest import RestartPolicy, RuntimeKind
from estarter.placement import (
    APP_SLOT,
    NodeView,
    ResourceRequest,
    fits,
    has_slots,
    node_resources,
    request_for,
    resolve_node,
    slots_for_node,
    unfit_reason,
)
from estarter.policy import SandboxPolicy

MIB = 1024 * 1024
GIB = 1024 * MIB


def policy(cpu: int = 0, memory_mb: int = 0) -> SandboxPolicy:
    return SandboxPolicy(
        app_id="app", runtime=RuntimeKind.PYTHON, app_dir=Path("/apps/app"),
        entry=Path("/apps/app/app.py"), args=(), requested=frozenset(), granted=frozenset(),
        memory_limit_bytes=memory_mb * MIB, max_processes=0, cpu_quota_percent=cpu,
        network_allowed=False, max_runtime_seconds=0, disk_quota_bytes=0,
        restart=RestartPolicy.NEVER, sandboxed=True)


NODES = [
    NodeView("aaaaaaaa1111", "10.0.0.1", {"CPU": 1.0, "memory": 4.0 * GIB, APP_SLOT: 4.0}),
    NodeView("bbbbbbbb2222", "10.0.0.2", {"CPU": 2.0, "memory": 4.0 * GIB, APP_SLOT: 4.0}),
    NodeView("bbbbbbbb3333", "10.0.0.2", {"CPU": 2.0, "memory": 8.0 * GIB, APP_SLOT: 4.0}),
]


def test_request_from_manifest_limits() -> None:
    req = request_for(policy(cpu=150, memory_mb=256))
    assert (req.num_cpus, req.memory_bytes, req.slots) == (1.5, 256 * MIB, 1.0)
    assert req.ray_resources() == {"CPU": 1.5, "memory": 256.0 * MIB, APP_SLOT: 1.0}
    assert req.actor_options() == {"num_cpus": 1.5, "memory": 256 * MIB,
                                   "resources": {APP_SLOT: 1.0}}
    assert req.needs_dedicated


def test_unlimited_app_asks_only_for_a_slot_and_may_use_the_pool() -> None:
    req = request_for(policy())
    assert req.ray_resources() == {APP_SLOT: 1.0}
    assert not req.needs_dedicated
    assert request_for(policy(), slots=False).ray_resources() == {}
    assert request_for(policy(), node_id="aaaaaaaa1111").needs_dedicated


def test_fits_one_node_not_the_sum_of_nodes() -> None:
    req = request_for(policy(cpu=200))
    assert fits(req, NODES[1].totals) and not fits(req, NODES[0].totals)
    assert unfit_reason(req, NODES) is None
    three = request_for(policy(cpu=300))  # 5 CPUs in all, but 2 at most on one node
    why = unfit_reason(three, NODES)
    assert why is not None and "CPU 3 > 2" in why


def test_memory_too_big_for_any_node_names_memory() -> None:
    why = unfit_reason(request_for(policy(memory_mb=16 * 1024)), NODES)
    assert why is not None and "memory" in why


def test_node_pin_checks_that_node_only() -> None:
    big = request_for(policy(memory_mb=6 * 1024), node_id="bbbbbbbb2222")
    assert unfit_reason(big, NODES) is not None
    assert unfit_reason(request_for(policy(memory_mb=6 * 1024), node_id="bbbbbbbb3333"),
                        NODES) is None
    gone = unfit_reason(request_for(policy(), node_id="cccc"), NODES)
    assert gone is not None and "not a live node" in gone


def test_fractional_cpu_compares_with_ray_precision() -> None:
    req = ResourceRequest(num_cpus=0.1 + 0.2)  # 0.30000000000000004
    assert fits(req, {"CPU": 0.3})


def test_slots_advertised_only_when_some_node_has_them() -> None:
    assert has_slots(NODES)
    assert not has_slots([NodeView("n", "a", {"CPU": 4.0})])


def test_resolve_node_by_id_prefix_or_unique_address() -> None:
    assert resolve_node("aaaaaaaa1111", NODES) == "aaaaaaaa1111"
    assert resolve_node("aaaaaa", NODES) == "aaaaaaaa1111"
    assert resolve_node("10.0.0.1", NODES) == "aaaaaaaa1111"
    assert resolve_node("10.0.0.2", NODES) is None  # two nodes there: ambiguous
    assert resolve_node("bbbbbbbb", NODES) is None  # ambiguous prefix
    assert resolve_node("aaa", NODES) is None  # too short to be a prefix
    assert resolve_node("10.9.9.9", NODES) is None


def test_slots_per_node_from_memory_or_env() -> None:
    assert slots_for_node(24 * GIB, env={}) == 256  # 96 MiB an app
    assert slots_for_node(128 * MIB, env={}) == 8  # at least MIN_SLOTS
    assert slots_for_node(1024 * GIB, env={}) == 1024  # at most MAX_SLOTS
    assert slots_for_node(24 * GIB, env={"ESTARTER_APP_SLOTS": "12"}) == 12
    with pytest.raises(ValueError, match="ESTARTER_APP_SLOTS"):
        slots_for_node(GIB, env={"ESTARTER_APP_SLOTS": "0"})
    assert node_resources(GIB, env={"ESTARTER_APP_SLOTS": "3"}) == {APP_SLOT: 3.0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_lost_reason_trusts_rays_cause() -> None:
    def alive(node: str) -> bool:
        return True

    clock = FakeClock()
    assert lost_reason("n", "The actor died because its node has died.", alive, 10,
                       clock, clock.sleep) is ExitReason.NODE_LOST
    assert lost_reason("n", "its worker process has died", alive, 10, clock,
                       clock.sleep) is ExitReason.SUPERVISOR_LOST
    assert clock.now == 0.0  # no waiting when Ray said why
    assert lost_reason("", "gone", alive, 10, clock, clock.sleep) is ExitReason.SUPERVISOR_LOST


def test_lost_reason_waits_for_the_gcs_within_grace() -> None:
    clock = FakeClock()
    dies_at = 3.0
    assert lost_reason("n", "gone", lambda n: clock.now < dies_at, 10, clock,
                       clock.sleep) is ExitReason.NODE_LOST
    assert clock.now == pytest.approx(dies_at)
    clock = FakeClock()
    assert lost_reason("n", "gone", lambda n: True, 10, clock,
                       clock.sleep) is ExitReason.SUPERVISOR_LOST
    assert clock.now == pytest.approx(10.0)


# -- the spawner's view of the nodes ---------------------------------------------------


class _Nodes:
    """``actors.spawner._nodes`` that counts its questions to Ray."""

    def __init__(self, views: list[list[NodeView]]) -> None:
        self.views, self.asked = views, 0

    def __call__(self) -> list[NodeView]:
        self.asked += 1
        return self.views[min(self.asked, len(self.views)) - 1]


def _spawner(monkeypatch: pytest.MonkeyPatch, views: list[list[NodeView]]) -> tuple[Any, _Nodes]:
    import threading

    from actors import spawner

    nodes = _Nodes(views)
    monkeypatch.setattr(spawner, "_nodes", nodes)
    sp = spawner.RaySpawner.__new__(spawner.RaySpawner)  # no Ray: only the node view
    sp._lock = threading.Lock()
    sp._nodes_seen = (-spawner.NODES_FRESH_SECONDS, [])
    return sp, nodes


def test_launches_place_by_a_recent_view_and_refuse_only_on_a_fresh_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from estarter.errors import Unschedulable

    sp, nodes = _spawner(monkeypatch, [NODES])
    sp.request(policy(cpu=100))
    sp.request(policy(cpu=100))
    assert nodes.asked == 1  # the second launch placed by the view of the first
    with pytest.raises(Unschedulable, match="CPU"):
        sp.request(policy(cpu=400))  # fits no node: asked again before refusing
    assert nodes.asked == 2


def test_a_node_that_joined_since_the_view_is_seen_before_a_refusal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    big = NodeView("cccccccc4444", "10.0.0.3", {"CPU": 8.0, "memory": 8.0 * GIB, APP_SLOT: 4.0})
    sp, nodes = _spawner(monkeypatch, [NODES, [*NODES, big]])
    sp.request(policy())
    req = sp.request(policy(cpu=400))  # the cached view has no node for it; the fresh one has
    assert req.num_cpus == 4.0 and nodes.asked == 2


def test_a_launch_pinned_to_a_node_asks_ray_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from estarter.errors import Unschedulable

    sp, nodes = _spawner(monkeypatch, [NODES, NODES[:1]])  # then bbbbbbbb2222 dies
    sp.request(policy(), node="aaaaaaaa1111")
    with pytest.raises(Unschedulable, match="names no live node"):
        sp.request(policy(), node="bbbbbbbb2222")  # it died: the fresh view knows
    assert nodes.asked == 2


def test_what_an_actor_holds_is_what_its_options_asked_for() -> None:
    """``held_by`` reads back ``actor_options`` (the warm pool counts what its idle
    supervisors hold with it), and ``covers`` is ``fits``'s comparison."""
    from estarter.placement import ResourceRequest, covers, held_by

    req = ResourceRequest(num_cpus=0.5, memory_bytes=64 << 20, slots=1.0)
    assert held_by(req.actor_options()) == req.ray_resources()
    assert held_by(ResourceRequest(num_cpus=0.0, slots=1.0).actor_options()) == {
        "estarter_app_slot": 1.0}
    free = {"CPU": 1.0, "memory": float(128 << 20), "estarter_app_slot": 2.0}
    assert covers(free, req.ray_resources(), times=2.0)
    assert not covers(free, req.ray_resources(), times=3.0)
