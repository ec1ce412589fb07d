"""What several benchmarks need: memory of a process (tree), and ending a simulated
Ray cluster so that the next module starts clean."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psutil


def uss(pid: int) -> int:
    """Unique set size of ``pid`` in bytes; 0 if it is gone or unreadable."""
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return 0


def tree_uss(pid: int) -> int:
    """USS of ``pid`` and all its descendants."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0
    return sum(uss(p.pid) for p in procs)


def end_simulated_cluster(cluster: Any, saved_env: dict[str, str | None]) -> None:
    """Disconnect, shut ``cluster`` (ray.cluster_utils) down, forget its address (a
    later plain ``ray.init()`` would try it) and put back the environment as it was."""
    import ray

    ray.shutdown()
    cluster.shutdown()
    try:
        from ray._private.utils import reset_ray_address  # type: ignore[attr-defined]

        reset_ray_address()
    except (ImportError, OSError):
        pass
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.1) -> None:
    """Poll ``predicate`` every ``interval`` s; TimeoutError naming ``what`` after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
