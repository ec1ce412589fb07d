"""Ray shells around estarter's core classes. The only package that imports Ray.

The shells load on first use (PEP 562): a supervisor's worker process imports
``actors.supervisor``, which runs this file first, and must not pay for the
kernel's modules (about 80 ms of CPU and their memory, per supervisor; issue 15).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .options import KERNEL_NAME, NAMESPACE

if TYPE_CHECKING:
    from .kernel import KernelActor, get_or_create_kernel
    from .supervisor import SupervisorActor

_LAZY = {"KernelActor": "kernel", "get_or_create_kernel": "kernel",
         "SupervisorActor": "supervisor"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = ["KERNEL_NAME", "NAMESPACE", "KernelActor", "SupervisorActor",
           "get_or_create_kernel"]
