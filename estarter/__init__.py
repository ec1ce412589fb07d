"""estarter: sandboxed apps hosted on Ray.

The core (this package) imports no Ray; ``actors`` wraps it for Ray and
``estarter.runtime.Runtime`` is the entry point for scripts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import EstarterError
from .hosting.base import ExitInfo, ExitReason
from .version import __version__

if TYPE_CHECKING:
    from .runtime import AppHandle, Runtime

__all__ = ["AppHandle", "EstarterError", "ExitInfo", "ExitReason", "Runtime", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that ``import estarter.manifest`` (and the launcher) stay light.
    if name in ("Runtime", "AppHandle"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
