"""Ways for an app to reach the kernel: its own stdin/stdout (hosted) or a Unix socket.

A transport moves whole JSON-RPC messages: ``send(obj)`` (thread-safe),
``recv() -> obj | None`` (blocking; None once the channel is closed) and
``close()`` (idempotent). Both use the Content-Length framing of ``sdk._wire``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading

from sdk._wire import FrameDecoder, encode_frame
from sdk.errors import ApiError, ConnectionClosedError

_CHUNK = 64 * 1024
_LINE = 8192  # bytes of one forwarded stdout line; longer ones are cut (the host cuts too)


# typing (and contextlib) are not imported at run time: every app start pays for
# each import of the SDK (typing alone was ~10 ms on a loaded host).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Transport(Protocol):
        def send(self, obj: Any) -> None: ...

        def recv(self) -> Any | None: ...

        def close(self) -> None: ...
else:
    class Transport:
        """What a transport provides: ``send(obj)``, ``recv() -> obj | None``, ``close()``."""


class _FramedTransport:
    """Framing over two raw byte callables, shared by both transports."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._inbox: list[bytes] = []  # decoded bodies not yet returned
        self._early: list[Any] = []  # messages that arrived before the handshake ended
        self._write_lock = threading.Lock()
        self._closed = False

    def _read(self) -> bytes:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def send(self, obj: Any) -> None:
        """Write one message. Raises ``ConnectionClosedError`` if the channel is gone."""
        frame = encode_frame(obj)
        with self._write_lock:
            if self._closed:
                raise ConnectionClosedError("transport is closed")
            try:
                self._write(frame)
            except OSError as exc:
                raise ConnectionClosedError(f"cannot write to the kernel: {exc}") from exc

    def recv(self) -> Any | None:
        """Block for the next message; None at end of stream or after ``close``.

        One reader at a time (the client's reader thread).

        Bad framing or JSON from the kernel also ends the stream: there is no way
        to find the next frame boundary after it.
        """
        if self._early:
            return self._early.pop(0)
        return self._recv_decoded()

    def _recv_decoded(self) -> Any | None:
        while not self._inbox:
            if self._closed:
                return None
            try:
                data = self._read()
            except OSError:
                return None
            if not data:
                return None
            try:
                self._inbox.extend(self._decoder.feed(data))
            except ValueError as exc:
                print(f"estarter sdk: bad frame from the kernel: {exc}", file=sys.stderr)
                return None
        body = self._inbox.pop(0)
        try:
            return json.loads(body)
        except ValueError:
            # An unparsable message is dropped; a JSON-RPC peer answers it
            # with -32700, but the kernel never sends one, so report it only.
            print("estarter sdk: kernel sent a body that is not JSON", file=sys.stderr)
            return {}


class StdioTransport(_FramedTransport):
    """Hosted mode: the protocol runs over the process's original stdin and stdout.

    With ``protect=True`` (the default) it takes the real fds 0 and 1 for itself:
    fd 0 and ``sys.stdin`` then read /dev/null, and fd 1 becomes a pipe whose lines a
    thread forwards as ``log`` notifications with ``"stream": "stdout"``, so a stray
    ``print()``, C-level write or child process's output cannot corrupt the channel
    and still reaches the app's log as stdout. Output still buffered in
    ``sys.stdout`` goes the same way; ``sys.stdout`` is line-buffered from then on.
    ``close`` (and interpreter exit) forwards what was printed before it, waiting at
    most ``DRAIN_SECONDS`` (a child process may still hold the pipe).
    """

    DRAIN_SECONDS = 1.0

    def __init__(self, protect: bool = True) -> None:
        super().__init__()
        self._in = os.dup(0)
        self._out = os.dup(1)
        os.set_inheritable(self._in, False)
        os.set_inheritable(self._out, False)
        self._forwarder: threading.Thread | None = None
        if protect:
            self._protect()

    def _protect(self) -> None:
        # A line break first: bytes the app wrote to fd 1 without one before
        # connecting would otherwise run into our first frame's header (the host
        # reads text between frames line by line, and skips empty lines).
        os.write(self._out, b"\n")
        read_end, write_end = os.pipe()
        os.set_inheritable(read_end, False)
        os.dup2(write_end, 1)
        os.close(write_end)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as sys.stdin
        self._forwarder = threading.Thread(target=self._forward_stdout, args=(read_end,),
                                           name="estarter-stdout", daemon=True)
        self._forwarder.start()
        if sys.stdout is not None:
            try:
                sys.stdout.flush()  # what was printed before connecting: now fd 1, the pipe
                reconfigure = getattr(sys.stdout, "reconfigure", None)
                if reconfigure is not None:
                    reconfigure(line_buffering=True)
            except Exception:
                pass
        atexit.register(self._drain_stdout)

    def _forward_stdout(self, fd: int) -> None:
        """Lines written to fd 1 -> ``log`` notifications (stream stdout); after the
        channel closed, to stderr. Lines are cut at ``_LINE`` bytes."""
        pending = b""
        try:
            while True:
                try:
                    data = os.read(fd, _CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                if len(pending) >= _LINE:
                    lines.append(pending)
                    pending = b""
                for line in lines:
                    self._forward_line(line)
            if pending:
                self._forward_line(pending)
        finally:
            os.close(fd)

    def _forward_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        try:
            self.send({"jsonrpc": "2.0", "method": "log",
                       "params": {"level": "info", "message": text, "stream": "stdout"}})
        except ConnectionClosedError:
            try:
                os.write(2, line + b"\n")
            except OSError:
                pass

    def _drain_stdout(self) -> None:
        """Forward what was printed so far: end the pipe (fd 1 goes to stderr from
        now on) and wait for the forwarder, at most ``DRAIN_SECONDS``. Idempotent."""
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is None:
            return
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except Exception:
            pass
        try:
            os.dup2(2, 1)
        except OSError:
            pass
        forwarder.join(self.DRAIN_SECONDS)

    def _read(self) -> bytes:
        return os.read(self._in, _CHUNK)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._out, view) :]

    def close(self) -> None:
        """Close the protocol's output (the host sees end of stream). Idempotent.

        The input fd stays open: a reader blocked on it would otherwise read
        whatever fd reuses the number. It ends with the process or the host.
        What was printed to stdout before is forwarded first (``_drain_stdout``).
        """
        self._drain_stdout()
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                os.close(self._out)
            except OSError:
                pass


def default_socket_path() -> str:
    """``$ESTARTER_HOME/run/kernel.sock``; without ESTARTER_HOME, the platform's
    user data folder as the runtime uses it (XDG on Linux)."""
    home = os.environ.get("ESTARTER_HOME")
    if not home:
        if sys.platform == "darwin":
            home = os.path.expanduser("~/Library/Application Support/estarter")
        elif os.name == "nt":
            home = os.path.join(os.environ.get("LOCALAPPDATA", "~"), "estarter")
        else:
            base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
            home = os.path.join(base, "estarter")
    return os.path.join(home, "run", "kernel.sock")


class SocketTransport(_FramedTransport):
    """Not hosted: the kernel's Unix socket, authenticated by the app's token.

    The first message is the request ``auth.hello`` {token}; the constructor waits
    for its answer and raises the kernel's ``ApiError`` (or
    ``ConnectionClosedError``) if it is refused. The token comes from the
    argument or ``ESTARTER_TOKEN``; an app never claims its own id.
    """

    HELLO_ID = "auth.hello"

    def __init__(
        self, path: str | None = None, token: str | None = None, timeout: float = 10.0
    ) -> None:
        import socket  # only apps outside the host pay for this import

        super().__init__()
        token = token if token is not None else os.environ.get("ESTARTER_TOKEN")
        if not token:
            raise ValueError("no token for the kernel socket: pass token= or set ESTARTER_TOKEN")
        self.path = path or default_socket_path()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(self.path)
            self.send({"jsonrpc": "2.0", "id": self.HELLO_ID, "method": "auth.hello",
                       "params": {"token": token}})
            self._await_hello()
            self._sock.settimeout(None)
        except OSError as exc:
            self._sock.close()
            raise ConnectionClosedError(f"cannot reach the kernel at {self.path}: {exc}") from exc
        except BaseException:
            self._sock.close()
            raise

    def _await_hello(self) -> None:
        while True:
            msg = self._recv_decoded()
            if msg is None:
                raise ConnectionClosedError("the kernel closed the socket during auth.hello")
            if isinstance(msg, dict) and msg.get("id") == self.HELLO_ID and "method" not in msg:
                break
            self._early.append(msg)  # kept for the client, in order
        if "error" in msg:
            raise ApiError.from_dict(msg["error"])

    def _read(self) -> bytes:
        return self._sock.recv(_CHUNK)

    def _write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        """Shut the socket down (this also wakes a blocked ``recv``). Idempotent."""
        import socket

        with self._write_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


__all__ = ["SocketTransport", "StdioTransport", "Transport", "default_socket_path"]
