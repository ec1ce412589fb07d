"""Sandboxed functions on Ray: one Ray task per call runs the sandboxed child.

The task is where Ray accounts for the function: it asks for the CPU and memory the
limits name (a function with no ``cpuQuota`` asks for DEFAULT_CPUS, so a burst of
submissions queues in Ray instead of starting a worker per call), and the child it
starts is bound to the task's thread. The task returns the plain outcome; the
caller decodes it (see estarter.functions: untrusted values are never unpickled on
a node, and only as plain data by the caller).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from typing import Any, cast

from estarter import functions
from estarter.functions import FunctionFuture

from . import ray_api

# A child mostly waits on its own start (launcher, bwrap, interpreter), so two
# run per core.
DEFAULT_CPUS = 0.5


def _run(payload: bytes, limits: dict[str, Any]) -> dict[str, Any]:
    return functions.run_sandboxed(payload, limits)


# ray_api.remote is typed for actor classes; Ray's decorator takes functions alike.
_RunTask = ray_api.remote(cast(Any, _run), {"num_cpus": DEFAULT_CPUS, "max_retries": 0})


def task_options(limits: Mapping[str, Any]) -> dict[str, Any]:
    """Ray resources of one call, from its manifest-style limits."""
    quota = int(limits.get("cpuQuota", 0))
    opts: dict[str, Any] = {"num_cpus": quota / 100.0 if quota else DEFAULT_CPUS}
    memory = int(limits.get("memoryLimitMb", 0))
    if memory:
        opts["memory"] = memory * 1024 * 1024
    return opts


def submit(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
           limits: Mapping[str, Any] | None) -> FunctionFuture:
    """Run ``fn(*args, **kwargs)`` sandboxed on some node; the future decodes the outcome.

    ``max_retries=0``: a function is not assumed idempotent, so a lost node fails
    its calls (FunctionCrashed) rather than running them twice.
    """
    checked = functions.check_limits(limits)
    payload = functions.encode_call(fn, args, kwargs)
    ref = ray_api.create(_RunTask, task_options(checked), payload, checked)
    inner: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def settle(done: concurrent.futures.Future[Any]) -> None:
        exc = done.exception()
        if exc is None:
            inner.set_result(done.result())
        else:  # the task itself failed (its worker or node died)
            inner.set_result({"status": "crashed", "detail": str(exc)})

    ray_api.future(ref).add_done_callback(settle)
    return FunctionFuture(inner)
