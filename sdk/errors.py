"""Errors the SDK raises: a kernel's JSON-RPC error object, rebuilt as a class.

``ApiError.from_dict`` picks the subclass by ``code``, so an app can catch
``PermissionDeniedError`` rather than compare numbers. The codes are the ones of
``estarter.errors`` (the SDK cannot import it: it must run with the stdlib only).
"""

from __future__ import annotations

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
    """The app does not hold the permission the method needs; ``data`` = {permission}."""

    default_code = -32001


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
