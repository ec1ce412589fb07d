"""estarter on a simulated 3-node Ray cluster (see conftest.py for the nodes).

The tests share one cluster and run in file order: the node-loss test is last, as
it takes a worker node away for good.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from estarter.errors import ApiTimeout, Unschedulable
from estarter.functions import FunctionCrashed, FunctionError, FunctionLimitExceeded
from estarter.hosting.base import ExitReason
from estarter.runtime import Runtime
from tests.apps import reports, wait_until, write_app

from .conftest import SimCluster

SLEEPER = """
import time
report(ready=True)
time.sleep(600)
"""


@pytest.fixture
def rt(sim_cluster: SimCluster, tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime.start(home=tmp_path / "home")
    try:
        yield runtime
    finally:
        runtime.shutdown()


def node_of(rt: Runtime, app_id: str) -> str:
    """The Ray node id of the app's supervisor (while the app runs)."""
    return str(rt.info(app_id)["host"]["nodeId"])


def test_apps_spread_by_cpu_capacity_and_too_big_is_unschedulable(
        rt: Runtime, sim_cluster: SimCluster, tmp_path: Path) -> None:
    # 5 apps of one CPU each on nodes of 1 + 2 + 2 CPUs: Ray must use every node fully.
    ids = [f"cpu{i}" for i in range(5)]
    for app_id in ids:
        rt.launch(write_app(tmp_path, app_id, SLEEPER, cpuQuota=100))
    assert wait_until(lambda: all(reports(rt, a) for a in ids), 90)
    placed = [sim_cluster.name_of(node_of(rt, a)) for a in ids]
    assert sorted(placed) == ["head", "w1", "w1", "w2", "w2"]

    # One more CPU app could fit a node, but every CPU is taken: pending, then refused
    # (the pending period is bounded; pytest's timeout catches a launch that hangs).
    with pytest.raises(Unschedulable, match="cluster is full") as full:
        rt.launch(write_app(tmp_path, "cpu-extra", SLEEPER, cpuQuota=100))
    assert full.value.data["pending"] is True

    # No node has 8 GiB of Ray memory: refused at once, without pending.
    with pytest.raises(Unschedulable, match="memory") as too_big:
        rt.launch(write_app(tmp_path, "too-big", SLEEPER, memoryLimitMb=8192))
    assert too_big.value.data["pending"] is False
    assert rt.info("too-big")["state"] == "failed"
    with pytest.raises(Unschedulable, match="names no live node"):
        rt.launch(write_app(tmp_path, "nowhere", SLEEPER), node="0123456789abcdef")


READER = """
client.ipc.receive(0)  # pull mode before anyone sends
report(ready=True)
msg = client.ipc.receive(60000)
text = client.fs.read_text(msg["message"]["path"])
client.ipc.send(msg["from"], {"read": text})
report(frm=msg["from"], text=text)
import time; time.sleep(600)
"""

WRITER = """
client.ipc.receive(0)
client.fs.write_text("/shared/cross-node.txt", "written on another node")
client.ipc.send("reader", {"path": "/shared/cross-node.txt"})
reply = client.ipc.receive(60000)
report(frm=reply["from"], reply=reply["message"])
import time; time.sleep(600)
"""


def test_vfs_file_and_ipc_messages_cross_nodes(rt: Runtime, sim_cluster: SimCluster,
                                               tmp_path: Path) -> None:
    w1, w2 = sim_cluster.node_id("w1"), sim_cluster.node_id("w2")
    rt.launch(write_app(tmp_path, "reader", READER), node=w2)
    assert wait_until(lambda: reports(rt, "reader"), 60)
    rt.launch(write_app(tmp_path, "writer", WRITER,
                        permissions=["fs.write", "ipc.send", "ipc.receive", "ui.notification"]),
              grants=["fs.write"], node=w1)
    assert wait_until(lambda: len(reports(rt, "reader")) == 2 and reports(rt, "writer"), 60)
    assert (node_of(rt, "reader"), node_of(rt, "writer")) == (w2, w1)
    assert reports(rt, "reader")[1] == {"frm": "writer", "text": "written on another node"}
    assert reports(rt, "writer") == [{"frm": "reader",
                                      "reply": {"read": "written on another node"}}]


def square(x: int) -> int:
    return x * x


def raise_value_error(x: int) -> None:
    raise ValueError(f"bad input {x}")


def allocate_mb(mb: int) -> int:
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):  # touch every page: really resident
        block[i] = 1
    return len(block)


def test_submit_200_functions_results_and_typed_errors(rt: Runtime) -> None:
    futures: list[tuple[str, int, Any]] = []
    for i in range(200):
        if i % 10 == 3:
            futures.append(("memory", i, rt.submit(allocate_mb, 256,
                                                   limits={"memoryLimitMb": 64})))
        elif i % 10 == 7:
            futures.append(("raise", i, rt.submit(raise_value_error, i)))
        else:
            # A limit that holds (it is applied), generous for a loaded 2-core machine.
            futures.append(("ok", i, rt.submit(square, i, limits={"maxRuntimeSeconds": 600})))
    for kind, i, fut in futures:
        if kind == "ok":
            assert fut.result(timeout=600) == i * i
        elif kind == "raise":
            with pytest.raises(FunctionError, match=f"ValueError: bad input {i}") as err:
                fut.result(timeout=600)
            assert err.value.remote_type == "ValueError"
            assert "raise_value_error" in err.value.remote_traceback
        else:
            with pytest.raises(FunctionLimitExceeded) as over:
                fut.result(timeout=600)
            assert over.value.data["reason"] == "memory_limit"
    assert list(rt.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_function_timeout_and_crash_are_typed(rt: Runtime) -> None:
    def spin() -> None:
        while True:
            pass

    def die() -> None:
        import os

        os._exit(9)

    with pytest.raises(ApiTimeout, match="maxRuntimeSeconds"):
        rt.submit(spin, limits={"maxRuntimeSeconds": 1, "cpuQuota": 50}).result(timeout=600)
    with pytest.raises(FunctionCrashed, match="exit code 9"):
        rt.submit(die).result(timeout=600)


KEEPER = """
import time
runs = client.registry.get("keeper-runs") or 0
client.registry.set("keeper-runs", runs + 1)
report(run=runs + 1)
time.sleep(600)
"""


def test_node_loss_ends_its_apps_node_lost_and_restarts_always_apps(
        rt: Runtime, sim_cluster: SimCluster, tmp_path: Path) -> None:
    kernel_pid = rt.kernel.describe()["pid"]
    # The kernel is pinned to the node of the runtime that started it (its state is
    # on that node's disk): here the head, where this test's driver runs.
    assert _node_of_pid(sim_cluster, kernel_pid) == "head"
    victim = "w1"
    victim_id = sim_cluster.node_id(victim)
    rt.launch(write_app(tmp_path, "keeper", KEEPER, restart="always",
                        permissions=["fs.read", "fs.write", "ui.notification"]),
              grants=["fs.write"], node=victim_id)
    rt.launch(write_app(tmp_path, "oneshot", SLEEPER, restart="never"), node=victim_id)
    assert wait_until(lambda: reports(rt, "keeper") and reports(rt, "oneshot"), 60)
    assert node_of(rt, "keeper") == node_of(rt, "oneshot") == victim_id

    sim_cluster.kill(victim)

    lost = rt.wait("oneshot", timeout=60)
    assert lost is not None and lost.reason is ExitReason.NODE_LOST
    assert wait_until(lambda: reports(rt, "keeper") == [{"run": 1}, {"run": 2}], 90)
    assert rt.info("keeper")["state"] == "running"
    assert node_of(rt, "keeper") != victim_id
    relaunches = [e for e in rt.events(0)["events"]
                  if e["event"] == "relaunch" and e.get("appId") == "keeper"]
    assert [e["reason"] for e in relaunches] == ["node_lost"]
    # The kernel lived through it: same process; run 2 read run 1's registry key and
    # wrote it again, so the registry and the fs.write grant were kept.
    assert rt.kernel.describe()["pid"] == kernel_pid


def _node_of_pid(sim: SimCluster, pid: int) -> str | None:
    """The simulated node whose raylet started process ``pid`` (a Ray worker)."""
    parent = psutil.Process(pid).ppid()
    for name, node in sim.nodes.items():
        raylets = node.all_processes.get("raylet", [])
        if any(info.process.pid == parent for info in raylets):
            return name
    return None
