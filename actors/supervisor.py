"""The supervisor actor: a Supervisor wired to the kernel actor through Ray.

Supervisors are **detached** and **named** ``estarter-sup-<home key>-<token>``: they
must outlive a kernel actor that dies (their apps keep running, and the restarted
kernel finds them again by the names in its app records), and whoever ends a
runtime sweeps them by that prefix (``supervisor_prefix``).
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from estarter.errors import ActorUnavailable, EstarterError, LaunchError, NotFound
from estarter.kernel.methods import VFS_METHODS, is_blocking, retry_on_restart
from estarter.paths import home_key
from estarter.policy import SandboxPolicy
from estarter.protocol.kernel_wire import decode_reply, encode_call, encode_error
from estarter.storage import zone_view
from estarter.supervision import RestartRules, Supervisor

from . import ray_api
from .metrics import Exporter
from .options import BLOCKING, KERNEL_NAME, SUPERVISOR_OPTIONS, VFS_NAME

# How long an app's call keeps being resubmitted while the kernel actor is dead or
# being restarted by Ray (a restart takes a few seconds here).
KERNEL_RETRY_SECONDS = float(os.environ.get("ESTARTER_KERNEL_RETRY_SECONDS", "60"))
_RETRY_INTERVAL = 0.1
# How long a borrowed supervisor waits for Ray to place its app's CPU and memory on
# its node (3-6 ms here when there is room; the kernel checked there was) before the
# launch takes a supervisor of the app's shape instead.
RESERVE_SECONDS = 5.0


def supervisor_prefix(home: str | os.PathLike[str]) -> str:
    return f"estarter-sup-{home_key(home)}-"


class RayKernelPort:
    """The supervisor's view of the kernel and VFS actors. ``fs.*`` calls go straight
    to the VFS actor (looked up once, when the supervisor was created; the app's id
    is bound here, never taken from the app), every other call to the kernel actor.
    Quick calls are answered on the calling thread (the app's reader): a blocking
    ``get`` is the cheapest way to wait for Ray. Calls that may wait go out as
    futures, so the reader stays free. Reports are fire-and-forget: Ray keeps their
    order per caller, and none of them may block the app's threads."""

    def __init__(self, kernel: Any, actor_name: str = "",
                 retry_for: float = KERNEL_RETRY_SECONDS, vfs: Any = None,
                 node_id: str = "") -> None:
        self.kernel = kernel
        self.vfs = vfs
        self.actor_name = actor_name
        self.node_id = node_id
        self.retry_for = retry_for
        self._blocking = ray_api.in_group(kernel.call, BLOCKING)

    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        """Forward one call. While the actor serving it is dead or restarting, an
        idempotent call (``methods.retry_on_restart``) is resubmitted for up to
        ``retry_for`` seconds, so it succeeds once Ray has restarted the actor;
        any other call fails with Unavailable (-32007): the dead actor may have
        applied it before it died, and applying it twice (an append, a message, a
        launch) is not for estarter to decide. No call waits longer than about
        ``retry_for`` plus one call's timeout.
        """
        if is_blocking(method):
            retry_for = self.retry_for if retry_on_restart(method, params) else 0.0
            out: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._submit_blocking(encode_call(app_id, method, params), out,
                                  time.monotonic() + retry_for)
            return out
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            done.set_result(decode_reply(self._quick(app_id, method, params)))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def call_encoded(self, app_id: str, method: str, params: Any) -> bytes | None:
        """A quick call's reply as the kernel (or VFS) actor encoded it
        (``kernel_wire``), an error of the call itself (the actor gone) encoded the
        same way, for the app's host to splice into its answer undecoded; None for
        a call that may wait (``call`` serves those, off the reader's thread)."""
        if is_blocking(method):
            return None
        try:
            return self._quick(app_id, method, params)
        except EstarterError as exc:
            return encode_error(exc)

    def _quick(self, app_id: str, method: str, params: Any) -> bytes:
        """The encoded reply of a call that does not wait, waited for here."""
        retry_for = self.retry_for if retry_on_restart(method, params) else 0.0
        target = self.vfs.call if self.vfs is not None and method in VFS_METHODS \
            else self.kernel.call
        return bytes(ray_api.call_retrying(target, (encode_call(app_id, method, params),),
                                           retry_for, _RETRY_INTERVAL))

    def _submit_blocking(self, payload: bytes, out: concurrent.futures.Future[Any],
                         deadline: float) -> None:
        def settle(reply: concurrent.futures.Future[Any]) -> None:
            exc = reply.exception()
            if isinstance(exc, ActorUnavailable) and time.monotonic() < deadline:
                # Resubmit from a timer thread, never from Ray's callback thread.
                timer = threading.Timer(_RETRY_INTERVAL, self._submit_blocking,
                                        (payload, out, deadline))
                timer.daemon = True
                timer.start()
                return
            _settle(out, reply)

        ray_api.future(ray_api.submit(self._blocking, payload)).add_done_callback(settle)

    def warm(self) -> None:
        """The app is connecting: a ping now wakes the kernel's worker for its first
        call. A Ray actor's first task after 20-100 ms idle arrived 0.6-3 ms later
        than the next one on this VM; the app's first call was paying it. A hint:
        it never raises (the app's reader thread calls it)."""
        ray_api.hint(self.kernel.ping)

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        # The name goes with every (re)start report, so the kernel's app record
        # always names the supervisor to find again after a kernel restart; the node
        # too, so that it says what the launch's own report says (Kernel.app_running).
        where = {"nodeId": self.node_id} if self.node_id else {}
        ray_api.tell(self.kernel.app_running, app_id, run_id,
                     {**info, "actorName": self.actor_name, **where})

    def logs(self, app_id: str, lines: list[tuple[str, str, str]]) -> None:
        ray_api.tell(self.kernel.app_logs, app_id, lines)

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        ray_api.tell(self.kernel.app_exited, app_id, run_id, exit_info)


def _settle(out: concurrent.futures.Future[Any],
            reply: concurrent.futures.Future[Any]) -> None:
    try:
        out.set_result(decode_reply(reply.result()))
    except Exception as exc:
        out.set_exception(exc)


class SupervisorShell:
    """Created idle, so a pool can keep one warm (worker process started, modules
    imported, kernel handle looked up); ``start`` gives it its app."""

    def __init__(self) -> None:
        # First, before Ray (de)serializes anything in this worker: its context without
        # the add-ons that import pydantic (ray_api; ~0.2 CPU-s, 6.8 MiB per supervisor).
        ray_api.skip_serialization_addons()
        from estarter.hosting import budget, factory, limits, process_host, python_app, spawn  # noqa: F401

        # Each process finds the host's sandbox once (bwrap and slirp4netns run, the
        # seccomp filter compiled), a python app's interpreter, SDK and site-packages
        # (sysconfig) and the C launcher (its source hashed): here, while a pooled
        # supervisor waits, rather than in its first launch, which it made 17-31 ms
        # longer (and the plan of every first launch in a new worker ~2 ms after).
        # Supervisors of a request shape are new workers each (issue 15).
        limits.detect()
        python_app.warm()
        spawn.native_launcher()
        budget.release_big_allocations()
        limits.sweep_soon()

        self.kernel = ray_api.get_actor(KERNEL_NAME)
        try:
            self.vfs: Any = ray_api.get_actor(VFS_NAME)
        except NotFound:  # a kernel without a VFS actor: fs.* through the kernel
            self.vfs = None
        self.node_ip = ray_api.node_ip()
        self.node_id = ray_api.node_id()
        self.name = ray_api.actor_name()
        self.sup: Supervisor | None = None
        self._exporter: Exporter | None = None
        self._reservation: Any = None  # ray_api.reserve's, while a borrowed app runs

    def ready(self) -> str:
        return self.node_id

    def expect(self, app_id: str | None) -> None:
        """A launch of ``app_id`` is on its way to this warm supervisor
        (``SupervisorPool.wake``): this wakes the worker, and makes a process app's
        cgroups while the kernel still checks and records it (``limits.premade``)."""
        from estarter.hosting import limits

        if self.sup is None and app_id is not None:
            limits.expect_launch(app_id)

    def forget(self, app_id: str | None) -> None:
        """That launch is over: if it did not take what ``expect`` made (it failed
        first, or another supervisor started it), that goes now."""
        from estarter.hosting import limits

        if app_id is not None:
            limits.forget_launch(app_id)

    def start(self, policy: SandboxPolicy, run_id: int, home: str,
              rules: RestartRules | None = None,
              storage: dict[str, Any] | None = None,
              reserve: dict[str, float] | None = None) -> dict[str, Any]:
        """``storage``: the kernel's ``{"shared": bool, "vfsNode": id}`` (storage.py);
        None (an older kernel): mount as on one machine. ``reserve``: the app's CPU and
        memory, which this pooled supervisor (made holding a slot only) holds on its
        node for the app's run; ``{"noRoom": True}``, nothing started, when Ray could
        not place them there (the kernel then starts a supervisor of the app's shape)."""
        if self.sup is not None:
            raise LaunchError("this supervisor already runs an app")
        if reserve:
            self._reservation = ray_api.reserve(reserve, self.node_id, RESERVE_SECONDS)
            if self._reservation is None:
                return {"noRoom": True, "nodeId": self.node_id}
        try:
            return self._start(policy, run_id, home, rules, storage)
        except BaseException:
            self._release()
            raise

    def _start(self, policy: SandboxPolicy, run_id: int, home: str,
               rules: RestartRules | None, storage: dict[str, Any] | None
               ) -> dict[str, Any]:
        # An app with network reaches no Ray node: this one's addresses are found at
        # launch, the others' are these.
        others = tuple(n["address"] for n in ray_api.alive_nodes()
                       if n["address"]) if policy.network_allowed else ()
        self.sup = Supervisor(policy, run_id, RayKernelPort(self.kernel, self.name,
                                                            vfs=self.vfs,
                                                            node_id=self.node_id),
                              Path(home), node=self.node_ip,
                              rules=rules or RestartRules.from_env(), blocked_addresses=others,
                              zone_view=zone_view(storage, self.node_id))
        started = self.sup.start()
        self._exporter = Exporter(policy.app_id, self.sup.info)  # ray.util.metrics
        return {**started, "nodeId": self.node_id, "actorName": self.name}

    def policy(self) -> SandboxPolicy:
        """The policy of the app it runs (a restarted kernel adopts it with this)."""
        return self._sup().policy

    def stop(self, grace: float) -> dict[str, Any]:
        return self._sup().stop(grace)

    def wait(self, timeout: float | None) -> dict[str, Any] | None:
        return self._sup().wait(timeout)

    def notify(self, method: str, params: Any) -> None:
        self._sup().notify(method, params)

    def info(self) -> dict[str, Any]:
        return {**self._sup().info(), "nodeId": self.node_id, "actorName": self.name}

    def log_tail(self, lines: int) -> dict[str, Any]:
        """The tail of the app's log file on this node (``Kernel.app_log``)."""
        return {**self._sup().log_tail(lines), "nodeId": self.node_id}

    def describe(self) -> dict[str, Any]:
        """This actor: its worker's pid, its node and the app it runs (if any)."""
        return {**ray_api.whereabouts(),
                "appId": self.sup.app_id if self.sup is not None else None}

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.close()
        if self.sup is not None:
            self.sup.close()
        self._release()

    def reset(self) -> str | bool:
        """Forget a finished app so this warm worker can take the next one, and give
        back what it held for that app. Its node id (as ``ready``); False while the
        app still runs (not reusable)."""
        if self.sup is not None:
            if self.sup.wait(0) is None:
                return False  # still running: not reusable
            if self._exporter is not None:
                self._exporter.close()
                self._exporter = None
            self.sup.close()
            self.sup = None
        self._release()
        return self.node_id

    def _release(self) -> None:
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            ray_api.release(reservation)

    def _sup(self) -> Supervisor:
        if self.sup is None:
            raise NotFound("this supervisor has no app yet")
        return self.sup


class _DetachedNamed:
    """``SupervisorActor``: like a Ray actor class, but every actor it creates is
    detached and named under the current scope's prefix (see the module doc).

    The scope is the kernel's home (``use_scope``), set once in the kernel actor's
    process: the spawner creates supervisors with ``.remote()`` and
    ``.options(...).remote()`` and need not know about names.
    """

    def __init__(self, cls: Any) -> None:
        self._cls = cls
        self.prefix = "estarter-sup-unscoped-"

    def use_scope(self, home: str | os.PathLike[str]) -> None:
        self.prefix = supervisor_prefix(home)

    def options(self, **opts: Any) -> Any:
        name = f"{self.prefix}{secrets.token_hex(6)}"
        return ray_api.with_options(self._cls, {**opts, "name": name, "lifetime": "detached"})

    def remote(self, *args: Any) -> Any:
        return ray_api.create(self, {}, *args)


SupervisorActor = _DetachedNamed(ray_api.remote(SupervisorShell, SUPERVISOR_OPTIONS))
