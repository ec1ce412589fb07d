"""Local mode: kernel, permissions and supervisors wired in one process, no Ray.

The same classes the Ray actors wrap, called directly; API calls run on a small
thread pool so a blocking method (ipc.receive, permission.request) cannot stall
an app's reader thread.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .kernel.core import Kernel
from .kernel.methods import BLOCKING_METHODS
from .kernel.permissions import PermissionManager
from .paths import state_db
from .policy import SandboxPolicy
from .supervision import RestartRules, Supervisor

if TYPE_CHECKING:
    from .functions import FunctionFuture


class LocalKernelPort:
    def __init__(self, kernel: Kernel, workers: int = 64) -> None:
        self.kernel = kernel
        self._pool = concurrent.futures.ThreadPoolExecutor(workers,
                                                           thread_name_prefix="estarter-api")

    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        if method in BLOCKING_METHODS:
            return self._pool.submit(self.kernel.handle, app_id, method, params)
        # A quick call is served on the caller's thread: no hand-off, and waiting
        # calls of other apps cannot delay it by filling the pool.
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(self.kernel.handle(app_id, method, params))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        self.kernel.app_running(app_id, run_id, info)

    def logs(self, app_id: str, lines: list[tuple[str, str, str]]) -> None:
        self.kernel.app_logs(app_id, lines)

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        self.kernel.app_exited(app_id, run_id, exit_info)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LocalSpawner:
    def __init__(self, home: Path, rules: RestartRules | None = None) -> None:
        self.home = home
        self.rules = rules
        self.port: LocalKernelPort | None = None
        self.supervisors: list[Supervisor] = []

    def expect_launch(self, app_id: str | None, requests: tuple[int, int] | None = None
                      ) -> Callable[[], None] | None:
        """A launch of ``app_id`` (a process app; None: wasm) is being checked;
        returns what releases what it did not use (``Kernel.launch``). ``requests``
        picks a warm supervisor on Ray; here there is one kind."""
        from .hosting import limits

        if app_id is None or not limits.expect_launch(app_id):
            return None
        return lambda: limits.forget_launch(app_id)

    def spawn(self, policy: SandboxPolicy, run_id: int) -> Supervisor:
        assert self.port is not None
        sup = Supervisor(policy, run_id, self.port, self.home, node="local",
                         rules=self.rules or RestartRules.from_env())
        sup.start()
        self.supervisors.append(sup)
        return sup

    def close(self) -> None:
        for sup in self.supervisors:
            sup.close()


def local_kernel(home: Path, strict: bool = False,
                 rules: RestartRules | None = None) -> tuple[Kernel, LocalSpawner]:
    from .store import AppStore

    spawner = LocalSpawner(home, rules)
    kernel = Kernel(home, PermissionManager(state_db(home)), spawner, AppStore(home),
                    node="local", strict=strict)
    spawner.port = LocalKernelPort(kernel)
    return kernel, spawner


class LocalClient:
    """Local mode of ``Runtime`` (``estarter.client.KernelClient``): the kernel, the
    permission manager and the VFS service in this process, supervisors on threads."""

    local = True

    def __init__(self, home: Path, strict: bool = False,
                 rules: RestartRules | None = None) -> None:
        self.home = home
        self._kernel, self._spawner = local_kernel(home, strict=strict, rules=rules)
        self._closed = False

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    def actors(self) -> list[dict[str, Any]]:
        pid = os.getpid()
        out: list[dict[str, Any]] = [
            {"name": role, "role": role, "node": "local", "pid": pid, "alive": True}
            for role in ("kernel", "permissions", "vfs")]
        out += [{"name": f"supervisor-{r['appId']}", "role": "supervisor", "node": "local",
                 "pid": pid, "appId": r["appId"], "alive": True}
                for r in self._kernel.list_apps() if r.get("state") in ("starting", "running")]
        return out

    def permission_authority(self) -> PermissionManager:
        return self._kernel.permissions

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               limits: dict[str, Any] | None) -> FunctionFuture:
        from .functions import submit_local

        return submit_local(fn, args, kwargs, limits)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._kernel.shutdown(2.0)
        finally:
            self._spawner.close()
            self._kernel.permissions.close()
