"""cgroup v1: the ``estarter`` cpu group weighs one process per app in it (issue 15),
so that all apps together do not get one process's share of the CPU. A fake v1 tree
(plain folders); no real cgroup is touched."""

from __future__ import annotations

from pathlib import Path

from estarter.hosting.limits.cgroup_v1 import CgroupsV1
from estarter.hosting.limits.cgroupfs import ESTARTER


def shares(cpu: Path) -> str:
    return (cpu / ESTARTER / "cpu.shares").read_text()


def test_the_parent_weighs_one_process_per_app(tmp_path: Path) -> None:
    mounts = {"cpu": tmp_path / "cpu", "memory": tmp_path / "memory"}
    first = CgroupsV1(mounts, "a-1")
    first.create()
    assert shares(mounts["cpu"]) == "1024"
    second = CgroupsV1(mounts, "b-2")
    second.create()
    assert shares(mounts["cpu"]) == "2048"
    assert not (mounts["memory"] / ESTARTER / "cpu.shares").exists()
    second.remove()
    assert shares(mounts["cpu"]) == "1024"
    first.remove()
    assert shares(mounts["cpu"]) == "1024"  # never below one process


def test_no_cpu_controller_no_weight(tmp_path: Path) -> None:
    mounts = {"memory": tmp_path / "memory"}
    group = CgroupsV1(mounts, "a-1")
    group.create()
    assert not (mounts["memory"] / ESTARTER / "cpu.shares").exists()
