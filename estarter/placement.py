"""Placement: what an app asks the cluster for, as a Ray resource request. Pure data.

A supervisor actor asks Ray for what its manifest needs, so Ray's scheduler puts
each app on a node with room for it:

- ``num_cpus`` = ``cpuQuota / 100`` (``cpuQuota`` is percent of one core; 0 asks for
  no CPU, as an unlimited app has no quota to reserve);
- ``memory`` = ``memoryLimitMb`` in bytes (Ray's ``memory`` resource; 0 asks none);
- one ``estarter_app_slot`` per app, when the cluster advertises slots. Every node
  started by estarter advertises ``slots_for_node()`` of them (``ESTARTER_APP_SLOTS``
  overrides), which caps the apps a node hosts: each app costs a supervisor worker
  (about 48 MiB) plus its own process even when it reserves no CPU or memory.

Whether a request can ever be met is decided here too (``fits``), against the
totals of the live nodes, so an app no node can hold is refused at once with
:class:`~estarter.errors.Unschedulable` instead of pending forever.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .policy import SandboxPolicy

APP_SLOT = "estarter_app_slot"
SLOTS_ENV = "ESTARTER_APP_SLOTS"
# Memory one app costs at least (its supervisor worker plus a small app): the
# default slot count of a node is its memory divided by this. Measured: free memory
# falls ~75-80 MB per small app (bench_hundreds), so 64 MiB over-committed a node.
SLOT_COST_BYTES = 96 * 1024 * 1024
MIN_SLOTS, MAX_SLOTS = 8, 1024
# Ray compares fractional resources in units of 1/10000.
_EPSILON = 1e-4


@dataclass(frozen=True)
class ResourceRequest:
    """What one app asks of the node it runs on."""

    num_cpus: float = 0.0
    memory_bytes: int = 0
    slots: float = 0.0  # estarter_app_slot units (0 when the cluster has no slots)
    node_id: str | None = None  # hard node affinity (the ``--node`` launch option)

    @property
    def needs_dedicated(self) -> bool:
        """A warm pool supervisor asks only for a slot: anything more needs its own actor."""
        return self.num_cpus > 0 or self.memory_bytes > 0 or self.node_id is not None

    def ray_resources(self) -> dict[str, float]:
        """The request as Ray resource names (what ``fits`` compares against)."""
        out: dict[str, float] = {}
        if self.num_cpus > 0:
            out["CPU"] = self.num_cpus
        if self.memory_bytes > 0:
            out["memory"] = float(self.memory_bytes)
        if self.slots > 0:
            out[APP_SLOT] = self.slots
        return out

    def actor_options(self) -> dict[str, Any]:
        """Options for ``.options(...)`` of the supervisor actor, without the strategy
        (``actors/`` builds the NodeAffinitySchedulingStrategy: Ray types stay there)."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.memory_bytes > 0:
            opts["memory"] = self.memory_bytes
        if self.slots > 0:
            opts["resources"] = {APP_SLOT: self.slots}
        return opts

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU"]
        if self.memory_bytes:
            parts.append(f"{self.memory_bytes // (1024 * 1024)} MiB memory")
        if self.slots:
            parts.append(f"{self.slots:g} app slot")
        if self.node_id:
            parts.append(f"node {self.node_id[:12]}")
        return ", ".join(parts)


def request_for(policy: SandboxPolicy, *, slots: bool = True,
                node_id: str | None = None) -> ResourceRequest:
    """The request of an app with ``policy``; ``slots`` is whether the cluster has them."""
    return request_of((policy.cpu_quota_percent, policy.memory_limit_bytes), slots=slots,
                      node_id=node_id)


def request_of(requests: tuple[int, int], *, slots: bool = True,
               node_id: str | None = None) -> ResourceRequest:
    """The request of an app asking for ``(cpu_quota_percent, memory_limit_bytes)``
    (``policy.requests_of``: known from the manifest, before its policy is built)."""
    cpu_quota_percent, memory_limit_bytes = requests
    return ResourceRequest(
        num_cpus=cpu_quota_percent / 100.0,
        memory_bytes=memory_limit_bytes,
        slots=1.0 if slots else 0.0,
        node_id=node_id,
    )


def fits(request: ResourceRequest, totals: Mapping[str, float]) -> bool:
    """Whether one node with these total resources could ever hold ``request``."""
    return covers(totals, request.ray_resources())


def covers(totals: Mapping[str, float], need: Mapping[str, float],
           times: float = 1.0) -> bool:
    """Whether ``totals`` hold ``times`` x ``need`` (Ray resource names)."""
    return all(totals.get(name, 0.0) + _EPSILON >= amount * times
               for name, amount in need.items())


def held_by(options: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources an actor made with ``options`` (``actor_options``) holds."""
    out = {"CPU": float(options.get("num_cpus", 0.0)),
           "memory": float(options.get("memory", 0.0)),
           **{k: float(v) for k, v in options.get("resources", {}).items()}}
    return {name: amount for name, amount in out.items() if amount > 0}


def unfit_reason(request: ResourceRequest, nodes: Iterable[NodeView]) -> str | None:
    """None if some live node could hold ``request`` (once free), else why none can."""
    listed = list(nodes)
    if request.node_id is not None:
        listed = [n for n in listed if n.node_id == request.node_id]
        if not listed:
            return f"node {request.node_id} is not a live node of this cluster"
    if any(fits(request, n.totals) for n in listed):
        return None
    wanted = request.ray_resources()
    biggest = {name: max((n.totals.get(name, 0.0) for n in listed), default=0.0)
               for name in wanted}
    short = ", ".join(f"{name} {amount:g} > {biggest[name]:g}"
                      for name, amount in wanted.items() if amount > biggest[name] + _EPSILON)
    where = "the chosen node has" if request.node_id else "no node has that much"
    return f"asks for {request.describe()}; {where} ({short or 'no node fits all at once'})"


def has_slots(nodes: Iterable[NodeView]) -> bool:
    """Whether the cluster advertises app slots (a plain Ray cluster may not)."""
    return any(n.totals.get(APP_SLOT, 0.0) > 0 for n in nodes)


@dataclass(frozen=True)
class NodeView:
    """One live node as placement sees it."""

    node_id: str
    address: str
    totals: Mapping[str, float]


def resolve_node(ref: str, nodes: Iterable[NodeView]) -> str | None:
    """The node id ``ref`` names: a node id, a unique id prefix (6+ hex digits) or
    the address of exactly one node. None if it names no live node or is ambiguous."""
    listed = list(nodes)
    for node in listed:
        if node.node_id == ref:
            return node.node_id
    by_prefix = [n for n in listed if len(ref) >= 6 and n.node_id.startswith(ref)]
    if len(by_prefix) == 1:
        return by_prefix[0].node_id
    by_address = [n for n in listed if n.address == ref]
    if len(by_address) == 1:
        return by_address[0].node_id
    return None


def slots_for_node(memory_bytes: int, env: Mapping[str, str] | None = None) -> int:
    """App slots a node advertises: ``ESTARTER_APP_SLOTS``, else memory / SLOT_COST_BYTES."""
    env = os.environ if env is None else env
    raw = env.get(SLOTS_ENV, "").strip()
    if raw:
        value = int(raw)
        if value < 1:
            raise ValueError(f"{SLOTS_ENV} must be >= 1, not {raw}")
        return value
    return max(MIN_SLOTS, min(MAX_SLOTS, memory_bytes // SLOT_COST_BYTES))


def node_resources(memory_bytes: int, env: Mapping[str, str] | None = None
                   ) -> dict[str, float]:
    """Custom resources a node started by estarter advertises (``ray.init``/``ray start``)."""
    return {APP_SLOT: float(slots_for_node(memory_bytes, env))}


def main() -> None:
    """``python -m estarter.placement``: this node's custom resources as JSON, for
    ``ray start --resources=...`` (see cluster.yaml)."""
    import json

    import psutil

    print(json.dumps(node_resources(psutil.virtual_memory().total)))


if __name__ == "__main__":
    main()
