"""The Python SDK against fake hosts: a socketpair, a real hosted child, a Unix socket."""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sdk
from estarter.protocol.framing import StdoutSplitter
from sdk import (
    ApiError,
    ApiTimeoutError,
    BusyError,
    ConnectionClosedError,
    EStarterClient,
    InvalidParamsError,
    MethodNotFoundError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    QuotaExceededError,
    UnavailableError,
)
from sdk._wire import encode_frame, read_frame
from sdk.transports import SocketTransport, _FramedTransport

ROOT = str(Path(__file__).resolve().parents[2])
TIMEOUT = 10.0


class PairTransport(_FramedTransport):
    """The client's end of a socketpair, framed like the real transports."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def _read(self) -> bytes:
        return self._sock.recv(65536)

    def _write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


class FakeHost:
    """The host's end of a framed byte stream: a thread queues what the app sends
    (frames, in order); text between frames goes to ``text``, as a real host logs it."""

    def __init__(self, rfile: Any, write: Any) -> None:
        self._write = write
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.text: list[bytes] = []
        self._rfile = rfile
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        splitter = StdoutSplitter()
        try:
            while data := self._rfile.read1(65536):
                bodies: list[bytes] = []
                text: list[bytes] = []
                splitter.feed(data, bodies, text)
                self.text.extend(line for line in text if line)
                for body in bodies:
                    self.inbox.put(json.loads(body))
            self.text.extend(splitter.finish())
        except (OSError, ValueError) as exc:
            self.inbox.put(exc)
        self.inbox.put(None)

    def send(self, obj: Any) -> None:
        self._write(encode_frame(obj))

    def next(self, timeout: float = TIMEOUT) -> Any:
        return self.inbox.get(timeout=timeout)

    def answer(self, msg: dict[str, Any], result: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})


@pytest.fixture
def pair() -> Iterator[tuple[EStarterClient, FakeHost, socket.socket]]:
    app_sock, host_sock = socket.socketpair()
    client = EStarterClient(PairTransport(app_sock))
    host = FakeHost(host_sock.makefile("rb"), host_sock.sendall)
    try:
        yield client, host, host_sock
    finally:
        client.close()
        host_sock.close()
        app_sock.close()


def _call_in_thread(client: EStarterClient, method: str, params: Any = None) -> queue.Queue[Any]:
    """Run ``client.call`` in a thread; its result or exception lands in the queue."""
    out: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            out.put(client.call(method, params, timeout=TIMEOUT))
        except Exception as exc:
            out.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return out


# --- calls ---------------------------------------------------------------------------


def test_concurrent_callers_get_their_own_answers(pair: Any) -> None:
    client, host, _ = pair
    outs = [_call_in_thread(client, "test.echo", {"n": i}) for i in range(8)]
    requests = [host.next() for _ in range(8)]
    assert sorted(r["id"] for r in requests) == list(range(1, 9))
    for req in reversed(requests):  # out of order on purpose
        host.answer(req, {"echo": req["params"]["n"]})
    assert [o.get(timeout=TIMEOUT) for o in outs] == [{"echo": i} for i in range(8)]


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (-32001, PermissionDeniedError),
        (-32002, NotFoundError),
        (-32003, QuotaExceededError),
        (-32004, ApiTimeoutError),
        (-32005, BusyError),
        (-32006, NotSupportedError),
        (-32007, UnavailableError),
        (-32601, MethodNotFoundError),
        (-32602, InvalidParamsError),
        (-32099, ApiError),
    ],
)
def test_errors_map_to_subclasses(pair: Any, code: int, cls: type[ApiError]) -> None:
    client, host, _ = pair
    out = _call_in_thread(client, "fs.read", {"path": "/appdata/x"})
    req = host.next()
    host.send({"jsonrpc": "2.0", "id": req["id"],
               "error": {"code": code, "message": "nope", "data": {"path": "/appdata/x"}}})
    exc = out.get(timeout=TIMEOUT)
    assert type(exc) is cls
    assert (exc.code, exc.message, exc.data) == (code, "nope", {"path": "/appdata/x"})


def test_api_error_from_dict_tolerates_junk() -> None:
    assert type(ApiError.from_dict({"code": -32001, "message": "m"})) is PermissionDeniedError
    assert ApiError.from_dict("junk").code == -32000
    assert ApiError.from_dict({"code": True}).code == -32000


def test_call_timeout(pair: Any) -> None:
    client, host, _ = pair
    with pytest.raises(ApiTimeoutError):
        client.call("slow", timeout=0.05)
    late = host.next()
    host.answer(late, 1)  # a late answer is dropped, the client keeps working
    out = _call_in_thread(client, "fast")
    host.answer(host.next(), 2)
    assert out.get(timeout=TIMEOUT) == 2


def test_notify_and_log(pair: Any) -> None:
    client, host, _ = pair
    client.log("info", "hello")
    client.notify("custom", [1])
    assert host.next() == {"jsonrpc": "2.0", "method": "log",
                           "params": {"level": "info", "message": "hello"}}
    assert host.next() == {"jsonrpc": "2.0", "method": "custom", "params": [1]}


# --- messages from the host ------------------------------------------------------------------


def test_host_notifications_go_to_handlers(pair: Any) -> None:
    client, host, _ = pair
    got: queue.Queue[Any] = queue.Queue()
    client.on("ipc.message", got.put)
    client.on("system.event", lambda p: got.put(("event", p["name"])))
    host.send({"jsonrpc": "2.0", "method": "ipc.message",
               "params": {"from": "a", "topic": None, "message": 1}})
    host.send({"jsonrpc": "2.0", "method": "system.event", "params": {"name": "app.launched"}})
    host.send({"jsonrpc": "2.0", "method": "unhandled.note"})  # ignored
    assert got.get(timeout=TIMEOUT) == {"from": "a", "topic": None, "message": 1}
    assert got.get(timeout=TIMEOUT) == ("event", "app.launched")


def test_host_requests_answered_or_method_not_found(pair: Any) -> None:
    client, host, _ = pair

    def handler(params: Any) -> Any:
        # A handler may call the kernel: it runs off the reader thread.
        return {"inner": client.call("system.ping", timeout=TIMEOUT)}

    client.on("app.status", handler)
    host.send({"jsonrpc": "2.0", "id": "h1", "method": "app.nothing"})
    assert host.next() == {"jsonrpc": "2.0", "id": "h1",
                           "error": {"code": -32601, "message": "method not found: app.nothing"}}
    host.send({"jsonrpc": "2.0", "id": "h2", "method": "app.status"})
    inner = host.next()
    assert inner["method"] == "system.ping"
    host.answer(inner, {"pong": True})
    assert host.next() == {"jsonrpc": "2.0", "id": "h2", "result": {"inner": {"pong": True}}}


def test_app_shutdown_answers_then_runs_the_handler(pair: Any) -> None:
    client, host, _ = pair
    grace: queue.Queue[float] = queue.Queue()
    client.on_shutdown(grace.put)
    host.send({"jsonrpc": "2.0", "id": 7, "method": "app.shutdown",
               "params": {"graceSeconds": 2}})
    assert host.next() == {"jsonrpc": "2.0", "id": 7, "result": {}}
    assert grace.get(timeout=TIMEOUT) == 2.0
    assert client.shutdown_requested.is_set()


# --- closing -------------------------------------------------------------------------------------


def test_host_closing_fails_pending_calls(pair: Any) -> None:
    client, host, host_sock = pair
    outs = [_call_in_thread(client, "never.answered") for _ in range(3)]
    for _ in range(3):
        host.next()
    host_sock.shutdown(socket.SHUT_RDWR)
    for out in outs:
        assert isinstance(out.get(timeout=TIMEOUT), ConnectionClosedError)
    with pytest.raises(ConnectionClosedError):
        client.call("after.close", timeout=TIMEOUT)


def test_client_close_fails_pending_and_is_idempotent(pair: Any) -> None:
    client, host, _ = pair
    out = _call_in_thread(client, "never.answered")
    host.next()
    with client:
        pass  # the context manager closes
    client.close()
    assert client.closed
    assert isinstance(out.get(timeout=TIMEOUT), ConnectionClosedError)
    with pytest.raises(ConnectionClosedError):
        client.call("x")
    with pytest.raises(ConnectionClosedError):
        client.notify("x")


# --- typed helpers ----------------------------------------------------------------------------


def test_helpers_send_the_kernel_table_params(pair: Any) -> None:
    client, host, _ = pair
    results = {
        "system.ping": {"pong": True, "time": 1},
        "system.time": {"unixMs": 1234},
        "ui.notify": {"id": "n1"},
        "ui.clipboard.get": {"text": "clip"},
        "permission.check": {"granted": True},
        "permission.list": {"granted": ["fs.read"]},
        "permission.request": {"granted": False},
        "fs.read": {"path": "/appdata/b", "size": 3,
                    "data": base64.b64encode(b"\x00\x01\x02").decode()},
        "fs.write": {"path": "/appdata/b", "written": 3},
        "fs.exists": {"exists": True},
        "registry.get": {"value": {"a": 1}},
        "registry.list": {"keys": ["k"]},
        "ipc.send": {"delivered": True},
        "ipc.broadcast": {"delivered": 2},
        "ipc.receive": None,
        "process.launch": {"appId": "x", "state": "starting"},
    }
    seen: list[tuple[str, Any]] = []

    def serve() -> None:
        while (msg := host.next()) is not None:
            seen.append((msg["method"], msg.get("params")))
            host.answer(msg, results.get(msg["method"], {}))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert client.system.ping() == {"pong": True, "time": 1}
    assert client.system.time() == 1234
    assert client.ui.notify("T", "M") == "n1"
    assert client.ui.clipboard_get() == "clip"
    client.ui.clipboard_set("c")
    assert client.permissions.check("fs.write") is True
    assert client.permissions.list() == ["fs.read"]
    assert client.permissions.request("net.access", "sync") is False
    assert client.fs.read_bytes("/appdata/b") == b"\x00\x01\x02"
    assert client.fs.write_bytes("/appdata/b", b"\x00\x01\x02") == 3
    assert client.fs.write_text("/appdata/t", "hi", append=True) == 3
    assert client.fs.exists("/appdata/t") is True
    assert client.registry.get("k") == {"a": 1}
    client.registry.set("k", 1, ttl_seconds=5)
    assert client.registry.list("k") == ["k"]
    assert client.ipc.send("other", {"m": 1}, topic="t") is True
    assert client.ipc.broadcast("t", "hi") == 2
    assert client.ipc.receive(timeout_ms=10) is None
    assert client.process.launch("x") == {"appId": "x", "state": "starting"}
    assert seen == [
        ("system.ping", {}),
        ("system.time", {}),
        ("ui.notify", {"title": "T", "message": "M", "level": "info"}),
        ("ui.clipboard.get", {}),
        ("ui.clipboard.set", {"text": "c"}),
        ("permission.check", {"permission": "fs.write"}),
        ("permission.list", {}),
        ("permission.request", {"permission": "net.access", "reason": "sync"}),
        ("fs.read", {"path": "/appdata/b", "encoding": "base64"}),
        ("fs.write", {"path": "/appdata/b", "data": "AAEC", "append": False}),
        ("fs.write", {"path": "/appdata/t", "text": "hi", "append": True}),
        ("fs.exists", {"path": "/appdata/t"}),
        ("registry.get", {"key": "k"}),
        ("registry.set", {"key": "k", "value": 1, "ttlSeconds": 5}),
        ("registry.list", {"prefix": "k"}),
        ("ipc.send", {"to": "other", "message": {"m": 1}, "topic": "t"}),
        ("ipc.broadcast", {"topic": "t", "message": "hi"}),
        ("ipc.receive", {"timeoutMs": 10}),
        ("process.launch", {"appId": "x"}),
    ]


# --- hosted mode in a real child ------------------------------------------------------------------


# The launcher resets every signal to its default before an app's exec. A test run
# from a shell's background job inherits SIGINT ignored, and Python then leaves it
# so: the SDK's default shutdown (interrupt_main) would do nothing. As the launcher.
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


def _spawn_hosted(
    code: str, unbuffered: bool = True
) -> tuple[subprocess.Popen[bytes], FakeHost]:
    env = {"PATH": os.environ.get("PATH", ""), "ESTARTER_MODE": "hosted",
           "PYTHONPATH": ROOT}
    flags = ["-u"] if unbuffered else []
    proc = subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT, sys.executable, *flags,
                             "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None

    def write(data: bytes) -> None:
        assert proc.stdin is not None
        proc.stdin.write(data)
        proc.stdin.flush()

    return proc, FakeHost(proc.stdout, write)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_stray_prints_never_reach_the_channel() -> None:
    code = (
        "import os, sys\n"
        "print('garbage before connect')\n"  # still in sys.stdout's buffer (no -u)
        "import sdk\n"
        "client = sdk.connect()\n"
        "print('garbage from print')\n"
        "os.write(1, b'garbage from fd 1\\n')\n"
        "sys.__stdout__.write('garbage via __stdout__\\n')\n"
        "reply = client.system.ping()\n"
        "client.log('info', repr(reply))\n"
        "print('garbage at the end')\n"
        "client.close()\n"
        "print('garbage after close')\n"
    )
    proc, host = _spawn_hosted(code, unbuffered=False)
    try:
        # The forwarder thread and the main thread write frames concurrently: the
        # stdout lines keep their order among themselves, not relative to the ping.
        stdout: list[str] = []
        others: list[Any] = []
        while (msg := host.next()) is not None:
            assert isinstance(msg, dict), msg  # never a bad frame
            if msg.get("method") == "system.ping":
                host.answer(msg, {"pong": True, "time": 5})
            elif msg.get("params", {}).get("stream") == "stdout":
                assert msg["method"] == "log" and msg["params"]["level"] == "info"
                stdout.append(msg["params"]["message"])
            else:
                others.append(msg)
        assert stdout == [f"garbage {w}" for w in (
            "before connect", "from print", "from fd 1", "via __stdout__", "at the end")]
        assert others == [{"jsonrpc": "2.0", "method": "log",
                           "params": {"level": "info",
                                      "message": "{'pong': True, 'time': 5}"}}]
        assert host.text == []  # nothing but the SDK's one line break outside frames
        assert proc.wait(timeout=TIMEOUT) == 0
        err = proc.stderr.read()  # type: ignore[union-attr]
        assert b"garbage after close" in err  # the channel is gone: to stderr
    finally:
        _reap(proc)


def test_text_before_connect_stays_apart_from_the_first_frame() -> None:
    code = (
        "import os\n"
        "os.write(1, b'no line end')\n"  # raw bytes, no newline, before connecting
        "import sdk\n"
        "client = sdk.connect()\n"
        "client.log('info', 'ready')\n"
        "client.close()\n"
    )
    proc, host = _spawn_hosted(code)
    try:
        assert host.next()["params"]["message"] == "ready"
        assert host.next() is None
        assert host.text == [b"no line end"]
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        _reap(proc)


def test_default_shutdown_exits_the_main_thread_cleanly() -> None:
    code = (
        "import sys, time\n"
        "import sdk\n"
        "client = sdk.connect()\n"
        "client.log('info', 'ready')\n"
        "try:\n"
        "    while True:\n"
        "        time.sleep(0.01)\n"
        "except SystemExit:\n"
        "    sys.stderr.write('got SystemExit\\n')\n"
        "    raise\n"
    )
    proc, host = _spawn_hosted(code)
    try:
        assert host.next()["params"]["message"] == "ready"
        host.send({"jsonrpc": "2.0", "id": 1, "method": "app.shutdown",
                   "params": {"graceSeconds": 5}})
        assert host.next() == {"jsonrpc": "2.0", "id": 1, "result": {}}
        assert proc.wait(timeout=TIMEOUT) == 0
        assert b"got SystemExit" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        _reap(proc)


# --- not hosted: the kernel socket --------------------------------------------------------------


class FakeKernelSocket:
    """A Unix-socket server accepting one client that must say auth.hello first."""

    def __init__(self, path: str, token: str) -> None:
        self.token = token
        self.seen: queue.Queue[Any] = queue.Queue()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.server.settimeout(TIMEOUT)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            rfile = conn.makefile("rb")
            while (body := read_frame(rfile)) is not None:
                msg = json.loads(body)
                self.seen.put(msg)
                if msg.get("method") == "auth.hello":
                    if msg["params"]["token"] != self.token:
                        conn.sendall(encode_frame({"jsonrpc": "2.0", "id": msg["id"], "error": {
                            "code": -32001, "message": "bad token"}}))
                        return
                    conn.sendall(encode_frame({"jsonrpc": "2.0", "id": msg["id"], "result": {
                        "appId": "demo"}}))
                elif "id" in msg:
                    conn.sendall(encode_frame({"jsonrpc": "2.0", "id": msg["id"],
                                               "result": {"pong": True}}))

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=TIMEOUT)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("ESTARTER_HOME", str(tmp_path))
    monkeypatch.setenv("ESTARTER_TOKEN", "s3cret")
    monkeypatch.delenv("ESTARTER_MODE", raising=False)
    return tmp_path


def test_socket_transport_says_hello_then_calls(home: Path) -> None:
    server = FakeKernelSocket(str(home / "run" / "kernel.sock"), "s3cret")
    try:
        with sdk.connect() as client:
            assert client.system.ping() == {"pong": True}
        hello = server.seen.get(timeout=TIMEOUT)
        assert hello["method"] == "auth.hello" and hello["params"] == {"token": "s3cret"}
        assert server.seen.get(timeout=TIMEOUT)["method"] == "system.ping"
    finally:
        server.close()


def test_socket_transport_bad_token_and_no_server(home: Path) -> None:
    server = FakeKernelSocket(str(home / "run" / "kernel.sock"), "other")
    try:
        with pytest.raises(PermissionDeniedError, match="bad token"):
            SocketTransport(token="s3cret")
    finally:
        server.close()
    with pytest.raises(ConnectionClosedError):
        SocketTransport(str(home / "run" / "missing.sock"))
    with pytest.raises(ValueError, match="token"):
        SocketTransport(token="")


# --- the package ------------------------------------------------------------------------------


def test_import_sdk_is_stdlib_only_and_fast() -> None:
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "before = set(sys.modules)\n"
        "t = time.perf_counter()\n"
        "import sdk\n"
        "took = time.perf_counter() - t\n"
        "print(took, sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=TIMEOUT, check=True).stdout
    took, _, names = out.partition(" ")
    new = ast.literal_eval(names)
    tops = {name.split(".")[0] for name in new}
    assert "sdk" in tops
    assert tops - {"sdk"} <= set(sys.stdlib_module_names), tops - set(sys.stdlib_module_names)
    assert float(took) < 0.2  # typically ~15 ms; the bound leaves room for a loaded machine


def test_public_exports() -> None:
    assert set(sdk.__all__) == {
        "ApiError", "ApiTimeoutError", "BusyError", "ConnectionClosedError", "EStarterClient",
        "InvalidParamsError", "MethodNotFoundError", "NotFoundError", "NotSupportedError",
        "PermissionDeniedError", "QuotaExceededError", "UnavailableError", "connect",
    }
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None
