"""The kernel's Unix socket, for apps started outside estarter (an IDE, a terminal).

``$ESTARTER_HOME/run/kernel.sock`` (folder 0700, socket 0600). A client's first
message must be the request ``auth.hello {token}``, within ``HELLO_SECONDS``; the
token alone names the app (the client never says who it is). No token or a wrong
one is answered -32001 and the connection is closed. After that the connection
speaks the same JSON-RPC as a hosted app's stdio, and every call goes through
``Kernel.handle``. The operator token (``run/operator-token``) opens an operator
connection instead: ``operator.*`` methods only, served by the ``OperatorGate``
(``operator_access.py``), admitted under the identity ``@operator`` like an app's;
an app connection is never served an ``operator.*`` method. Connections, in-flight
calls, message size and queued output are all bounded, and each app's calls are
admitted per app, whatever the number of its connections (``admission.py``): a few
quick calls on the pool at once (the rest queue behind the app's own) and a capped
number of waiting ones, on a pool of their own, so clients waiting for messages
never delay quick calls.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import Busy, EstarterError, MethodNotFound, PermissionDenied
from ..protocol import messages as m
from ..protocol.endpoint import Endpoint
from ..protocol.framing import FrameDecoder, FramingError, encode_frame
from .admission import Admission, FairExecutor
from .methods import is_blocking

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
MAX_IN_FLIGHT = 32  # per connection
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_QUEUED_OUT_BYTES = 32 * 1024 * 1024
MAX_MALFORMED = 10  # then the connection is closed, as a hosted app is ended
HELLO_SECONDS = 5.0
WORKERS = 16  # quick calls (each app at most MAX_QUICK_CALLS of them)
BLOCKING_WORKERS = 64  # calls that may wait (each app at most MAX_WAITING_CALLS)
_CHUNK = 64 * 1024

Handle = Callable[[str, str, Any], Any]  # (app_id, method, params) -> result
Authenticate = Callable[[Any], "str | None"]  # token -> app id
Attach = Callable[[str, "Connection"], None]
OPERATOR_ID = "@operator"  # an operator connection's identity (never an app id)


class OperatorGate(Protocol):
    """Who may open an operator connection, and what it may call."""

    def admits(self, token: Any) -> bool: ...

    def hello(self) -> dict[str, Any]: ...

    def is_blocking(self, method: str) -> bool: ...

    def handle(self, method: str, params: Any) -> Any: ...


class Connection:
    """One authenticated client. ``notify`` never blocks: output is queued and
    written by the connection's own thread; a client that stops reading loses
    notifications first and is disconnected when answers pile up."""

    def __init__(self, sock: socket.socket, app_id: str, server: SocketServer,
                 operator: bool = False) -> None:
        self.sock = sock
        self.app_id = app_id
        self.operator = operator
        self._server = server
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._out_bytes = 0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = threading.Event()
        self.endpoint = Endpoint(self._dispatch, self._send)
        self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                        name=f"estarter-sock-w-{app_id}")

    def notify(self, method: str, params: Any) -> bool:
        if self._closed.is_set() or self._out_bytes > MAX_QUEUED_OUT_BYTES // 2:
            return False
        try:
            self.endpoint.notify(method, params)
        except EstarterError:
            return False
        return True

    def close(self) -> None:
        """Idempotent; wakes the reader and the writer."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.endpoint.close()
        self._out.put(None)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def serve(self, decoder: FrameDecoder, early: list[bytes]) -> None:
        self._writer.start()
        try:
            for body in early:
                self.endpoint.receive(body)
            while not self._closed.is_set():
                data = self.sock.recv(_CHUNK)
                if not data:
                    break
                for body in decoder.feed(data):
                    self.endpoint.receive(body)
                    if self.endpoint.statistics().malformed > MAX_MALFORMED:
                        log.debug("socket client of %s: more than %d malformed messages",
                                  self.app_id, MAX_MALFORMED)
                        return
        except (OSError, FramingError) as exc:
            log.debug("socket client of %s ends: %s", self.app_id, exc)
        finally:
            self.close()

    def _dispatch(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._in_flight >= MAX_IN_FLIGHT:
                raise Busy(f"more than {MAX_IN_FLIGHT} calls in flight on one connection")
            self._in_flight += 1
        try:
            fut = (self._server.submit_operator(method, params) if self.operator
                   else self._server.submit(self.app_id, method, params))
        except BaseException:
            self._done(None)
            raise
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: concurrent.futures.Future[Any] | None) -> None:
        with self._lock:
            self._in_flight -= 1

    def _send(self, obj: Any) -> None:
        frame = encode_frame(obj)
        with self._lock:
            if self._out_bytes + len(frame) > MAX_QUEUED_OUT_BYTES:
                overflow = True
            else:
                overflow = False
                self._out_bytes += len(frame)
        if overflow:  # the client does not read its answers: drop it
            self.close()
            return
        self._out.put(frame)

    def _write_loop(self) -> None:
        try:
            while True:
                frame = self._out.get()
                if frame is None or self._closed.is_set():
                    return
                self.sock.sendall(frame)
                with self._lock:
                    self._out_bytes -= len(frame)
        except OSError:
            self.close()


class SocketServer:
    def __init__(self, run_dir: Path, handle: Handle, authenticate: Authenticate,
                 attach: Attach, detach: Attach, *, name: str = "kernel.sock",
                 max_connections: int = MAX_CONNECTIONS,
                 operator: OperatorGate | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self._handle = handle
        self._authenticate = authenticate
        self._attach = attach
        self._detach = detach
        self._operator = operator
        self._max = max_connections
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._live: set[Connection] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS,
                                                           thread_name_prefix="estarter-sock")
        self._waits = concurrent.futures.ThreadPoolExecutor(
            BLOCKING_WORKERS, thread_name_prefix="estarter-sock-wait")
        self.admission = Admission()
        self._fair = FairExecutor(self._pool)
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and listen. Raises Busy if another live kernel owns the socket."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        if _alive(self.path):
            raise Busy(f"another kernel is listening on {self.path}")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a kernel that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where it is not
        try:
            sock.bind(_bindable(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(128)
        self._listener = sock
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="estarter-sock-accept")
        self._thread.start()

    def submit(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        """Serve one call of ``app_id`` on a pool thread (see admission.py); a waiting
        call over its app's cap is refused with Busy. Never an operator method."""
        if isinstance(method, str) and method.startswith("operator."):
            raise MethodNotFound(f"{method}: operator methods need the operator token",
                                 {"method": method})
        if not is_blocking(method):
            return self._fair.submit(app_id, self._handle, app_id, method, params)
        self.admission.enter(app_id, method)
        try:
            fut = self._waits.submit(self._handle, app_id, method, params)
        except RuntimeError:  # the pool is shut down
            self.admission.leave(app_id)
            raise
        fut.add_done_callback(lambda _: self.admission.leave(app_id))
        return fut

    def submit_operator(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        """Serve one call of an operator connection, admitted like an app's calls
        under OPERATOR_ID: a start or stop on the waiting pool (at most
        MAX_WAITING_CALLS at once), ``ps`` and ``info`` on the quick one."""
        gate = self._operator
        if gate is None:  # no gate, no operator connection: never reached
            raise MethodNotFound(f"{method}: no operator access on this socket")
        if not gate.is_blocking(method):
            return self._fair.submit(OPERATOR_ID, gate.handle, method, params)
        self.admission.enter(OPERATOR_ID, method)
        try:
            fut = self._waits.submit(gate.handle, method, params)
        except RuntimeError:  # the pool is shut down
            self.admission.leave(OPERATOR_ID)
            raise
        fut.add_done_callback(lambda _: self.admission.leave(OPERATOR_ID))
        return fut

    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        """Stop accepting, drop every client, remove the socket file. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        with self._lock:
            live = list(self._live)
        for conn in live:
            conn.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._waits.shutdown(wait=False, cancel_futures=True)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.2)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                full = len(self._conns) >= self._max
                if not full:
                    self._conns.add(client)
            if full:
                _refuse(client, Busy("too many connections to the kernel"))
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="estarter-sock-r").start()

    def _serve(self, client: socket.socket) -> None:
        conn: Connection | None = None
        try:
            decoder = FrameDecoder(max_size=MAX_MESSAGE_BYTES)
            app_id, early = self._hello(client, decoder)
            if app_id is None:
                return
            conn = Connection(client, app_id, self, operator=app_id == OPERATOR_ID)
            with self._lock:
                self._live.add(conn)
            if not conn.operator:  # an operator is no app: it gets no app's pushes
                self._attach(app_id, conn)
            conn.serve(decoder, early)
        except Exception:  # one client must never take the server down
            log.exception("socket client failed")
        finally:
            if conn is not None and not conn.operator:
                self._detach(conn.app_id, conn)
                with self._lock:
                    self._live.discard(conn)
            with self._lock:
                self._conns.discard(client)
            client.close()

    def _hello(self, client: socket.socket,
               decoder: FrameDecoder) -> tuple[str | None, list[bytes]]:
        """Read the first message within HELLO_SECONDS; answer it; (app id, rest).
        The app id is OPERATOR_ID for the operator token."""
        client.settimeout(HELLO_SECONDS)
        bodies: list[bytes] = []
        try:
            while not bodies:
                data = client.recv(_CHUNK)
                if not data:
                    return None, []
                bodies = decoder.feed(data)
        except (OSError, FramingError):
            return None, []
        client.settimeout(None)
        try:
            msg = json.loads(bodies[0])
        except ValueError:
            msg = None
        ok = (isinstance(msg, dict) and msg.get("method") == "auth.hello"
              and "id" in msg and isinstance(msg.get("params"), dict))
        msg_id = msg.get("id") if isinstance(msg, dict) else None
        token = msg["params"].get("token") if ok else None
        gate = self._operator
        if ok and gate is not None and gate.admits(token):
            client.sendall(encode_frame(m.response(msg_id, gate.hello())))
            return OPERATOR_ID, bodies[1:]
        app_id = self._authenticate(token) if ok else None
        if app_id is None:
            _refuse(client, PermissionDenied("no valid token: the kernel socket needs the "
                                             "app's token (estarter token APP) or the "
                                             "operator's (run/operator-token)"), msg_id)
            return None, []
        client.sendall(encode_frame(m.response(msg_id, {"appId": app_id})))
        return app_id, bodies[1:]


def _refuse(client: socket.socket, error: EstarterError, msg_id: Any = None) -> None:
    with contextlib.suppress(OSError):
        client.settimeout(1.0)
        client.sendall(encode_frame(m.error_response(msg_id, error)))
        client.shutdown(socket.SHUT_RDWR)
    client.close()


def _alive(path: Path) -> bool:
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(_bindable(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _bindable(path: Path) -> str:
    text = str(path)
    if len(text.encode()) >= 104:  # sun_path is 108 bytes with the NUL, less on BSDs
        raise EstarterError(f"socket path too long for AF_UNIX: {text}")
    return text
