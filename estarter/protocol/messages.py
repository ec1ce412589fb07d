"""JSON-RPC 2.0 messages: parse a frame body into typed messages, build replies.

Parsing never raises on peer input: whatever is wrong becomes an ``Invalid`` item
that carries the error to answer with (spec section 5.1), so the endpoint decides
what to send and what to count as malformed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from estarter.errors import EstarterError, InvalidRequest, ParseError

Id = str | int | None
Params = dict[str, Any] | list[Any] | None

_RESPONSE_KEYS = frozenset({"result", "error"})
# One batch is served as one unit (its answer goes out after its last call), so its
# size is what one message may hold the peer's budget with: capped in entries and
# bytes. Over a cap the whole batch is one Invalid (answered -32600, counted
# malformed) and none of its calls is served.
MAX_BATCH_ENTRIES = 100
MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """A call that wants an answer with the same ``id``."""

    id: str | int
    method: str
    params: Params = None


@dataclass(frozen=True, slots=True)
class Notification:
    """A call without an ``id``: never answered, not even with an error."""

    method: str
    params: Params = None


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer to one of our requests."""

    id: Id
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A failed answer to one of our requests; ``error`` is the JSON-RPC error object."""

    id: Id
    error: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Invalid:
    """Something that is not a valid message. ``reply`` is False for broken
    responses: answering a response would risk an endless exchange of errors."""

    id: Id
    error: EstarterError
    reply: bool = True


Message = Request | Notification | Response | ErrorResponse | Invalid


@dataclass(frozen=True, slots=True)
class Batch:
    """A non-empty JSON array of messages (an empty one parses as ``Invalid``)."""

    items: tuple[Message, ...]


def _bad(detail: str) -> InvalidRequest:
    # The spec's message, with what exactly is wrong as data.
    return InvalidRequest("Invalid Request", {"detail": detail})


def _is_id(value: Any) -> bool:
    # bool is an int subclass but not a JSON-RPC id; fractional numbers are not ids here.
    return value is None or isinstance(value, str) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def parse_body(body: bytes | str) -> Message | Batch:
    """Parse one frame body. Never raises on bad input."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return Invalid(None, ParseError("Parse error"))
    if isinstance(obj, list) and len(body) > MAX_BATCH_BYTES:
        return Invalid(None, _bad(f"batch of {len(body)} bytes is over the cap of "
                                  f"{MAX_BATCH_BYTES}"))
    return parse_obj(obj)


def parse_obj(obj: Any) -> Message | Batch:
    """Validate an already decoded JSON value."""
    if isinstance(obj, list):
        if not obj:
            return Invalid(None, _bad("empty batch"))
        if len(obj) > MAX_BATCH_ENTRIES:
            return Invalid(None, _bad(f"batch of {len(obj)} entries is over the cap of "
                                      f"{MAX_BATCH_ENTRIES}"))
        return Batch(tuple(parse_one(item) for item in obj))
    return parse_one(obj)


def plain_request(obj: Any) -> tuple[str | int, str, Params] | None:
    """(id, method, params) when ``obj`` is a valid request, as ``parse_one`` would
    make a ``Request`` of it; None for anything else (which ``parse_one`` judges).
    For a host answering a call without an ``Endpoint`` (``ProcessHost``)."""
    if type(obj) is not dict or obj.get("jsonrpc") != "2.0":
        return None
    method = obj.get("method")
    msg_id = obj.get("id")
    if not isinstance(method, str) or msg_id is None or not _is_id(msg_id):
        return None
    params = obj.get("params")
    if "params" in obj and not isinstance(params, dict | list):
        return None
    return msg_id, method, params


def parse_one(obj: Any) -> Message:
    """Validate one message object (not a batch: a nested array is invalid)."""
    if not isinstance(obj, dict):
        return Invalid(None, _bad("not an object"))
    has_id = "id" in obj
    msg_id = obj.get("id")
    safe_id = msg_id if _is_id(msg_id) else None
    if obj.get("jsonrpc") != "2.0":
        return Invalid(safe_id, _bad('jsonrpc must be "2.0"'),
                       reply="method" in obj or not (_RESPONSE_KEYS & obj.keys()))
    if "method" not in obj and _RESPONSE_KEYS & obj.keys():
        return _parse_response(obj, safe_id)
    method = obj.get("method")
    if not isinstance(method, str):
        return Invalid(safe_id, _bad("method must be a string"))
    params = obj.get("params")
    if "params" in obj and not isinstance(params, dict | list):
        return Invalid(safe_id, _bad("params must be object or array"))
    if not has_id:
        return Notification(method, params)
    if msg_id is None or not _is_id(msg_id):
        # A null id is allowed by the spec but only meant for errors; the invalid
        # ones cannot be echoed back, so both are refused.
        return Invalid(None, _bad("id must be a string or integer"))
    return Request(msg_id, method, params)


def _parse_response(obj: dict[str, Any], safe_id: Id) -> Message:
    if "id" not in obj or not _is_id(obj["id"]):
        return Invalid(None, _bad("response: bad id"), reply=False)
    if ("result" in obj) == ("error" in obj):
        return Invalid(safe_id, _bad("response: result xor error"), reply=False)
    if "result" in obj:
        return Response(safe_id, obj["result"])
    error = obj["error"]
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or isinstance(error.get("code"), bool)
        or not isinstance(error.get("message"), str)
    ):
        return Invalid(safe_id, _bad("response: bad error object"), reply=False)
    return ErrorResponse(safe_id, error)


# Builders. Outgoing messages are plain dicts: the writer encodes them with
# ``encode_frame``.


def request(msg_id: str | int, method: str, params: Params = None) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        out["params"] = params
    return out


def notification(method: str, params: Params = None) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        out["params"] = params
    return out


def response(msg_id: Id, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result, "id": msg_id}


def error_response(msg_id: Id, error: EstarterError | dict[str, Any]) -> dict[str, Any]:
    body = error.to_dict() if isinstance(error, EstarterError) else error
    return {"jsonrpc": "2.0", "error": body, "id": msg_id}


__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ENTRIES",
    "Batch",
    "ErrorResponse",
    "Id",
    "Invalid",
    "Message",
    "Notification",
    "Params",
    "Request",
    "Response",
    "error_response",
    "notification",
    "parse_body",
    "parse_obj",
    "parse_one",
    "plain_request",
    "request",
    "response",
]
