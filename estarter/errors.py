"""The one error hierarchy of estarter.

Every error that can cross a process or actor boundary is plain data: a JSON-RPC
``code``, a ``message`` and optional ``data``, with ``to_dict`` / ``from_dict`` so
that a kernel error raised in a Ray actor reaches the app as the same JSON-RPC
error object, and comes back out of the SDK as the same class.
"""

from __future__ import annotations

from typing import Any, ClassVar

# JSON-RPC 2.0 codes (spec section 5.1) and estarter's application codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
OTHER = -32000
PERMISSION_DENIED = -32001
NOT_FOUND = -32002
QUOTA_EXCEEDED = -32003
TIMEOUT = -32004
BUSY = -32005
NOT_SUPPORTED = -32006
UNAVAILABLE = -32007


class EstarterError(Exception):
    """Root of every error estarter raises on purpose."""

    code: ClassVar[int] = OTHER

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        """The JSON-RPC error object for this error."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out

    @staticmethod
    def from_dict(obj: dict[str, Any]) -> EstarterError:
        """Rebuild the most specific error class for a JSON-RPC error object."""
        code = obj.get("code", OTHER)
        cls = _BY_CODE.get(code, EstarterError) if isinstance(code, int) else EstarterError
        err = cls(str(obj.get("message", "")), obj.get("data"))
        if cls is EstarterError and isinstance(code, int):
            err.code = code  # type: ignore[misc]  # keep an unknown code as sent
        return err

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep message and data when pickled across Ray.
        return (self.__class__, (self.message, self.data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code})"


class ParseError(EstarterError):
    """The bytes received are not valid JSON."""

    code = PARSE_ERROR


class InvalidRequest(EstarterError):
    """The JSON is not a valid JSON-RPC 2.0 request object."""

    code = INVALID_REQUEST


class MethodNotFound(EstarterError):
    """No kernel method has this name."""

    code = METHOD_NOT_FOUND


class InvalidParams(EstarterError):
    """A method's params are missing, of the wrong type or out of range."""

    code = INVALID_PARAMS


class InternalError(EstarterError):
    """A bug or an unexpected failure inside estarter while serving a call."""

    code = INTERNAL_ERROR


class PermissionDenied(EstarterError):
    """The calling app does not hold the permission the method needs."""

    code = PERMISSION_DENIED

    @classmethod
    def for_permission(cls, permission: str, method: str = "", app_id: str = "",
                       requested: bool | None = None) -> PermissionDenied:
        """``data`` = {permission}, plus {appId, requested} when known: what the SDK
        needs to tell the app's author the command that grants it (or that the
        manifest must request it first)."""
        what = f" for {method}" if method else ""
        data: dict[str, Any] = {"permission": permission}
        if app_id:
            data["appId"] = app_id
        if requested is not None:
            data["requested"] = requested
        return cls(f"permission {permission} is not granted{what}", data)


class NotFound(EstarterError):
    """An app, file, key or topic does not exist (or is not running)."""

    code = NOT_FOUND


class QuotaExceeded(EstarterError):
    """A write or an allocation would take the app beyond one of its quotas."""

    code = QUOTA_EXCEEDED


class ApiTimeout(EstarterError):
    """An operation did not finish within its deadline."""

    code = TIMEOUT


class Busy(EstarterError):
    """The target is busy or rate limited (a full inbox, a flooded channel)."""

    code = BUSY


class NotSupported(EstarterError):
    """The method or feature is not available on this host or runtime."""

    code = NOT_SUPPORTED


# Errors raised by estarter itself (not by a kernel method). They share the root so
# a caller can catch one class; their codes say what kind of failure they are.


class ManifestError(EstarterError):
    """A manifest is missing, not JSON, or fails validation. ``data`` = {key}."""

    code = INVALID_PARAMS


class PackageError(EstarterError):
    """An app package or folder is malformed or hostile; nothing was installed."""

    code = INVALID_PARAMS


class LaunchError(EstarterError):
    """An app could not be started (host unavailable, limits refused, spawn failed)."""

    code = OTHER


class SandboxUnavailable(LaunchError):
    """A limit or namespace the manifest asks for cannot be applied and strict mode is on."""

    code = NOT_SUPPORTED


class ProtocolViolation(EstarterError):
    """An app broke the wire protocol (bad framing, oversize or malformed messages)."""

    code = INVALID_REQUEST


class RuntimeClosed(EstarterError):
    """The runtime, a host or a connection was used after it was closed."""

    code = OTHER


class Unavailable(EstarterError):
    """The kernel or one of its actors (permissions, VFS) is down or restarting and
    the call could not be served in time. Not NotFound: the file or app may well
    exist. Trying again later may succeed."""

    code = UNAVAILABLE


class ActorUnavailable(Unavailable):
    """A Ray actor (the kernel, the VFS, the permissions, a supervisor) is dead or
    restarting, so a call to it got no answer. Callers retry idempotent calls for a
    bounded time (``estarter.kernel.methods.retry_on_restart``)."""


class Unschedulable(LaunchError):
    """No node of the cluster can hold what the app's manifest asks for."""

    code = BUSY


_BY_CODE: dict[int, type[EstarterError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        PermissionDenied,
        NotFound,
        QuotaExceeded,
        ApiTimeout,
        Busy,
        NotSupported,
        Unavailable,
    )
}

__all__ = [
    "BUSY",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "NOT_FOUND",
    "NOT_SUPPORTED",
    "OTHER",
    "PARSE_ERROR",
    "PERMISSION_DENIED",
    "QUOTA_EXCEEDED",
    "TIMEOUT",
    "UNAVAILABLE",
    "ActorUnavailable",
    "ApiTimeout",
    "Busy",
    "EstarterError",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "LaunchError",
    "ManifestError",
    "MethodNotFound",
    "NotFound",
    "NotSupported",
    "PackageError",
    "ParseError",
    "PermissionDenied",
    "ProtocolViolation",
    "QuotaExceeded",
    "RuntimeClosed",
    "SandboxUnavailable",
    "Unavailable",
    "Unschedulable",
]
