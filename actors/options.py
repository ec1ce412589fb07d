"""Every Ray actor option of estarter, in one place."""

from __future__ import annotations

from typing import Any

from estarter.supervision import BLOCKING_METHODS as BLOCKING_METHODS

NAMESPACE = "estarter"
KERNEL_NAME = "estarter-kernel"

# The kernel answers apps' quick calls on its default group, one thread (the
# lowest latency Ray has for an actor call, and the GIL allows no more throughput);
# everything that may block (long polls, ipc.receive, permission.request, launch,
# stop, operator calls) runs in the BLOCKING group's threads. It needs no CPU
# reservation: it must never be unschedulable.
BLOCKING = "blocking"
KERNEL_OPTIONS: dict[str, Any] = {
    "name": KERNEL_NAME,
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "concurrency_groups": {BLOCKING: 128},
    "max_restarts": -1,
    "max_task_retries": 0,
}
# App methods that may wait (BLOCKING_METHODS, the supervisor's list, which also
# caps how many one app may have waiting at once) are served in the BLOCKING group.

# One per app. A few threads: start/stop, info, notify and one long wait().
SUPERVISOR_OPTIONS: dict[str, Any] = {
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "max_concurrency": 8,
    "max_restarts": 0,
}


# The VFS as its own actor (see actors/vfs.py). The kernel serves fs.* in its own
# process by default; this actor is for callers that want the VFS without a kernel
# (and for the benchmark that compares both placements).
VFS_NAME = "estarter-vfs"
VFS_OPTIONS: dict[str, Any] = {
    "name": VFS_NAME,
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "max_concurrency": 32,
    "max_restarts": -1,
    "max_task_retries": 0,
}
