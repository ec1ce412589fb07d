"""The ``estarter`` import module of wasm guests (DESIGN, "WebAssembly ABI").

``log(level, ptr, len)``, ``api_call(req_ptr, req_len) -> i32`` and
``api_response(buf_ptr, buf_len) -> i32``. Every pointer and length the guest
passes is read as unsigned and checked against the memory's *current* size before
anything is read or allocated; requests, responses and log lines are capped.

The imports are raw ("unchecked") wasmtime host functions defined once, with WASI,
in one linker shared by every app of the process; each finds its app's
:class:`GuestAbi` through the calling store's data. wasmtime-py's generic
trampoline and a Linker plus ``define_wasi`` per app each cost more than the whole
api_call or launch (see ``benchmarks/bench_wasm.py``). This reaches into
wasmtime-py 50's ``_ffi`` / ``_bindings`` and ``Memory._memory``; the unit tests
fail loudly if a wasmtime-py upgrade moves them.

The imports run on the guest's thread and never raise (an exception escaping a
host function would land in wasmtime-py's process-global slot shared by all
guests). They serve calls from ``_start`` on: a module's own start function runs
before the host knows its memory, and gets -1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _bindings as wasmtime_bindings
from wasmtime import _ffi as wasmtime_ffi

from ..errors import (
    ApiTimeout,
    Busy,
    EstarterError,
    InternalError,
    QuotaExceeded,
    RuntimeClosed,
)
from .applog import BoundedLog
from .base import ApiHandler
from .budget import TokenBucket

MODULE = "estarter"
MAX_REQUEST = 1 << 20  # bytes of one api_call request
MAX_RESPONSE = 1 << 20  # bytes of one kept response
MAX_LOG_LINE = 16 * 1024  # longer lines are cut
API_TIMEOUT = 30.0  # seconds an api_call may block the guest
API_CALLS_PER_SECOND = 1000.0  # per app; over the budget a call answers -32005
API_CALL_BURST = 2000.0

# Negative results of api_call / api_response.
ERR_BOUNDS = -1  # pointer or length outside memory
ERR_TOO_LARGE = -2  # request over MAX_REQUEST
ERR_NOT_JSON = -3  # not UTF-8 JSON, not an object, or no string "method"

LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}
_U32 = 0xFFFFFFFF

# Raw C entry points (fresh function objects, so wasmtime-py's own bindings are untouched).
# The imports are "unchecked" host functions: wasmtime-py's generic trampoline converts
# every value through Python objects and costs about as much as our whole api_call.
def _cfunc(name: str, restype: Any, *argtypes: Any) -> Any:
    func = wasmtime_ffi.dll[name]
    func.restype, func.argtypes = restype, list(argtypes)
    return func


_RawCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.POINTER(wasmtime_bindings.wasmtime_val_raw),
                                ctypes.c_size_t)
_caller_context = _cfunc("wasmtime_caller_context", ctypes.c_void_p, ctypes.c_void_p)
_store_context = _cfunc("wasmtime_store_context", ctypes.c_void_p, ctypes.c_void_p)
_context_get_data = _cfunc("wasmtime_context_get_data", ctypes.c_void_p, ctypes.c_void_p)
_memory_size = _cfunc("wasmtime_memory_data_size", ctypes.c_size_t, ctypes.c_void_p,
                      ctypes.c_void_p)
_memory_data = _cfunc("wasmtime_memory_data", ctypes.c_void_p, ctypes.c_void_p,
                      ctypes.c_void_p)
_define_unchecked = _cfunc(
    "wasmtime_linker_define_func_unchecked", ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
    _RawCallback, ctypes.c_void_p, ctypes.c_void_p)

_I32 = wasmtime.ValType.i32()
SIGNATURES: dict[str, wasmtime.FuncType] = {
    "log": wasmtime.FuncType([_I32, _I32, _I32], []),
    "api_call": wasmtime.FuncType([_I32, _I32], [_I32]),
    "api_response": wasmtime.FuncType([_I32, _I32], [_I32]),
}


class LineSplitter:
    """A WASI stdout/stderr stream cut into lines for a BoundedLog (one per stream)."""

    def __init__(self, log: BoundedLog, level: str, stream: str) -> None:
        self._log, self._level, self._stream = log, level, stream
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
        self._log.line(self._level, raw.decode("utf-8", "replace").rstrip("\r"), self._stream)


class GuestAbi:
    """The ``estarter`` imports of one instance; ``memory`` is set once instantiated."""

    def __init__(self, api: ApiHandler, log: BoundedLog, stopping: threading.Event,
                 api_timeout: float = API_TIMEOUT, *,
                 api_rate: float = API_CALLS_PER_SECOND,
                 api_burst: float = API_CALL_BURST) -> None:
        self._api, self._log = api, log
        self._stopping = stopping
        self._api_timeout = api_timeout
        # One guest makes one call at a time, but back to back: without a budget a
        # loop of api_call keeps the kernel busy for everyone. rate <= 0: unlimited.
        self.api_budget = TokenBucket(api_rate, api_burst)
        self._memory: wasmtime.Memory | None = None
        self._memory_ref: int | None = None
        self._response = b""
        self.calls = 0

    def new_store(self, engine: wasmtime.Engine) -> wasmtime.Store:
        """A store whose guest's ``estarter`` imports reach this object.

        The store holds this object as its data; the shared linker's imports find it
        from the calling store, so one linker and one InstancePre serve every app.
        """
        store = wasmtime.Store(engine, data=self)
        key = _context_get_data(_store_context(store.ptr()))
        with _ABIS_LOCK:
            _ABIS[key] = self
        return store

    # -- memory access: check first, then touch --------------------------------------

    def _span(self, context: int, ptr: int, length: int) -> tuple[int, int] | None:
        """(host address, length) of a guest range, or None if any byte is outside memory.

        Before ``memory`` is known (a module's start function) there is no memory to use.
        """
        memory = self._memory_ref
        if memory is None:
            return None
        ptr &= _U32
        length &= _U32
        if ptr + length > _memory_size(context, memory):
            return None
        return _memory_data(context, memory) + ptr, length

    @property
    def memory(self) -> wasmtime.Memory | None:
        return self._memory

    @memory.setter
    def memory(self, memory: wasmtime.Memory | None) -> None:
        self._memory = memory
        # wasmtime_memory_t of this export, for the C calls (wasmtime-py 50 keeps it here).
        self._memory_ref = ctypes.addressof(memory._memory) if memory is not None else None

    # -- the imports: raw callbacks (caller, [params... | results]) --------------------

    def _log_raw(self, context: int, args: Any) -> None:
        try:
            level, ptr, length = args[0].i32, args[1].i32, args[2].i32
            span = self._span(context, ptr, length)
            if span is None:
                self._log.line("warning", "[log: pointer or length outside memory]")
                return
            text = ctypes.string_at(span[0], min(span[1], MAX_LOG_LINE)).decode("utf-8", "replace")
            self._log.line(LEVELS.get(level, "info"), text)
        except Exception:  # see the module docstring
            pass

    def _api_call_raw(self, context: int, args: Any) -> None:
        args[0].i32 = self._api_call(context, args[0].i32, args[1].i32)

    def _api_response_raw(self, context: int, args: Any) -> None:
        result = ERR_BOUNDS
        try:
            span = self._span(context, args[0].i32, args[1].i32)
            if span is not None:
                count = min(span[1], len(self._response))
                ctypes.memmove(span[0], self._response, count)
                result = count
        except Exception:  # see the module docstring
            pass
        args[0].i32 = result

    def _api_call(self, context: int, ptr: int, length: int) -> int:
        try:
            self._response = b""
            span = self._span(context, ptr, length)
            if span is None:
                return ERR_BOUNDS
            if span[1] > MAX_REQUEST:
                return ERR_TOO_LARGE
            try:
                request = _decode(ctypes.string_at(*span).decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                return ERR_NOT_JSON
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                return ERR_NOT_JSON
            self.calls += 1
            if not self.api_budget.take():
                self._response = _error_json(Busy(
                    f"api_call rate limit: more than {self.api_budget.rate:g} calls a second",
                    {"method": request["method"][:100]}))
                return len(self._response)
            self._response = self._perform(request["method"], request.get("params", {}))
            return len(self._response)
        except Exception:  # see the module docstring
            self._response = _error_json(InternalError("host failure in api_call"))
            return len(self._response)

    def _perform(self, method: str, params: Any) -> bytes:
        """The response JSON of one call; waits for the future in slices so stop is prompt."""
        try:
            future = self._api(method, params)
            deadline = time.monotonic() + self._api_timeout
            while not future.done():
                if self._stopping.is_set():
                    future.cancel()
                    raise RuntimeClosed("the app is stopping")
                left = deadline - time.monotonic()
                if left <= 0:
                    future.cancel()
                    raise ApiTimeout(f"{method}: no answer within {self._api_timeout:g} s")
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    future.result(timeout=min(left, 0.05))
            result = future.result()
        except EstarterError as exc:
            return _error_json(exc)
        except concurrent.futures.CancelledError:
            return _error_json(RuntimeClosed(f"{method}: cancelled"))
        except Exception as exc:  # a kernel bug is the app's -32603
            return _error_json(InternalError(f"{method}: {type(exc).__name__}: {exc}"))
        try:
            out = _encode({"result": result}).encode()
        except (TypeError, ValueError) as exc:
            return _error_json(InternalError(f"{method}: result is not JSON: {exc}"))
        if len(out) > MAX_RESPONSE:
            return _error_json(QuotaExceeded(
                f"{method}: response of {len(out)} bytes is over the {MAX_RESPONSE} byte cap",
                {"size": len(out), "cap": MAX_RESPONSE}))
        return out


# -- one linker for every app ------------------------------------------------------------

_ABIS: weakref.WeakValueDictionary[int, GuestAbi] = weakref.WeakValueDictionary()
_ABIS_LOCK = threading.Lock()


def _dispatch(method: Callable[[GuestAbi, int, Any], None], failed: int | None) -> Any:
    """A raw host function calling ``method`` on the GuestAbi of the calling store."""

    def callback(_env: int, caller: int, args: Any, _n: int) -> int:
        try:
            context = _caller_context(caller)
            abi = _ABIS.get(_context_get_data(context))
            if abi is not None:
                method(abi, context, args)
                return 0
        except Exception:  # see the module docstring
            pass
        if failed is not None:
            args[0].i32 = failed
        return 0

    return _RawCallback(callback)


_CALLBACKS = {  # module-level: wasmtime keeps only their addresses
    "log": _dispatch(GuestAbi._log_raw, None),
    "api_call": _dispatch(GuestAbi._api_call_raw, ERR_BOUNDS),
    "api_response": _dispatch(GuestAbi._api_response_raw, ERR_BOUNDS),
}
_linker: wasmtime.Linker | None = None
_PRES: weakref.WeakKeyDictionary[wasmtime.Module, wasmtime.InstancePre] = (
    weakref.WeakKeyDictionary())
_LINK_LOCK = threading.Lock()


def shared_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """WASI preview1 plus the estarter imports, for stores made by ``GuestAbi.new_store``."""
    global _linker
    with _LINK_LOCK:
        if _linker is None:
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            for name, callback in _CALLBACKS.items():
                module, func = MODULE.encode(), name.encode()
                error = _define_unchecked(linker.ptr(), module, len(module), func, len(func),
                                          SIGNATURES[name].ptr(), callback, None, None)
                if error:  # pragma: no cover - only on a wasmtime API change
                    raise RuntimeError(f"cannot define {MODULE}.{name}")
            _linker = linker
        if _linker.engine is not engine:  # pragma: no cover - one engine per process
            raise RuntimeError("shared_linker: a second engine")
        return _linker


def instance_pre(engine: wasmtime.Engine, module: wasmtime.Module) -> wasmtime.InstancePre:
    """The module with its imports resolved against the shared linker, made once."""
    with _LINK_LOCK:
        pre = _PRES.get(module)
    if pre is None:
        pre = shared_linker(engine).instantiate_pre(module)
        with _LINK_LOCK:
            _PRES[module] = pre
    return pre


def _error_json(exc: EstarterError) -> bytes:
    return json.dumps({"error": exc.to_dict()}, separators=(",", ":"), default=str).encode()


# One encoder and decoder for every call: json.dumps with options builds a new encoder
# per call, which costs as much as the host call itself.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_decode = json.JSONDecoder().decode
