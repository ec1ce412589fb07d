"""Errors the SDK raises: a kernel's JSON-RPC error object, rebuilt as a class.

``ApiError.from_dict`` picks the subclass by ``code``, so an app can catch
``PermissionDeniedError`` rather than compare numbers. The codes are the ones of
``estarter.errors`` (the SDK cannot import it: it must run with the stdlib only).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing is not imported at run time (app start-up time)
if TYPE_CHECKING:
    from typing import Any, ClassVar


class ApiError(Exception):
    """A kernel call failed; ``code``, ``message`` and ``data`` are the JSON-RPC error's."""

    default_code: ClassVar[int] = -32000

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = self.default_code if code is None else code
        self.data = data

    @staticmethod
    def from_dict(obj: Any) -> ApiError:
        """The most specific error for a JSON-RPC error object (unknown codes kept as sent)."""
        if not isinstance(obj, dict):
            return ApiError(f"malformed error object: {obj!r}"[:200])
        code = obj.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            code = ApiError.default_code
        cls = _BY_CODE.get(code, ApiError)
        return cls(str(obj.get("message", "")), code, obj.get("data"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-RPC error object for this error."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.code, self.data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code})"


class PermissionDeniedError(ApiError):
    """The app does not hold the permission the method needs; ``data`` = {permission,
    appId, requested}. ``str()`` names the permission and what the operator does:
    ``estarter permissions grant APP PERM`` (or, if the manifest does not request it,
    add it to the manifest's ``permissions`` first)."""

    default_code = -32001

    @property
    def permission(self) -> str | None:
        value = self.data.get("permission") if isinstance(self.data, dict) else None
        return value if isinstance(value, str) else None

    @property
    def grant_command(self) -> str | None:
        """The command that grants the permission, when the error names one."""
        if self.permission is None:
            return None
        app = self.data.get("appId") if isinstance(self.data, dict) else None
        if not isinstance(app, str) or not app:
            app = os.environ.get("ESTARTER_APP_ID") or "APP"
        return f"estarter permissions grant {app} {self.permission}"

    def __str__(self) -> str:
        command = self.grant_command
        if command is None:
            return self.message
        if isinstance(self.data, dict) and self.data.get("requested") is False:
            return (f"{self.message}; the app's manifest does not request "
                    f"{self.permission}: add it to \"permissions\" in manifest.json, "
                    f"install again, then `{command}`")
        return f"{self.message}; the operator grants it with `{command}`"


class NotFoundError(ApiError):
    """A file, key, app or topic does not exist; ``data`` may name the path."""

    default_code = -32002


class QuotaExceededError(ApiError):
    """A write or allocation would go beyond one of the app's quotas."""

    default_code = -32003


class ApiTimeoutError(ApiError):
    """The kernel timed out, or ``call(timeout=...)`` expired before the answer came."""

    default_code = -32004


class BusyError(ApiError):
    """The target is busy or rate limited; retrying later may succeed."""

    default_code = -32005


class NotSupportedError(ApiError):
    """The method or feature is not available on this host or runtime."""

    default_code = -32006


class UnavailableError(ApiError):
    """The kernel or one of its actors is down or restarting and could not serve the
    call in time (not NotFoundError: the file or app may exist). Retrying later may
    succeed."""

    default_code = -32007


class MethodNotFoundError(ApiError):
    """The kernel has no method of this name."""

    default_code = -32601


class InvalidParamsError(ApiError):
    """The params are missing, of the wrong type or out of range."""

    default_code = -32602


class ConnectionClosedError(ApiError):
    """The channel to the kernel is closed (by the host, or by ``client.close()``)."""

    default_code = -32000


_BY_CODE: dict[int, type[ApiError]] = {
    cls.default_code: cls
    for cls in (
        PermissionDeniedError,
        NotFoundError,
        QuotaExceededError,
        ApiTimeoutError,
        BusyError,
        NotSupportedError,
        UnavailableError,
        MethodNotFoundError,
        InvalidParamsError,
    )
}

__all__ = [
    "ApiError",
    "ApiTimeoutError",
    "BusyError",
    "ConnectionClosedError",
    "InvalidParamsError",
    "MethodNotFoundError",
    "NotFoundError",
    "NotSupportedError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "UnavailableError",
]
