"""Ray mode of ``Runtime``: the ``KernelClient`` over the runtime's named actors.

``RayClient.start`` creates (or joins) the kernel, permissions and VFS actors of a
home on an embedded local Ray or a given cluster; ``RayClient.connect`` joins the
persistent runtime ``estarter up`` started. ``close`` tears down what this client
created (its actors, the Ray it started), and only that.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from estarter.client import KernelApi
from estarter.errors import ApiTimeout, EstarterError, NotFound
from estarter.supervision import RestartRules

from . import ray_api
from .kernel import describe_runtime, get_or_create_kernel, kill_runtime
from .options import BLOCKING, KERNEL_NAME

if TYPE_CHECKING:
    from estarter.functions import FunctionFuture


class RayClient:
    local = False

    def __init__(self, home: Path, handle: Any, created: bool, started_ray: bool) -> None:
        self.home = home
        self.handle = handle
        self._created = created  # this client created the actors: close() kills them
        self._started_ray = started_ray
        self._kernel = cast(KernelApi, ray_api.SyncProxy(handle, group=BLOCKING))
        self._closed = False

    @classmethod
    def start(cls, home: Path, address: str | None = None, strict: bool = False,
              rules: RestartRules | None = None) -> RayClient:
        started_ray = not ray_api.is_initialized()
        ray_api.init(address or os.environ.get("ESTARTER_RAY_ADDRESS"))
        handle, created = get_or_create_kernel(home, strict=strict,
                                               rules=rules or RestartRules.from_env())
        return cls(home, handle, created, started_ray)

    @classmethod
    def connect(cls, home: Path) -> RayClient:
        """The persistent runtime of ``home``; NotFound if none is up."""
        from estarter.daemon import connect_info, use_auth

        info = connect_info(home)
        started_ray = not ray_api.is_initialized()
        use_auth(info)
        ray_api.init(info.address)
        try:
            handle = ray_api.get_actor(KERNEL_NAME)
            desc = ray_api.call(handle.describe, timeout=30)
        except EstarterError:
            if started_ray:
                ray_api.shutdown()
            raise NotFound(f"the runtime of {home} has no kernel (run estarter up again)"
                           ) from None
        if desc["home"] != str(home):
            raise NotFound(f"the runtime at {info.address} serves {desc['home']}, not {home}")
        return cls(home, handle, False, started_ray)

    @property
    def kernel(self) -> KernelApi:
        return self._kernel

    def actors(self) -> list[dict[str, Any]]:
        return describe_runtime(self.home)

    def permission_authority(self) -> Any:
        from .permissions import authority

        return authority()

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               limits: dict[str, Any] | None) -> FunctionFuture:
        from .functions import submit

        return submit(fn, args, kwargs, limits)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._created:
                # Supervisors are detached: release() kills them, or they would
                # outlive the kernel (and this process).
                ray_api.call(self.handle.release, 2.0, timeout=120, group=BLOCKING)
        except (EstarterError, ApiTimeout):
            pass
        finally:
            if self._created:
                kill_runtime(self.handle)  # and the VFS and permissions actors
            if self._started_ray:
                ray_api.shutdown()
