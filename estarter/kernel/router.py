"""The kernel's handlers: name -> handler, with each method's facts (permission,
who serves it) from the one table in ``methods.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidParams, MethodNotFound
from .methods import spec_of

# handler(ctx, params) -> result. ``params`` is always a dict here.
Handler = Callable[["CallContext", dict[str, Any]], Any]


@dataclass(frozen=True)
class CallContext:
    """Who is calling. ``app_id`` comes from the supervisor or the socket token,
    never from anything the app claims in its message."""

    app_id: str


@dataclass(frozen=True)
class Method:
    name: str
    permission: str | None
    handler: Handler


class Router:
    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add(self, name: str, handler: Handler) -> None:
        """Register the handler of a method of the table (``methods.METHODS``)."""
        spec = spec_of(name)
        if spec is None:
            raise ValueError(f"method {name} is not in the method table")
        if name in self._methods:
            raise ValueError(f"method {name} registered twice")
        self._methods[name] = Method(name, spec.permission, handler)

    def lookup(self, name: str) -> Method:
        method = self._methods.get(name) if isinstance(name, str) else None
        if method is None:
            raise MethodNotFound(f"method not found: {name}", {"method": name})
        return method

    def names(self) -> list[str]:
        return sorted(self._methods)


def as_params(params: Any) -> dict[str, Any]:
    """JSON-RPC allows absent, object or array params; kernel methods take objects."""
    if params is None:
        return {}
    if isinstance(params, dict):
        return params
    raise InvalidParams("params must be an object")


def req(params: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """A required param of the given type, or InvalidParams naming it."""
    if key not in params:
        raise InvalidParams(f"missing param: {key}", {"param": key})
    value = params[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidParams(f"param {key} has the wrong type", {"param": key})
    return value


def opt(params: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if params.get(key) is None:
        return default
    return req(params, key, kind)
