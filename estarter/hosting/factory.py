"""AppHostFactory: the host for a policy's runtime."""

from __future__ import annotations

from ..errors import NotSupported
from ..kinds import RuntimeKind
from ..policy import SandboxPolicy
from .base import AppHost, HostContext


def create_host(policy: SandboxPolicy, ctx: HostContext) -> AppHost:
    """A new, not yet started host for ``policy``. Raises NotSupported for a runtime
    this installation cannot host."""
    if policy.runtime in (RuntimeKind.NATIVE, RuntimeKind.PYTHON, RuntimeKind.DOTNET):
        from .process_host import ProcessHost

        return ProcessHost(policy, ctx)
    if policy.runtime is RuntimeKind.WASM:
        try:
            from .wasm_host import WasmAppHost
        except ImportError as exc:
            raise NotSupported(f"the wasm runtime is not available: {exc}") from None
        return WasmAppHost(policy, ctx)
    raise NotSupported(f"unknown runtime {policy.runtime!r}")
