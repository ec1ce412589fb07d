"""Every Ray actor option of estarter, in one place."""

from __future__ import annotations

from typing import Any

from estarter.kernel.methods import BLOCKING_METHODS as BLOCKING_METHODS

NAMESPACE = "estarter"

# Ray runs its worker processes at nice 15 ("worker_niceness"), below every other
# process on the node. estarter's workers are its control plane (kernel, permissions,
# VFS, a supervisor per app) and the parents of the apps, not batch work: beside any
# nice-0 load they got a few % of a core, and Runtime.start took 77-120 s beside
# `stress-ng --cpu 2` (2 s on a quiet machine). Every Ray estarter starts (embedded,
# `up`, cluster.yaml's head) runs them at nice 0, as the raylet; worker nodes take it
# from the head's GCS. Apps keep their CPU limits (cgroups, RLIMIT_CPU) as before.
RAY_SYSTEM_CONFIG: dict[str, Any] = {"worker_niceness": 0}
KERNEL_NAME = "estarter-kernel"

# Ray records every task of an actor as task events, sent to the GCS each second for
# its state API and dashboard. Every app API call is a kernel (or VFS) task, and a
# supervisor's tasks are the kernel's calls to it: thousands a second that nobody
# reads, at ~20-30 us of CPU each in the GCS, the caller and the actor (measured:
# 40-57 -> 27-43 us/call in the GCS alone). estarter reports its own calls (metrics,
# audit), so its actors send none.
NO_TASK_EVENTS: dict[str, Any] = {"enable_task_events": False}

# The kernel answers apps' quick calls on its default group, one thread (the
# lowest latency Ray has for an actor call, and the GIL allows no more throughput);
# everything that may block (long polls, ipc.receive, permission.request, launch,
# stop, operator calls) runs in the BLOCKING group's threads. It needs no CPU
# reservation: it must never be unschedulable.
BLOCKING = "blocking"
KERNEL_OPTIONS: dict[str, Any] = {
    **NO_TASK_EVENTS,
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
    **NO_TASK_EVENTS,
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "max_concurrency": 8,
    "max_restarts": 0,
}


# The permissions actor: the one authority for grants, requests, revocations and
# the audit log (estarter.kernel.permissions). A few threads: operator commands, the
# kernel's and the VFS's audit batches, permission.request rows.
PERMISSIONS_NAME = "estarter-permissions"
PERMISSIONS_OPTIONS: dict[str, Any] = {
    **NO_TASK_EVENTS,
    "name": PERMISSIONS_NAME,
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "max_concurrency": 8,
    "max_restarts": -1,
    "max_task_retries": 0,
}

# The VFS actor: every fs.* call (estarter.kernel.fs_service). Threaded, so that
# different apps' reads and writes proceed in parallel (file I/O and the JSON
# encoding of large bodies release the GIL often enough) and one app's 15 MiB read
# never holds up another's call.
VFS_NAME = "estarter-vfs"
VFS_OPTIONS: dict[str, Any] = {
    **NO_TASK_EVENTS,
    "name": VFS_NAME,
    "namespace": NAMESPACE,
    "num_cpus": 0,
    "max_concurrency": 16,
    "max_restarts": -1,
    "max_task_retries": 0,
}

# The three actors of a runtime, by name (for doctor and clean-up).
RUNTIME_ACTORS = (KERNEL_NAME, PERMISSIONS_NAME, VFS_NAME)
