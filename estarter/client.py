"""What ``Runtime`` needs of a runtime, in either mode: the ``KernelClient`` interface.

Local mode implements it in ``estarter.local`` (the core classes in this process),
Ray mode in ``actors.client`` (the three named actors, through ``actors.ray_api``).
``Runtime`` is written once against this interface; choosing the mode is the only
place where it names ``actors`` (see the layer rule in docs/DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .functions import FunctionFuture


class KernelApi(Protocol):
    """The kernel's operator methods (``estarter.kernel.core.Kernel``; in Ray mode
    the same methods on the kernel actor, called synchronously)."""

    def launch(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
               strict: bool | None = None, node: str | None = None) -> dict[str, Any]: ...

    def stop(self, app_id: str, grace: float = 5.0) -> dict[str, Any]: ...

    def wait(self, app_id: str, timeout: float | None = None) -> dict[str, Any]: ...

    def app_info(self, app_id: str) -> dict[str, Any]: ...

    def app_log(self, app_id: str, lines: int = 100) -> dict[str, Any]: ...

    def restart(self, app_id: str, grace: float = 5.0) -> dict[str, Any]: ...

    def list_apps(self) -> list[dict[str, Any]]: ...

    def ps(self) -> list[dict[str, Any]]: ...

    def poll_events(self, since: int, timeout: float = 0.0,
                    app_id: str | None = None) -> dict[str, Any]: ...

    def event_cursor(self) -> int: ...

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def grant(self, app_id: str, perms: list[str]) -> list[str]: ...

    def revoke(self, app_id: str, perms: list[str]) -> list[str]: ...

    def audit(self, app_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...

    def statistics(self) -> dict[str, Any]: ...


class KernelClient(Protocol):
    """A runtime as ``Runtime`` sees it. ``close`` stops what this client started
    (and only that); it is idempotent."""

    local: bool

    @property
    def kernel(self) -> KernelApi: ...

    def actors(self) -> list[dict[str, Any]]:
        """The runtime's actors: role, name, node, pid (and the app of a supervisor)."""
        ...

    def permission_authority(self) -> Any:
        """The one authority for grants, with PermissionManager's methods."""
        ...

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               limits: dict[str, Any] | None) -> FunctionFuture: ...

    def close(self) -> None: ...
