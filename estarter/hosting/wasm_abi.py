"""The ``estarter`` import module of wasm guests (DESIGN, "WebAssembly ABI").

``log(level, ptr, len)``, ``api_call(req_ptr, req_len) -> i32`` and
``api_response(buf_ptr, buf_len) -> i32``. Every pointer and length the guest
passes is read as unsigned and checked against the memory's *current* size before
anything is read or allocated; requests, responses and log lines are capped. These
functions run on the guest's thread and never raise: an exception escaping a
wasmtime-py host function lands in a process-global slot shared by all guests.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import wasmtime

from ..errors import ApiTimeout, EstarterError, InternalError, QuotaExceeded, RuntimeClosed
from .base import ApiHandler, LogSink

MODULE = "estarter"
MAX_REQUEST = 1 << 20  # bytes of one api_call request
MAX_RESPONSE = 1 << 20  # bytes of one kept response
MAX_LOG_LINE = 16 * 1024  # longer lines are cut
API_TIMEOUT = 30.0  # seconds an api_call may block the guest

# Negative results of api_call / api_response.
ERR_BOUNDS = -1  # pointer or length outside memory
ERR_TOO_LARGE = -2  # request over MAX_REQUEST
ERR_NOT_JSON = -3  # not UTF-8 JSON, not an object, or no string "method"

LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}
_U32 = 0xFFFFFFFF

_I32 = wasmtime.ValType.i32()
SIGNATURES: dict[str, wasmtime.FuncType] = {
    "log": wasmtime.FuncType([_I32, _I32, _I32], []),
    "api_call": wasmtime.FuncType([_I32, _I32], [_I32]),
    "api_response": wasmtime.FuncType([_I32, _I32], [_I32]),
}


class BoundedLog:
    """Lines to the app's log under a byte budget (token bucket); thread-safe.

    Beyond the budget lines are dropped and counted; one line reports the drop once
    the budget refills, so a chatty guest cannot flood the supervisor or its disk.
    """

    def __init__(self, sink: LogSink, rate: float = 256 * 1024, burst: float = 4 << 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._last = clock()
        self._dropped = 0
        self._lock = threading.Lock()

    def line(self, level: str, text: str) -> None:
        if len(text) > MAX_LOG_LINE:
            text = text[:MAX_LOG_LINE] + " [cut]"
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            cost = len(text) + 1
            if self._tokens < cost:
                self._dropped += 1
                return
            self._tokens -= cost
            dropped, self._dropped = self._dropped, 0
        try:
            if dropped:
                self._sink("warning", f"[{dropped} log lines dropped: log rate limit]")
            self._sink(level, text)
        except Exception:  # a broken sink must not kill the guest
            pass


class LineSplitter:
    """A WASI stdout/stderr stream cut into lines for a BoundedLog (one per stream)."""

    def __init__(self, log: BoundedLog, level: str) -> None:
        self._log, self._level = log, level
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            self._emit(bytes(self._buf[:nl]))
            del self._buf[: nl + 1]
        if len(self._buf) > MAX_LOG_LINE:  # a line with no end is still bounded
            self._emit(bytes(self._buf))
            self._buf.clear()

    def flush(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()

    def _emit(self, raw: bytes) -> None:
        self._log.line(self._level, raw.decode("utf-8", "replace").rstrip("\r"))


class GuestAbi:
    """The ``estarter`` imports of one instance; ``memory`` is set once instantiated."""

    def __init__(self, api: ApiHandler, log: BoundedLog, stopping: threading.Event,
                 api_timeout: float = API_TIMEOUT) -> None:
        self._api, self._log = api, log
        self._stopping = stopping
        self._api_timeout = api_timeout
        self.memory: wasmtime.Memory | None = None
        self._response = b""
        self.calls = 0

    def define(self, linker: wasmtime.Linker) -> None:
        linker.define_func(MODULE, "log", SIGNATURES["log"], self._log_import, access_caller=True)
        linker.define_func(MODULE, "api_call", SIGNATURES["api_call"], self._api_call,
                           access_caller=True)
        linker.define_func(MODULE, "api_response", SIGNATURES["api_response"],
                           self._api_response, access_caller=True)

    # -- memory access: check first, then touch --------------------------------------

    def _span(self, caller: wasmtime.Caller, ptr: int, length: int) -> tuple[int, int] | None:
        """(host address, length) of a guest range, or None if any byte is outside memory."""
        memory = self.memory
        if memory is None:  # called from a start function, before we saw the exports
            found = caller.get("memory")
            memory = found if isinstance(found, wasmtime.Memory) else None
            if memory is None:
                return None
        ptr &= _U32
        length &= _U32
        if ptr + length > memory.data_len(caller):
            return None
        base = ctypes.addressof(memory.data_ptr(caller).contents)
        return base + ptr, length

    # -- the imports -------------------------------------------------------------------

    def _log_import(self, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
        try:
            span = self._span(caller, ptr, length)
            if span is None:
                self._log.line("warning", "[log: pointer or length outside memory]")
                return
            text = ctypes.string_at(span[0], min(span[1], MAX_LOG_LINE)).decode("utf-8", "replace")
            self._log.line(LEVELS.get(level, "info"), text)
        except Exception:  # see the module docstring
            pass

    def _api_call(self, caller: wasmtime.Caller, ptr: int, length: int) -> int:
        try:
            self._response = b""
            span = self._span(caller, ptr, length)
            if span is None:
                return ERR_BOUNDS
            if span[1] > MAX_REQUEST:
                return ERR_TOO_LARGE
            try:
                request = json.loads(ctypes.string_at(*span))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                return ERR_NOT_JSON
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                return ERR_NOT_JSON
            self.calls += 1
            self._response = self._perform(request["method"], request.get("params", {}))
            return len(self._response)
        except Exception:  # see the module docstring
            self._response = _error_json(InternalError("host failure in api_call"))
            return len(self._response)

    def _api_response(self, caller: wasmtime.Caller, ptr: int, length: int) -> int:
        try:
            span = self._span(caller, ptr, length)
            if span is None:
                return ERR_BOUNDS
            count = min(span[1], len(self._response))
            ctypes.memmove(span[0], self._response, count)
            return count
        except Exception:  # see the module docstring
            return ERR_BOUNDS

    def _perform(self, method: str, params: Any) -> bytes:
        """The response JSON of one call; waits for the future in slices so stop is prompt."""
        try:
            future = self._api(method, params)
            deadline = time.monotonic() + self._api_timeout
            while True:
                if self._stopping.is_set():
                    future.cancel()
                    raise RuntimeClosed("the app is stopping")
                left = deadline - time.monotonic()
                if left <= 0:
                    future.cancel()
                    raise ApiTimeout(f"{method}: no answer within {self._api_timeout:g} s")
                try:
                    result = future.result(timeout=min(left, 0.05))
                    break
                except concurrent.futures.TimeoutError:
                    continue
        except EstarterError as exc:
            return _error_json(exc)
        except concurrent.futures.CancelledError:
            return _error_json(RuntimeClosed(f"{method}: cancelled"))
        except Exception as exc:  # a kernel bug is the app's -32603
            return _error_json(InternalError(f"{method}: {type(exc).__name__}: {exc}"))
        try:
            out = json.dumps({"result": result}, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            return _error_json(InternalError(f"{method}: result is not JSON: {exc}"))
        if len(out) > MAX_RESPONSE:
            return _error_json(QuotaExceeded(
                f"{method}: response of {len(out)} bytes is over the {MAX_RESPONSE} byte cap",
                {"size": len(out), "cap": MAX_RESPONSE}))
        return out


def _error_json(exc: EstarterError) -> bytes:
    return json.dumps({"error": exc.to_dict()}, separators=(",", ":"), default=str).encode()
