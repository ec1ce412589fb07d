"""One view of files and logs on the simulated cluster (estarter.storage,
Kernel.app_log; issue 16).

All nodes here share this machine's file system, so both deployments are simulated:
without ``ESTARTER_SHARED_STORAGE`` (the default) a supervisor on a node other than
the VFS actor's does not mount the zones; with it, every node does. Zones are
read-only mounts (DESIGN, "Disk: zones are read-only mounts"): an app writes through
``fs.write`` and reads its files directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from estarter.hosting.base import ExitReason
from estarter.runtime import Runtime
from estarter.storage import SHARED_STORAGE_ENV
from tests.apps import reports, wait_until, write_app

from .conftest import SimCluster

NOTE = """
import os, time
mounted = os.path.isdir("/appdata")
def direct(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        return "unreadable: " + type(exc).__name__
before = direct("/appdata/note.txt") if os.path.exists("/appdata/note.txt") else None
run = 1 if not before or not before.startswith("run ") else int(before.split()[1]) + 1
client.fs.write_text("/appdata/note.txt", "run %d" % run)
client.fs.write_text("/shared/note.txt", "run %d" % run)
report(mounted=mounted, before=before, viaApi=client.fs.read_text("/appdata/note.txt"),
       after=direct("/appdata/note.txt") if mounted else None,
       shared=direct("/shared/note.txt") if mounted else None)
time.sleep(600)
"""

PEER = """
import os, time
report(api=client.fs.read_text("/shared/note.txt"), mounted=os.path.isdir("/shared"))
time.sleep(600)
"""

PERMS = ["fs.read", "fs.write", "ui.notification"]


def runtime_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared: bool) -> Runtime:
    # Read by the process that starts the runtime, passed on to every supervisor.
    if shared:
        monkeypatch.setenv(SHARED_STORAGE_ENV, "1")
    else:
        monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    return Runtime.start(home=tmp_path / "home")


@pytest.fixture
def shared_rt(sim_cluster: SimCluster, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    runtime = runtime_with(monkeypatch, tmp_path, shared=True)
    try:
        yield runtime
    finally:
        runtime.shutdown()


@pytest.fixture
def local_rt(sim_cluster: SimCluster, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    runtime = runtime_with(monkeypatch, tmp_path, shared=False)
    try:
        yield runtime
    finally:
        runtime.shutdown()


def zones_of(rt: Runtime, app_id: str) -> dict[str, object]:
    return dict(rt.info(app_id)["host"]["zones"])


def kernel_storage(rt: Runtime) -> dict[str, object]:
    kernel = next(a for a in rt.actors() if a["role"] == "kernel")
    return dict(kernel["storage"])


def test_shared_storage_one_view_from_every_node(shared_rt: Runtime, sim_cluster: SimCluster,
                                                 tmp_path: Path) -> None:
    rt = shared_rt
    w1, w2 = sim_cluster.node_id("w1"), sim_cluster.node_id("w2")
    app = write_app(tmp_path, "onefile", NOTE, permissions=PERMS)
    assert kernel_storage(rt)["shared"] is True

    rt.launch(app, grants=["fs.write"], node=w1)
    assert wait_until(lambda: reports(rt, "onefile"), 120)
    first = reports(rt, "onefile")[0]
    assert rt.info("onefile")["host"]["nodeId"] == w1
    assert zones_of(rt, "onefile")["directMounts"] is True
    # Written through the VFS actor on the head, read directly on w1: one file.
    assert first == {"mounted": True, "before": None, "viaApi": "run 1",
                     "after": "run 1", "shared": "run 1"}
    rt.stop("onefile")

    # Another run on another node reads, directly, what the first one wrote.
    rt.launch(app, grants=["fs.write"], node=w2)
    assert wait_until(lambda: len(reports(rt, "onefile")) == 2, 120)
    second = reports(rt, "onefile")[1]
    assert rt.info("onefile")["host"]["nodeId"] == w2
    assert second == {"mounted": True, "before": "run 1", "viaApi": "run 2",
                      "after": "run 2", "shared": "run 2"}

    # A third app, on the head, reads the shared zone through fs.read.
    rt.launch(write_app(tmp_path, "peer", PEER, permissions=PERMS),
              node=sim_cluster.node_id("head"))
    assert wait_until(lambda: reports(rt, "peer"), 120)
    assert reports(rt, "peer")[0] == {"api": "run 2", "mounted": True}


def test_without_shared_storage_no_mounts_off_the_vfs_node(
        local_rt: Runtime, sim_cluster: SimCluster, tmp_path: Path) -> None:
    rt = local_rt
    w1, head = sim_cluster.node_id("w1"), sim_cluster.node_id("head")
    storage = kernel_storage(rt)
    assert storage["shared"] is False and storage["vfsNode"] == head
    assert "only on the VFS actor's node" in str(storage["directMounts"])

    app = write_app(tmp_path, "nomount", NOTE, permissions=PERMS)
    rt.launch(app, grants=["fs.write"], node=w1)
    assert wait_until(lambda: reports(rt, "nomount"), 120)
    # No /appdata at all on w1 (never that node's own folder), and fs.* works.
    assert reports(rt, "nomount")[0] == {"mounted": False, "before": None,
                                         "viaApi": "run 1", "after": None, "shared": None}
    zones = zones_of(rt, "nomount")
    assert zones["directMounts"] is False
    assert "not the VFS actor's node" in str(zones["reason"])

    # On the VFS actor's node the zones are its folders: mounted, and the same file.
    rt.launch(write_app(tmp_path, "peer", PEER, permissions=PERMS), node=head)
    assert wait_until(lambda: reports(rt, "peer"), 120)
    assert reports(rt, "peer")[0] == {"api": "run 1", "mounted": True}
    assert zones_of(rt, "peer")["directMounts"] is True


CHATTY = """
import time
for i in range(3):
    print("hello from a worker", i, flush=True)
report(ready=True)
time.sleep(600)
"""


def test_logs_of_an_app_on_a_worker_read_from_the_head(
        local_rt: Runtime, sim_cluster: SimCluster, tmp_path: Path) -> None:
    rt = local_rt
    w2 = sim_cluster.node_id("w2")
    rt.launch(write_app(tmp_path, "chatty", CHATTY), node=w2)
    assert wait_until(lambda: reports(rt, "chatty"), 120)

    def hellos() -> list[str]:
        return [line for line in rt.logs("chatty", 200) if "stdout hello from a worker" in line]

    # The Runtime (this process is on the head) reads what the supervisor on w2 reads.
    assert wait_until(lambda: len(hellos()) == 3, 120)
    assert [h.rsplit(" ", 1)[1] for h in hellos()] == ["0", "1", "2"]
    got = rt.kernel.app_log("chatty", 200)
    assert (got["source"], got["nodeId"]) == ("supervisor", w2)
    assert sum("stdout hello from a worker" in line for line in got["lines"]) == 3

    rt.stop("chatty")
    after = rt.kernel.app_log("chatty", 200)
    # Ended: read on w2, where it ran (storage not shared: the head's file of that
    # name is another file on a real cluster).
    assert (after["source"], after["nodeId"]) == ("node", w2)
    assert sum("stdout hello from a worker" in line for line in after["lines"]) == 3


def test_logs_of_a_lost_node_said_lost_then_read_when_it_comes_back(
        local_rt: Runtime, sim_cluster: SimCluster, tmp_path: Path) -> None:
    """Last in the module: it kills w2 (and starts it again)."""
    rt = local_rt
    rt.launch(write_app(tmp_path, "diary", CHATTY, restart="never"),
              node=sim_cluster.node_id("w2"))
    assert wait_until(lambda: reports(rt, "diary"), 120)
    assert wait_until(lambda: sum("hello from a worker" in line
                                  for line in rt.logs("diary", 200)) == 3, 120)

    sim_cluster.kill("w2")
    ended = rt.wait("diary", timeout=120)
    assert ended is not None and ended.reason is ExitReason.NODE_LOST
    lost = rt.kernel.app_log("diary", 200)
    assert (lost["source"], lost["lines"]) == ("lost", [])
    assert "node w2" in lost["note"] and "not reachable" in lost["note"]

    back = sim_cluster.add("w2")  # the machine comes back, its disk with it
    sim_cluster.cluster.wait_for_nodes(timeout=120)
    again = rt.kernel.app_log("diary", 200)
    assert (again["source"], again["nodeId"]) == ("node", str(back.node_id))
    assert sum("stdout hello from a worker" in line for line in again["lines"]) == 3
