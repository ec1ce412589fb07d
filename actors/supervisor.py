"""The supervisor actor: a Supervisor wired to the kernel actor through Ray."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from estarter.policy import SandboxPolicy
from estarter.supervision import Supervisor

from . import ray_api
from .options import KERNEL_NAME, SUPERVISOR_OPTIONS


class RayKernelPort:
    """The supervisor's view of the kernel actor. Reports are fire-and-forget: Ray
    keeps their order per caller, and none of them may block the app's threads."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        return ray_api.future(self.kernel.handle.remote(app_id, method, params))

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        self.kernel.app_running.remote(app_id, run_id, info)

    def logs(self, app_id: str, lines: list[tuple[str, str]]) -> None:
        self.kernel.app_logs.remote(app_id, lines)

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        self.kernel.app_exited.remote(app_id, run_id, exit_info)


class SupervisorShell:
    def __init__(self, policy: SandboxPolicy, run_id: int, home: str) -> None:
        kernel = ray_api.get_actor(KERNEL_NAME)
        self.sup = Supervisor(policy, run_id, RayKernelPort(kernel), Path(home),
                              node=ray_api.node_ip())
        self.node_id = ray_api.node_id()

    def start(self) -> dict[str, Any]:
        return {**self.sup.start(), "nodeId": self.node_id}

    def stop(self, grace: float) -> dict[str, Any]:
        return self.sup.stop(grace)

    def wait(self, timeout: float | None) -> dict[str, Any] | None:
        return self.sup.wait(timeout)

    def notify(self, method: str, params: Any) -> None:
        self.sup.notify(method, params)

    def info(self) -> dict[str, Any]:
        return self.sup.info()

    def close(self) -> None:
        self.sup.close()


SupervisorActor = ray_api.remote(SupervisorShell, SUPERVISOR_OPTIONS)
