"""The app's client of the estarter kernel: calls, host messages, shutdown.

One reader thread owns ``transport.recv()``: it routes answers to the waiting
callers by id (any number of threads may call at once) and hands the host's
requests and notifications to one handler thread, so a handler may itself call
the kernel without blocking the reader.
"""

from __future__ import annotations

import _thread
import itertools
import os
import sys
import threading

try:
    from _queue import SimpleQueue
except ImportError:  # not CPython
    from queue import SimpleQueue

from sdk.errors import ApiError, ApiTimeoutError, ConnectionClosedError
from sdk.helpers import (
    FsApi,
    IpcApi,
    PermissionsApi,
    ProcessApi,
    RegistryApi,
    SystemApi,
    UiApi,
)
from sdk.transports import SocketTransport, StdioTransport

# typing (and contextlib, queue, functools) are not imported at run time: every app
# start pays for each import of the SDK (typing alone was ~10 ms on a loaded host).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sdk.transports import Transport

    Handler = Callable[[Any], Any]
    ShutdownHandler = Callable[[float], Any]

METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603

# Set by the default shutdown handler; read by the SIGINT handler installed in
# hosted mode, so the host's app.shutdown ends the main thread with SystemExit(0)
# while a real Ctrl-C still raises KeyboardInterrupt.
_exit_requested = False


def _sigint(signum: int, frame: Any) -> None:
    if _exit_requested:
        raise SystemExit(0)
    raise KeyboardInterrupt


class _Call:
    """One outstanding call: the caller blocks on ``done`` until the reader fills it."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = _thread.allocate_lock()  # cheaper than an Event on the hot path
        self.done.acquire()
        self.result: Any = None
        self.error: ApiError | None = None


class EStarterClient:
    """A connection to the kernel. Thread-safe; ``close()`` is idempotent.

    Typed helpers: ``system``, ``ui``, ``permissions``, ``fs``, ``registry``,
    ``ipc``, ``process``. ``shutdown_requested`` is set when the host asks the
    app to stop.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Call] = {}
        self._closed: ConnectionClosedError | None = None
        self._handlers: dict[str, Handler] = {}
        self._shutdown_handler: ShutdownHandler | None = None
        self._jobs: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._worker: threading.Thread | None = None
        self.shutdown_requested = threading.Event()
        self.system = SystemApi(self.call)
        self.ui = UiApi(self.call)
        self.permissions = PermissionsApi(self.call)
        self.fs = FsApi(self.call)
        self.registry = RegistryApi(self.call)
        self.ipc = IpcApi(self.call)
        self.process = ProcessApi(self.call)
        self._reader = threading.Thread(target=self._read_loop, name="estarter-reader",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def connect(
        cls, transport: Transport | None = None, *, path: str | None = None,
        token: str | None = None,
    ) -> EStarterClient:
        """Connect over ``transport``, or stdio when ``ESTARTER_MODE=hosted``
        (moving stray prints to stderr), or else the kernel's Unix socket."""
        if transport is None:
            if os.environ.get("ESTARTER_MODE") == "hosted":
                transport = StdioTransport()
                _install_sigint()
            else:
                transport = SocketTransport(path, token)
        return cls(transport)

    # --- calls to the kernel -------------------------------------------------

    def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Call a kernel method and return its result.

        Raises the ``ApiError`` subclass of the kernel's error code,
        ``ApiTimeoutError`` when ``timeout`` seconds pass first, and
        ``ConnectionClosedError`` when the channel closes before the answer.
        """
        slot = _Call()
        with self._lock:
            if self._closed is not None:
                raise self._closed_error()
            msg_id = next(self._ids)
            self._pending[msg_id] = slot
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        try:
            self._transport.send(msg)
        except BaseException:
            with self._lock:
                self._pending.pop(msg_id, None)
            raise
        if not slot.done.acquire(timeout=-1 if timeout is None else timeout):
            with self._lock:
                self._pending.pop(msg_id, None)
            raise ApiTimeoutError(f"{method}: no answer within {timeout} s",
                                  data={"method": method})
        if slot.error is not None:
            raise slot.error
        return slot.result

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no answer, no error back)."""
        if self._closed is not None:
            raise self._closed_error()
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self._transport.send(msg)

    def log(self, level: str, message: str) -> None:
        """Write a line to the app's log (``debug``, ``info``, ``warning``, ``error``)."""
        self.notify("log", {"level": level, "message": message})

    def heartbeat(self) -> dict[str, Any]:
        """``system.heartbeat``: tell the app's supervisor it is alive. An app whose
        manifest has a ``healthCheck`` must call this at least every
        ``heartbeatSeconds`` or it is ended (exit reason ``unresponsive``) and its
        restart policy applies. Answers ``{"watched": bool, "heartbeatSeconds": n}``."""
        return dict(self.call("system.heartbeat"))

    # --- messages from the host ---------------------------------------------

    def on(self, method: str, fn: Handler) -> Handler:
        """Run ``fn(params)`` for the host's notification (``ipc.message``,
        ``system.event``) or request ``method``; a request is answered with
        ``fn``'s return value. Handlers run one at a time on a handler thread."""
        self._handlers[method] = fn
        return fn

    def on_shutdown(self, fn: ShutdownHandler) -> ShutdownHandler:
        """Run ``fn(grace_seconds)`` when the host sends ``app.shutdown``.

        Without one, the default ends the app: in hosted mode, when ``connect``
        ran in the main thread, the main thread gets ``SystemExit(0)`` (through
        ``_thread.interrupt_main``; a blocking call there is interrupted at its
        next check); otherwise it gets whatever the SIGINT handler raises. Either
        way ``shutdown_requested`` is set first, for apps that poll it. The host
        kills the app once the grace period is over.
        """
        self._shutdown_handler = fn
        return fn

    def _read_loop(self) -> None:
        try:
            while True:
                msg = self._transport.recv()
                if msg is None:
                    break
                # The host answers batches only for its own requests; requests in
                # a batch from the host are answered one by one.
                for item in msg if isinstance(msg, list) else (msg,):
                    if isinstance(item, dict):
                        self._on_message(item)
        finally:
            self._fail_pending(ConnectionClosedError("the kernel closed the connection"))

    def _on_message(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if method is None:
            self._resolve(msg)
            return
        params = msg.get("params")
        if "id" not in msg:
            on_note = self._handlers.get(method)
            if on_note is not None:
                self._submit(lambda: on_note(params))
            return
        msg_id = msg["id"]
        if method == "app.shutdown":
            self._reply(msg_id, {})
            self.shutdown_requested.set()
            grace = params.get("graceSeconds", 0) if isinstance(params, dict) else 0
            self._submit(lambda: self._run_shutdown(float(grace)))
            return
        handler = self._handlers.get(method)
        if handler is None:
            self._reply_error(msg_id, METHOD_NOT_FOUND, f"method not found: {method}")
            return
        self._submit(lambda: self._answer(msg_id, handler, params))

    def _resolve(self, msg: dict[str, Any]) -> None:
        with self._lock:
            slot = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]  # any JSON id
        if slot is None:
            return  # a late answer to a call that timed out
        if "error" in msg:
            slot.error = ApiError.from_dict(msg["error"])
        else:
            slot.result = msg.get("result")
        slot.done.release()

    def _answer(self, msg_id: Any, handler: Handler, params: Any) -> None:
        try:
            result = handler(params)
        except ApiError as exc:
            self._send_quietly({"jsonrpc": "2.0", "id": msg_id, "error": exc.to_dict()})
            return
        except Exception:
            _print_exc()
            self._reply_error(msg_id, INTERNAL_ERROR, "Internal error")
            return
        self._reply(msg_id, result)

    def _run_shutdown(self, grace: float) -> None:
        if self._shutdown_handler is not None:
            self._shutdown_handler(grace)
            return
        global _exit_requested
        _exit_requested = True
        _thread.interrupt_main()

    def _reply(self, msg_id: Any, result: Any) -> None:
        self._send_quietly({"jsonrpc": "2.0", "id": msg_id, "result": result})

    def _reply_error(self, msg_id: Any, code: int, message: str) -> None:
        self._send_quietly({"jsonrpc": "2.0", "id": msg_id,
                            "error": {"code": code, "message": message}})

    def _send_quietly(self, msg: Any) -> None:
        # A failed send means the channel is gone; the reader fails pending calls.
        try:
            self._transport.send(msg)
        except ApiError:
            pass

    def _submit(self, job: Callable[[], Any]) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="estarter-handlers",
                                                daemon=True)
                self._worker.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:
                _print_exc()  # a failing handler must not stop the others

    # --- closing --------------------------------------------------------------

    def close(self) -> None:
        """Close the channel and fail pending calls with ``ConnectionClosedError``.
        Idempotent; later calls raise ``ConnectionClosedError``."""
        self._fail_pending(ConnectionClosedError("the client is closed"))
        self._transport.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _closed_error(self) -> ConnectionClosedError:
        assert self._closed is not None
        return ConnectionClosedError(self._closed.message)

    def _fail_pending(self, error: ConnectionClosedError) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = error
            pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.error = ConnectionClosedError(error.message)
            slot.done.release()

    def __enter__(self) -> EStarterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _install_sigint() -> None:
    """Make the default shutdown exit cleanly; only from the main thread, and only
    over Python's own SIGINT handler (a handler the app installed is kept)."""
    # The interpreter's own module, loaded at its start: ``signal`` wraps it in three
    # enum classes made at import, 0.3-2 ms of every hosted app's start here.
    import _signal

    if threading.current_thread() is not threading.main_thread():
        return
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _sigint)


def _print_exc() -> None:
    import traceback

    traceback.print_exc(file=sys.stderr)


def connect(transport: Transport | None = None, *, path: str | None = None,
            token: str | None = None) -> EStarterClient:
    """Shortcut for ``EStarterClient.connect``."""
    return EStarterClient.connect(transport, path=path, token=token)


__all__ = ["EStarterClient", "connect"]
