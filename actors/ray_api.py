"""The one module of estarter that calls ``ray.*``. Tests may replace it."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from typing import Any

import ray
import ray.exceptions

from estarter.errors import (
    ActorUnavailable,
    ApiTimeout,
    EstarterError,
    InternalError,
    NotFound,
    Unavailable,
)

from .options import NAMESPACE, RAY_SYSTEM_CONFIG

DEFAULT_TIMEOUT = 120.0


def init(address: str | None = None, resources: dict[str, float] | None = None) -> None:
    """Connect to ``address``, or start an embedded local Ray. Idempotent.

    A Ray started here advertises ``resources``, by default estarter's app slots
    (see estarter.placement); a cluster joined by address advertises its own.
    """
    if ray.is_initialized():
        return
    _reload_auth_env()
    # Ray announces its default token auth at every start of a local Ray ("Token
    # authentication is enabled for this Ray cluster..."), a banner in the user's
    # terminal about a default we keep (DESIGN). Its errors still show.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    extra: dict[str, Any] = {}
    if not address or address == "local":
        if resources is None:
            import psutil

            from estarter.placement import node_resources

            resources = node_resources(psutil.virtual_memory().total)
        extra["resources"] = resources
        extra["_system_config"] = RAY_SYSTEM_CONFIG
    try:
        ray.init(
            address=address or "local",
            namespace=NAMESPACE,
            include_dashboard=False,
            log_to_driver=bool(os.environ.get("ESTARTER_RAY_LOGS")),
            configure_logging=False,
            **extra,
        )
    except Exception as exc:  # Ray raises bare Exception / ConnectionError here
        # One clear line for the CLI, not Ray's traceback: a head that timed out
        # starting (an overloaded host), an address nothing answers on.
        where = f"join Ray at {address}" if address and address != "local" else "start Ray"
        raise Unavailable(f"could not {where}: {exc}") from exc


def is_initialized() -> bool:
    return bool(ray.is_initialized())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def remote(cls: type, options: dict[str, Any]) -> Any:
    return ray.remote(**options)(cls)


def skip_serialization_addons() -> None:
    """Make this worker's Ray serialization context without Ray's add-ons; call it
    first thing in an actor's ``__init__``, before anything is (de)serialized (an
    actor made without arguments). A no-op where the context exists already.

    Ray makes a worker's serialization context on its first (de)serialization and
    registers there serializers for pydantic v1 ``ModelField``s (FastAPI's),
    starlette's ``State`` and pyarrow types (``ray.util.serialization_addons``).
    Registering the first imports pydantic and ``pydantic.v1``: 0.17-0.3 CPU-s and
    6.8 MiB of USS in every worker here, about a sixth of what an idle actor's worker
    costs. A supervisor sends and receives plain data (dicts, lists, bytes,
    dataclasses: ``SandboxPolicy`` is one so that it never loads pydantic), none of
    those types, which cloudpickle would carry anyway. Measured: issue 15."""
    from ray.util import serialization_addons

    worker = ray._private.worker.global_worker
    if getattr(worker, "current_job_id", None) in getattr(worker, "serialization_context_map", {}):
        return  # made already: nothing to save
    if callable(getattr(serialization_addons, "apply", None)):
        serialization_addons.apply = _no_addons


def _no_addons(context: Any) -> None:
    """``serialization_addons.apply`` in a worker that needs none of them."""


def translate(exc: BaseException) -> BaseException:
    """Ray's wrappers -> our errors: an EstarterError raised in an actor comes back as
    itself; a dead actor is NotFound; anything else is an internal error."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, EstarterError):
            return cause
        return InternalError(f"{type(cause).__name__}: {cause}")
    if isinstance(exc, ray.exceptions.GetTimeoutError):
        return ApiTimeout("the runtime did not answer in time")
    if isinstance(exc, ray.exceptions.RayActorError):  # dead, or restarting
        return ActorUnavailable(f"actor is gone: {exc}")
    return exc


def get(ref: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    try:
        return ray.get(ref, timeout=timeout)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
        raise translate(exc) from None


def future(ref: Any) -> concurrent.futures.Future[Any]:
    """A concurrent future of ``ref`` whose failure is already translated."""
    out: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def done(f: concurrent.futures.Future[Any]) -> None:
        exc = f.exception()
        if exc is None:
            out.set_result(f.result())
        else:
            out.set_exception(translate(exc))

    ref.future().add_done_callback(done)
    return out


def call(method: Any, *args: Any, timeout: float | None = DEFAULT_TIMEOUT,
         group: str | None = None) -> Any:
    """``method(*args)`` on its actor (in concurrency group ``group``), waited for."""
    if group is not None:
        method = in_group(method, group)
    return get(method.remote(*args), timeout)


def in_group(method: Any, group: str) -> Any:
    """``method`` bound to its actor's concurrency group ``group``, to call later."""
    return method.options(concurrency_group=group)


def with_options(actor_class: Any, options: dict[str, Any]) -> Any:
    """``actor_class`` (made by ``remote``) with ``options``, to create with ``.remote``."""
    return actor_class.options(**options)


def submit(method: Any, *args: Any) -> Any:
    """Start ``method(*args)`` on its actor; returns the reference to ``get``/``wait``."""
    return method.remote(*args)


def tell(method: Any, *args: Any) -> None:
    """Fire and forget: submit ``method(*args)`` and do not wait for its answer."""
    method.remote(*args)


def hint(method: Any, *args: Any) -> bool:
    """``tell`` for a call that only helps (a wake-up, a clean-up ahead of a timer):
    never raises; False when it could not be sent."""
    try:
        tell(method, *args)
    except Exception:
        return False
    return True


def create(actor_class: Any, options: dict[str, Any], *args: Any) -> Any:
    """A new actor of ``actor_class`` (made by ``remote``) with ``options``."""
    return with_options(actor_class, options).remote(*args)


def get_actor(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise NotFound(f"no actor named {name}") from None


def find_actor(name: str, wait: float = 10.0, interval: float = 0.05) -> Any:
    """``get_actor``, looked up again for up to ``wait`` seconds (an actor being
    restarted by Ray, or created by another process a moment ago)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return get_actor(name)
        except NotFound:
            if time.monotonic() >= deadline:
                raise
            time.sleep(interval)


def kill(handle: Any, no_restart: bool = True) -> None:
    try:
        ray.kill(handle, no_restart=no_restart)
    except (ValueError, ray.exceptions.RayError):
        pass


def wait(refs: list[Any], timeout: float) -> tuple[list[Any], list[Any]]:
    ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
    return list(ready), list(rest)


def whereabouts() -> dict[str, Any]:
    """This worker's pid, node and niceness, for the actors' ``describe`` (Ray's
    default niceness is 15: see options.RAY_SYSTEM_CONFIG)."""
    return {"pid": os.getpid(), "node": node_id(),
            "nice": os.getpriority(os.PRIO_PROCESS, os.getpid())}


def node_ip() -> str:
    return str(ray.util.get_node_ip_address())


def node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


def node_alive(node: str) -> bool:
    return any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())


def alive_nodes() -> list[dict[str, Any]]:
    """Live nodes as {"id", "address", "resources"} (total resources)."""
    return [{"id": n["NodeID"], "address": n.get("NodeManagerAddress", ""),
             "resources": dict(n.get("Resources", {}))}
            for n in ray.nodes() if n.get("Alive")]


def nodes() -> list[dict[str, Any]]:
    """Every node Ray knows, dead ones too, as {"id", "name", "alive"}."""
    return [{"id": n["NodeID"], "name": str(n.get("NodeName", "")), "alive": bool(n.get("Alive"))}
            for n in ray.nodes()]


def run_on(node: str, fn: Any, *args: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """``fn(*args)`` as a task on ``node`` (a node id, hard affinity, no CPU asked)."""
    task = ray.remote(num_cpus=0)(fn).options(scheduling_strategy=node_affinity(node))
    return get(task.remote(*args), timeout=timeout)


def available_resources() -> dict[str, float]:
    """Free resources summed over the cluster."""
    return {k: float(v) for k, v in ray.available_resources().items()}


def available_by_node() -> dict[str, dict[str, float]]:
    """Free resources of each live node, by node id (one GCS query, as
    ``available_resources``, which sums these)."""
    try:
        from ray._private.state import available_resources_per_node
    except ImportError:  # a Ray without it: the sum, under no node's id
        return {"": available_resources()}
    return {node: {k: float(v) for k, v in free.items()}
            for node, free in available_resources_per_node().items()}


def reserve(resources: dict[str, float], node: str, timeout: float) -> Any | None:
    """Hold ``resources`` on ``node`` in Ray's books (a placement group of one
    bundle, pinned by the node's ``ray.io/node-id`` label): no worker process, a few
    GCS round trips. Made from a detached actor, it is removed when that actor dies.
    None, with nothing held, when Ray has not placed it within ``timeout`` seconds."""
    from ray.util.placement_group import placement_group

    bundle = {name: amount for name, amount in resources.items() if amount > 0}
    group = placement_group([bundle], strategy="STRICT_PACK",
                            bundle_label_selector=[{"ray.io/node-id": node}])
    try:
        placed = bool(group.wait(timeout))
    except ray.exceptions.RayError:
        placed = False
    if not placed:
        release(group)
        return None
    return group


def release(reservation: Any) -> None:
    """Give back what ``reserve`` held. Idempotent; never raises."""
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(reservation)
    except Exception:  # removed already, or its owner's Ray is going away
        pass


def node_affinity(node: str) -> Any:
    """A hard scheduling strategy: run on ``node`` (a node id) or nowhere."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node, soft=False)


class SyncProxy:
    """Calls a Ray actor's methods as if they were local: ``proxy.m(x)`` is
    ``get(handle.m.remote(x))``, errors translated."""

    def __init__(self, handle: Any, timeout: float = DEFAULT_TIMEOUT,
                 group: str | None = None, retry_for: float = 0.0) -> None:
        self._handle = handle
        self._timeout = timeout
        self._group = group
        self._retry_for = retry_for  # > 0: resubmit while the actor restarts

    @property
    def handle(self) -> Any:
        return self._handle

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._handle, name)
        if self._group is not None:
            method = in_group(method, self._group)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._retry_for > 0 and not kwargs:
                return call_retrying(method, args, self._retry_for, timeout=self._timeout)
            return get(method.remote(*args, **kwargs), self._timeout)

        return call


# -- named detached actors (issue 6: a persistent runtime and its clean-up) -----------


def actor_name() -> str:
    """The name of the actor this code runs in ('' if unnamed or not in an actor)."""
    try:
        return str(ray.get_runtime_context().get_actor_name() or "")
    except Exception:  # not in an actor
        return ""


def named_actors(prefix: str) -> list[str]:
    """Names in estarter's namespace that start with ``prefix``."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(n["name"] for n in names
                  if n.get("namespace") == NAMESPACE and n["name"].startswith(prefix))


def kill_named(prefix: str, keep: frozenset[str] = frozenset()) -> list[str]:
    """Kill every named actor whose name starts with ``prefix`` (except ``keep``);
    returns the names killed. Detached actors outlive their creator, so whoever
    ends a runtime sweeps them by name."""
    killed = []
    for name in named_actors(prefix):
        if name in keep:
            continue
        try:
            kill(get_actor(name))
            killed.append(name)
        except EstarterError:
            pass  # gone meanwhile
    return killed


def call_retrying(method: Any, args: tuple[Any, ...], retry_for: float,
                  interval: float = 0.1, timeout: float | None = DEFAULT_TIMEOUT,
                  sleep: Any = time.sleep) -> Any:
    """``get(method.remote(*args))``, submitted again while the actor is dead or
    restarting (ActorUnavailable), for up to ``retry_for`` seconds; then the last
    ActorUnavailable (-32007) is raised. Never waits longer than about
    ``retry_for + timeout``."""
    deadline = time.monotonic() + retry_for
    while True:
        try:
            return get(method.remote(*args), timeout)
        except ActorUnavailable:
            if time.monotonic() >= deadline:
                raise
            sleep(interval)


def metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...],
           boundaries: list[float] | None = None) -> Any:
    """A ``ray.util.metrics`` Counter, Gauge or Histogram: Ray's metrics agent exports
    it (Prometheus format on each node's metrics port, and the Ray dashboard)."""
    from ray.util import metrics

    if kind == "counter":
        return metrics.Counter(name, description, tag_keys=tag_keys)
    if kind == "gauge":
        return metrics.Gauge(name, description, tag_keys=tag_keys)
    return metrics.Histogram(name, description, boundaries=boundaries or [],
                             tag_keys=tag_keys)


def metrics_report_seconds(default: float = 10.0) -> float:
    """How often this worker's Ray metrics reach the node's metrics agent
    (``metrics_report_interval_ms``, floored at 1 s as Ray's stats do); ``default``
    if this Ray does not say."""
    try:
        return max(1.0, ray._config.metrics_report_interval_ms() / 1000.0)
    except (AttributeError, TypeError, ValueError):
        return default


def _reload_auth_env() -> None:
    """Make Ray read ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH`` again: it caches them
    when it is imported, and estarter sets them per runtime (estarter.daemon.use_auth)."""
    try:
        from ray._raylet import (  # type: ignore[attr-defined]  # Cython, no stubs
            AuthenticationTokenLoader,
            Config,
        )
    except ImportError:  # another Ray version: nothing cached this way
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
