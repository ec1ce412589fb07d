"""Cluster tests: a simulated 3-node Ray cluster on this machine (ray.cluster_utils).

One cluster per test module, connected to this pytest process. It must not meet the
integration tests' session-wide local Ray (one process holds one Ray connection), so
the cluster tests run first (``pytest_collection_modifyitems``) and the cluster is
torn down when its module ends, before any integration test starts its own Ray.

Nodes (CPU, app slots): head (1, 4), w1 (2, 4), w2 (2, 4); each declares 4 GiB of
Ray ``memory``; each is named (Ray's node name: its address by default, the same
for all nodes here). Health checks are fast (a killed node is declared dead in about 2 s)
and a launch pending for capacity is refused after 3 s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.options import RAY_SYSTEM_CONFIG
from estarter.placement import APP_SLOT

CLUSTER_DIR = Path(__file__).resolve().parent
NODE_MEMORY = 4 * 1024**3
# Read by the kernel actor's process: the nodes pass their environment on to workers.
# A pending period long enough for a worker to start on a loaded 2-core machine
# (the "slow to start" case waits four of them).
CLUSTER_ENV = {"ESTARTER_PENDING_SECONDS": "15", "ESTARTER_NODE_DEATH_GRACE": "10",
               "ESTARTER_SUPERVISOR_POOL": "1"}
# With estarter's own system config (its workers at nice 0, see actors.options).
FAST_HEALTH = {**RAY_SYSTEM_CONFIG, "health_check_period_ms": 500,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 3,
               "health_check_initial_delay_ms": 0}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cluster tests first: see the module docstring."""
    ours = [i for i in items if CLUSTER_DIR in Path(str(i.fspath)).parents]
    rest = [i for i in items if i not in ours]
    items[:] = ours + rest


@dataclass
class SimCluster:
    """The running cluster and its nodes, by name."""

    cluster: Any
    nodes: dict[str, Any] = field(default_factory=dict)  # name -> ray Node

    def node_id(self, name: str) -> str:
        return str(self.nodes[name].node_id)

    def name_of(self, node_id: str) -> str:
        return next(n for n, node in self.nodes.items() if node.node_id == node_id)

    def add(self, name: str) -> Any:
        """Start worker node ``name`` (again, after ``kill``: a new node id, the same
        name, as a machine that comes back)."""
        self.nodes[name] = self.cluster.add_node(num_cpus=2, memory=NODE_MEMORY,
                                                 resources={APP_SLOT: 4}, node_name=name)
        return self.nodes[name]

    def kill(self, name: str) -> None:
        """SIGKILL every process of a worker node (a crash, not a drain)."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)


@pytest.fixture(scope="module")
def sim_cluster() -> Iterator[SimCluster]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.skip("this process is already connected to another Ray")
    saved = {k: os.environ.get(k) for k in CLUSTER_ENV}
    os.environ.update(CLUSTER_ENV)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "memory": NODE_MEMORY, "resources": {APP_SLOT: 4},
        "include_dashboard": False, "_system_config": FAST_HEALTH, "node_name": "head"})
    sim = SimCluster(cluster, {"head": cluster.head_node})
    try:
        for name in ("w1", "w2"):
            sim.add(name)
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, namespace="estarter", log_to_driver=False,
                 configure_logging=False)
        yield sim
    finally:
        ray.shutdown()
        cluster.shutdown()
        _forget_cluster_address()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _forget_cluster_address() -> None:
    """Cluster() records its address for a plain ``ray.init()``; a stale record makes
    later plain inits hang (see DESIGN, facts about the machines here)."""
    try:
        from ray._private.utils import reset_ray_address

        reset_ray_address()
    except (ImportError, OSError):
        pass
