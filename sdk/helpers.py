"""Typed helpers over ``client.call``, one class per kernel namespace.

Method names and params are those of DESIGN's kernel table; each helper returns
the useful part of the result (``fs.exists`` -> bool, ``fs.read_text`` -> str).
Errors are the ``ApiError`` subclasses ``client.call`` raises.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (app start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Call = Callable[..., Any]


class _Api:
    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call


class SystemApi(_Api):
    __slots__ = ()

    def ping(self) -> dict[str, Any]:
        """``{pong: true, time}``."""
        return self._call("system.ping", {})

    def time(self) -> int:
        """The kernel's clock in Unix milliseconds."""
        return int(self._call("system.time", {})["unixMs"])

    def info(self) -> dict[str, Any]:
        """``{os, cpus, memoryBytes, version, node}``; needs ``system.info``."""
        return self._call("system.info", {})


class UiApi(_Api):
    __slots__ = ()

    def notify(self, title: str, message: str, level: str = "info") -> Any:
        """Show a notification; returns its id."""
        return self._call("ui.notify", {"title": title, "message": message, "level": level})["id"]

    def clipboard_get(self) -> str:
        return str(self._call("ui.clipboard.get", {})["text"])

    def clipboard_set(self, text: str) -> None:
        self._call("ui.clipboard.set", {"text": text})


class PermissionsApi(_Api):
    __slots__ = ()

    def check(self, name: str) -> bool:
        return bool(self._call("permission.check", {"permission": name})["granted"])

    def list(self) -> list[str]:
        """The permissions granted to this app now."""
        return list(self._call("permission.list", {})["granted"])

    def request(self, name: str, reason: str | None = None) -> bool:
        """Ask the operator; False when refused or when nobody answers in time."""
        params: dict[str, Any] = {"permission": name}
        if reason is not None:
            params["reason"] = reason
        return bool(self._call("permission.request", params)["granted"])


class FsApi(_Api):
    """Files in the app's virtual file system (``/appdata/...``, ``/shared/...``)."""

    __slots__ = ()

    def read_text(self, path: str) -> str:
        return str(self._call("fs.read", {"path": path, "encoding": "text"})["text"])

    def read_bytes(self, path: str) -> bytes:
        import base64

        result = self._call("fs.read", {"path": path, "encoding": "base64"})
        return base64.b64decode(result["data"])

    def write_text(self, path: str, text: str, append: bool = False) -> int:
        """Write (atomically) or append; returns the bytes written."""
        return int(self._call("fs.write", {"path": path, "text": text, "append": append})
                   ["written"])

    def write_bytes(self, path: str, data: bytes, append: bool = False) -> int:
        import base64

        encoded = base64.b64encode(data).decode("ascii")
        return int(self._call("fs.write", {"path": path, "data": encoded, "append": append})
                   ["written"])

    def delete(self, path: str) -> bool:
        return bool(self._call("fs.delete", {"path": path})["deleted"])

    def mkdir(self, path: str) -> bool:
        return bool(self._call("fs.mkdir", {"path": path})["created"])

    def list(self, path: str) -> Any:
        """The folder's entries, as the kernel lists them."""
        return self._call("fs.list", {"path": path})

    def exists(self, path: str) -> bool:
        return bool(self._call("fs.exists", {"path": path})["exists"])

    def stat(self, path: str) -> dict[str, Any]:
        """``{name, size, modified, isDir}``."""
        return self._call("fs.stat", {"path": path})


class RegistryApi(_Api):
    """The app's key-value registry (values are any JSON)."""

    __slots__ = ()

    def get(self, key: str) -> Any:
        """The value, or None when the kernel answers without one."""
        result = self._call("registry.get", {"key": key})
        return result.get("value") if isinstance(result, dict) else None

    def set(self, key: str, value: Any, ttl_seconds: float | None = None) -> None:
        params: dict[str, Any] = {"key": key, "value": value}
        if ttl_seconds is not None:
            params["ttlSeconds"] = ttl_seconds
        self._call("registry.set", params)

    def delete(self, key: str) -> None:
        self._call("registry.delete", {"key": key})

    def list(self, prefix: str | None = None) -> list[str]:
        params = {} if prefix is None else {"prefix": prefix}
        return list(self._call("registry.list", params)["keys"])


class IpcApi(_Api):
    """Messages between apps. Pushed messages arrive as ``ipc.message``
    notifications (see ``client.on``); ``receive`` pulls them instead."""

    __slots__ = ()

    def send(self, to: str, message: Any, topic: str | None = None) -> bool:
        params: dict[str, Any] = {"to": to, "message": message}
        if topic is not None:
            params["topic"] = topic
        return bool(self._call("ipc.send", params)["delivered"])

    def broadcast(self, topic: str, message: Any) -> int:
        """Returns how many apps got it."""
        return int(self._call("ipc.broadcast", {"topic": topic, "message": message})["delivered"])

    def subscribe(self, topic: str) -> None:
        self._call("ipc.subscribe", {"topic": topic})

    def unsubscribe(self, topic: str) -> None:
        self._call("ipc.unsubscribe", {"topic": topic})

    def receive(self, timeout_ms: int | None = None) -> dict[str, Any] | None:
        """``{from, topic, message}``, or None when nothing came within ``timeout_ms``."""
        params = {} if timeout_ms is None else {"timeoutMs": timeout_ms}
        return self._call("ipc.receive", params)


class ProcessApi(_Api):
    """Other apps: launch and stop them (``process.launch`` / ``process.kill``)."""

    __slots__ = ()

    def launch(self, app_id: str) -> dict[str, Any]:
        """``{appId, state}``."""
        return self._call("process.launch", {"appId": app_id})

    def terminate(self, app_id: str) -> dict[str, Any]:
        """``{appId, state}``."""
        return self._call("process.terminate", {"appId": app_id})

    def list(self) -> list[dict[str, Any]]:
        """``[{appId, state, pid, node, startedAt}]``."""
        return list(self._call("process.list", {}))

    def info(self, app_id: str) -> Any:
        return self._call("process.info", {"appId": app_id})


__all__ = [
    "FsApi",
    "IpcApi",
    "PermissionsApi",
    "ProcessApi",
    "RegistryApi",
    "SystemApi",
    "UiApi",
]
