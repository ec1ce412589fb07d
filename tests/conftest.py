"""Checks that hold for the whole test run."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")


def estarter_cgroups() -> set[Path]:
    """Every per-app cgroup estarter made (v1: one per controller; v2: one)."""
    found: set[Path] = set()
    for parent in [*CGROUP_ROOT.glob("*/estarter"), CGROUP_ROOT / "estarter"]:
        try:
            found |= {p for p in parent.iterdir() if p.is_dir()}
        except OSError:
            continue
    return found


def made_here(cgroup: Path) -> bool:
    """Whether this test run made ``cgroup``: its leaf is named ``APP-PID-RANDOM`` after
    the supervisor that made it, which is this process or one of its descendants (a
    Ray worker of the session's Ray), or is gone (a supervisor a test killed). A
    live process outside this run (another run on the same machine) is not ours."""
    try:
        pid = int(cgroup.name.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        return True
    try:
        proc = psutil.Process(pid)
        return any(p.pid == os.getpid() for p in proc.parents())
    except psutil.Error:
        return True


@pytest.fixture(scope="session", autouse=True)
def _no_cgroup_outlives_the_run() -> Iterator[None]:
    """No app's cgroup is left once the tests are done (removed when the app ends,
    also when its supervisor was SIGKILLed)."""
    before = estarter_cgroups()
    yield
    def ours() -> set[Path]:
        return {p for p in estarter_cgroups() - before if made_here(p)}

    deadline = time.monotonic() + 10
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sorted(str(p) for p in ours())
    assert not left, f"cgroups left behind by the test run: {left}"
