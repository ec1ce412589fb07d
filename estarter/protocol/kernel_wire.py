"""The supervisor -> kernel call as one bytes value each way.

A Ray actor call with one bytes argument and a bytes result costs measurably less
than one with three Python arguments and a dict result (Ray pickles the latter);
on the hottest path of the system (every API call of every app) that difference
is most of our overhead over a raw actor call. Errors travel as data, not as
pickled exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import EstarterError, InternalError

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_call(app_id: str, method: str, params: Any) -> bytes:
    return _dumps([app_id, method, params]).encode()


def serve_call(handle: Callable[[str, str, Any], Any], payload: bytes) -> bytes:
    """Run one encoded call through ``handle`` and encode its outcome. Never raises."""
    try:
        app_id, method, params = json.loads(payload)
        return _dumps({"result": handle(app_id, method, params)}).encode()
    except EstarterError as exc:
        return encode_error(exc)
    except Exception as exc:  # a bug in a handler must reach the app as -32603
        return encode_error(InternalError(f"internal error: {type(exc).__name__}"))


def encode_error(exc: EstarterError) -> bytes:
    """A reply that answers ``exc``, as ``serve_call`` encodes one."""
    return _dumps({"error": exc.to_dict()}).encode()


def reply_error(reply: bytes) -> EstarterError | None:
    """The error a reply answers, or None for a result (without decoding one)."""
    if reply.startswith(b'{"result":'):
        return None
    obj = json.loads(reply)
    return EstarterError.from_dict(obj["error"]) if "error" in obj else None


def answer_body(msg_id: str | int, reply: bytes) -> bytes:
    """The JSON-RPC answer to request ``msg_id`` for a reply, its ``result`` or
    ``error`` member copied as the kernel encoded it: what ``messages.response``
    / ``error_response`` with the decoded reply would give, without decoding and
    encoding it again (issue 15: each JSON pass on an API call's path costs)."""
    return b'{"jsonrpc":"2.0",' + reply[1:-1] + b',"id":' + _dumps(msg_id).encode() + b"}"


def decode_reply(reply: bytes) -> Any:
    """The result, or raises the EstarterError the kernel answered."""
    obj = json.loads(reply)
    if "error" in obj:
        raise EstarterError.from_dict(obj["error"])
    return obj.get("result")
