"""The supervisor actor: a Supervisor wired to the kernel actor through Ray."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from estarter.errors import LaunchError, NotFound
from estarter.policy import SandboxPolicy
from estarter.protocol.kernel_wire import decode_reply, encode_call
from estarter.supervision import Supervisor

from . import ray_api
from .options import BLOCKING, BLOCKING_METHODS, KERNEL_NAME, SUPERVISOR_OPTIONS


class RayKernelPort:
    """The supervisor's view of the kernel actor. Quick calls are answered on the
    calling thread (the app's reader): a blocking ``get`` is the cheapest way to
    wait for Ray. Calls that may wait go out as futures, so the reader stays free.
    Reports are fire-and-forget: Ray keeps their order per caller, and none of them
    may block the app's threads."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._blocking = kernel.call.options(concurrency_group=BLOCKING)

    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        payload = encode_call(app_id, method, params)
        if method in BLOCKING_METHODS:
            out: concurrent.futures.Future[Any] = concurrent.futures.Future()
            ray_api.future(self._blocking.remote(payload)).add_done_callback(
                lambda f: _settle(out, f))
            return out
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            done.set_result(decode_reply(ray_api.get(self.kernel.call.remote(payload))))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        self.kernel.app_running.remote(app_id, run_id, info)

    def logs(self, app_id: str, lines: list[tuple[str, str]]) -> None:
        self.kernel.app_logs.remote(app_id, lines)

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        self.kernel.app_exited.remote(app_id, run_id, exit_info)


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
        from estarter.hosting import factory, process_host  # noqa: F401  (warm imports)

        self.kernel = ray_api.get_actor(KERNEL_NAME)
        self.node_ip = ray_api.node_ip()
        self.node_id = ray_api.node_id()
        self.sup: Supervisor | None = None

    def ready(self) -> str:
        return self.node_id

    def start(self, policy: SandboxPolicy, run_id: int, home: str) -> dict[str, Any]:
        if self.sup is not None:
            raise LaunchError("this supervisor already runs an app")
        self.sup = Supervisor(policy, run_id, RayKernelPort(self.kernel), Path(home),
                              node=self.node_ip)
        return {**self.sup.start(), "nodeId": self.node_id}

    def stop(self, grace: float) -> dict[str, Any]:
        return self._sup().stop(grace)

    def wait(self, timeout: float | None) -> dict[str, Any] | None:
        return self._sup().wait(timeout)

    def notify(self, method: str, params: Any) -> None:
        self._sup().notify(method, params)

    def info(self) -> dict[str, Any]:
        return self._sup().info()

    def close(self) -> None:
        if self.sup is not None:
            self.sup.close()

    def reset(self) -> bool:
        """Forget a finished app so this warm worker can take the next one."""
        if self.sup is not None:
            if self.sup.wait(0) is None:
                return False  # still running: not reusable
            self.sup.close()
            self.sup = None
        return True

    def _sup(self) -> Supervisor:
        if self.sup is None:
            raise NotFound("this supervisor has no app yet")
        return self.sup


SupervisorActor = ray_api.remote(SupervisorShell, SUPERVISOR_OPTIONS)
