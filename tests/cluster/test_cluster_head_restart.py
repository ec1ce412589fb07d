"""Head loss on the simulated cluster (issue 16): the head dies (its GCS with it, so
the whole Ray cluster goes: no GCS fault tolerance here), a new cluster starts, and
the runtime is started again with the same ESTARTER_HOME. Apps come back per their
restart policy; what was committed (files written with fs.write, grants, records)
is all there. Its own clusters, not the module fixture's: it kills the head.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.placement import APP_SLOT
from estarter.runtime import Runtime
from tests.apps import reports, wait_until, write_app

from .conftest import CLUSTER_ENV, FAST_HEALTH, NODE_MEMORY, _forget_cluster_address

KEEPER = """
import time
try:
    runs = int(client.fs.read_text("/appdata/runs.txt"))
except ApiError:
    runs = 0
client.fs.write_text("/appdata/runs.txt", str(runs + 1))
report(run=runs + 1)
time.sleep(600)
"""

ONESHOT = """
import time
report(ready=True)
time.sleep(600)
"""


class Clusters:
    """Starts a 3-node cluster on demand; kills or shuts down the current one."""

    def __init__(self) -> None:
        self.cluster: Any = None
        self.workers: list[Any] = []

    def start(self) -> Any:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "memory": NODE_MEMORY, "resources": {APP_SLOT: 4},
            "include_dashboard": False, "_system_config": FAST_HEALTH})
        self.workers = [self.cluster.add_node(num_cpus=2, memory=NODE_MEMORY,
                                              resources={APP_SLOT: 4}) for _ in range(2)]
        self.cluster.wait_for_nodes(timeout=60)
        ray.init(address=self.cluster.address, namespace="estarter", log_to_driver=False,
                 configure_logging=False)
        return self.cluster

    def kill_head(self) -> None:
        """SIGKILL the head (GCS, raylet, the runtime's actors), then the workers,
        which cannot outlive their GCS. The driver goes first: Ray will not remove
        the node its driver is connected to."""
        import ray

        ray.shutdown()
        self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)
        for node in self.workers:
            self.cluster.remove_node(node, allow_graceful=False)
        self.workers = []
        self.cluster = None
        _forget_cluster_address()

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        _forget_cluster_address()


@pytest.fixture
def clusters() -> Iterator[Clusters]:
    import ray

    if ray.is_initialized():
        pytest.skip("this process is already connected to another Ray")
    saved = {k: os.environ.get(k) for k in CLUSTER_ENV}
    os.environ.update(CLUSTER_ENV)
    made = Clusters()
    try:
        yield made
    finally:
        made.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_head_restart_with_the_same_home_brings_apps_back_per_policy(
        clusters: Clusters, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cluster = clusters.start()
    w1 = str(clusters.workers[0].node_id)
    rt = Runtime.start(home=home)
    keeper = write_app(tmp_path, "keeper", KEEPER, restart="always",
                       permissions=["fs.read", "fs.write", "ui.notification"])
    rt.launch(keeper, grants=["fs.write"], node=w1)
    rt.launch(write_app(tmp_path, "oneshot", ONESHOT, restart="never"),
              node=str(clusters.workers[1].node_id))
    assert wait_until(lambda: reports(rt, "keeper") == [{"run": 1}]
                      and reports(rt, "oneshot"), 180)
    assert cluster is not None

    clusters.kill_head()  # no rt.shutdown(): nothing is released, as in a crash

    clusters.start()
    rt2 = Runtime.start(home=home)
    try:
        # Recovery runs as the kernel starts: the records say what was running.
        recovery = rt2.kernel.recovery_report()  # type: ignore[attr-defined]
        assert sorted(recovery["lost"]) == ["keeper", "oneshot"]
        assert recovery["relaunched"] == ["keeper"]
        # The always app runs again: its grant (fs.write) and the file it wrote
        # through the VFS before the loss are there (run 2, not run 1 again).
        assert wait_until(lambda: reports(rt2, "keeper") == [{"run": 1}, {"run": 2}], 180)
        assert rt2.info("keeper")["state"] == "running"
        # The never app is not run again: its record says how its run ended.
        once = next(r for r in rt2.list() if r["appId"] == "oneshot")
        assert once["state"] == "failed" and once["exit"]["reason"] == "supervisor_lost"
        assert reports(rt2, "oneshot") == [{"ready": True}]  # not started again
    finally:
        rt2.shutdown()
