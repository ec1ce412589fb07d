"""Checks that hold for the whole test run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session", autouse=True)
def _no_cgroup_outlives_the_run() -> Iterator[None]:
    """No app's cgroup is left once the tests are done (removed when the app ends,
    also when its supervisor was SIGKILLed)."""
    before = estarter_cgroups()
    yield
    deadline = time.monotonic() + 10
    while (estarter_cgroups() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sorted(str(p) for p in estarter_cgroups() - before)
    assert not left, f"cgroups left behind by the test run: {left}"
