"""App hosts: the AppHost contract, the process host, the wasm host, OS limits."""

from .base import AppHost, ExitInfo, ExitReason, HostContext, HostState

__all__ = ["AppHost", "ExitInfo", "ExitReason", "HostContext", "HostState"]
