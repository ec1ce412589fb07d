"""The estarter SDK for apps: ``client = sdk.connect()``, then ``client.call(...)``
or the typed helpers (``client.fs.read_text(path)``, ``client.ui.notify(...)``).

Standard library only, so it imports fast and works inside a sandbox.
"""

from sdk.client import EStarterClient, connect
from sdk.errors import (
    ApiError,
    ApiTimeoutError,
    BusyError,
    ConnectionClosedError,
    InvalidParamsError,
    MethodNotFoundError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    QuotaExceededError,
    UnavailableError,
)

__all__ = [
    "ApiError",
    "ApiTimeoutError",
    "BusyError",
    "ConnectionClosedError",
    "EStarterClient",
    "InvalidParamsError",
    "MethodNotFoundError",
    "NotFoundError",
    "NotSupportedError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "UnavailableError",
    "connect",
]
