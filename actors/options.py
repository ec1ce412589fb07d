"""Every Ray actor option of estarter, in one place."""

from __future__ import annotations

from typing import Any

NAMESPACE = "estarter"
KERNEL_NAME = "estarter-kernel"

# The kernel serves many blocking calls at once (long polls, ipc.receive), so it is
# a threaded actor. It needs no CPU reservation: it must never be unschedulable.
KERNEL_OPTIONS: dict[str, Any] = {
    "name": KERNEL_NAME,
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "max_concurrency": 128,
    "max_restarts": -1,
    "max_task_retries": 0,
}

# One per app. A few threads: start/stop, info, notify and one long wait().
SUPERVISOR_OPTIONS: dict[str, Any] = {
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "max_concurrency": 8,
    "max_restarts": 0,
}


def supervisor_name(app_id: str, run_id: int) -> str:
    return f"estarter-sup-{app_id}-{run_id}"
