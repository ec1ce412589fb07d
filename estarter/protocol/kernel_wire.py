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
        return _dumps({"error": exc.to_dict()}).encode()
    except Exception as exc:  # a bug in a handler must reach the app as -32603
        return _dumps({"error": InternalError(f"internal error: {type(exc).__name__}")
                       .to_dict()}).encode()


def decode_reply(reply: bytes) -> Any:
    """The result, or raises the EstarterError the kernel answered."""
    obj = json.loads(reply)
    if "error" in obj:
        raise EstarterError.from_dict(obj["error"])
    return obj.get("result")
