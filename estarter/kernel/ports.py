"""How the kernel reaches its collaborators: one app's supervisor, the spawner that
makes supervisors, the VFS. Protocols only, so that the kernel core, its recovery
and the Ray shells can all name them without importing one another."""

from __future__ import annotations

from typing import Any, Protocol

from ..policy import SandboxPolicy


class SupervisorPort(Protocol):
    """How the kernel talks to one app's supervisor (in-process or a Ray actor)."""

    def stop(self, grace: float) -> dict[str, Any]: ...

    def notify(self, method: str, params: Any) -> None: ...

    def info(self) -> dict[str, Any]: ...


class Spawner(Protocol):
    def spawn(self, policy: SandboxPolicy, run_id: int) -> SupervisorPort:
        """Create the supervisor and start the app; raises LaunchError."""
        ...


class VfsPort(Protocol):
    """How the kernel reaches the VFS service (in-process, or the VFS actor)."""

    def handle(self, app_id: str, method: str, params: Any = None) -> Any: ...

    def set_quota(self, app_id: str, quota_bytes: int) -> None: ...

    def flush_audit(self) -> None: ...
