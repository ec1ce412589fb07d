"""sdk/c/estarter_native.c against a scripted host: framing, dispatch, bounds, shutdown.

A real child process (tests/host/c/sdk_driver.c, built with the system compiler and
a 256-byte receive buffer) speaks to this test over pipes, as to ProcessHost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sdk._wire import encode_frame, read_frame

ROOT = Path(__file__).resolve().parents[2]
SDK_C = ROOT / "sdk" / "c"
CC = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c-sdk") / "driver"
    assert CC is not None
    subprocess.run([CC, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                    "-DESTARTER_RECV_MAX=256", f"-I{SDK_C}", "-o", str(out),
                    str(Path(__file__).parent / "c" / "sdk_driver.c"),
                    str(SDK_C / "estarter_native.c")], check=True, timeout=300)
    return out


class Host:
    def __init__(self, driver: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(driver), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"ESTARTER_MODE": "hosted", "PATH": "/usr/bin:/bin"} if env is None else env)
        self.logs: list[tuple[str, str]] = []

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_frame(obj) if not isinstance(obj, bytes) else obj)
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        """The next message that is not a log line (those are kept in ``logs``)."""
        assert self.proc.stdout is not None
        while True:
            body = read_frame(self.proc.stdout)
            assert body is not None, "the app closed its channel"
            msg = json.loads(body.decode("utf-8"))  # strict: the helper sends valid UTF-8
            if msg.get("method") == "log":
                self.logs.append((msg["params"]["level"], msg["params"]["message"]))
                continue
            return msg

    def finish(self) -> tuple[int, bytes]:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        while (body := read_frame(self.proc.stdout)) is not None:
            msg = json.loads(body.decode("utf-8"))
            assert msg.get("method") == "log", msg
            self.logs.append((msg["params"]["level"], msg["params"]["message"]))
        code = self.proc.wait(timeout=60)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def report(self, what: str) -> str:
        return next(m for _, m in self.logs if m.startswith(what + " "))


def test_calls_notifications_bounds_and_shutdown(driver: Path) -> None:
    host = Host(driver)
    one = host.receive()
    assert one == {"jsonrpc": "2.0", "id": 1, "method": "t.one", "params": {"a": 1}}
    # Host messages before the answer: a notification goes to the handler, a request
    # other than app.shutdown is answered "method not found".
    host.send({"jsonrpc": "2.0", "method": "ipc.message",
               "params": {"from": "x", "topic": "t", "message": "hi"}})
    host.send({"jsonrpc": "2.0", "id": "h1", "method": "no.such", "params": {}})
    refused = host.receive()
    assert refused["id"] == "h1" and refused["error"]["code"] == -32601
    host.send({"jsonrpc": "2.0", "result": {"x": "y"}, "id": 1})  # the host's key order

    big = host.receive()
    assert (big["method"], big["params"]) == ("t.big", {})
    # Above the 256-byte receive buffer: read and dropped, the stream stays in step.
    host.send({"jsonrpc": "2.0", "result": "z" * 1000, "id": big["id"]})
    small = host.receive()
    host.send({"jsonrpc": "2.0", "result": "0123456789", "id": small["id"]})
    three = host.receive()
    body = json.dumps({"jsonrpc": "2.0", "result": 3, "id": three["id"]}).encode()
    # header names in any case, other headers ignored, body split across writes
    host.send(b"content-length: %d\r\nContent-Type: application/json\r\n\r\n" % len(body)
              + body[:5])
    host.send(body[5:])

    host.send({"jsonrpc": "2.0", "id": 77, "method": "app.shutdown",
               "params": {"graceSeconds": 1}})
    assert host.receive() == {"jsonrpc": "2.0", "id": 77, "result": {}}
    code, stderr = host.finish()
    assert code == 0, stderr  # exited in the default shutdown handler
    answer = '{"jsonrpc":"2.0","result":{"x":"y"},"id":1}'
    assert host.report("one") == f"one rc={len(answer)} out={answer}"
    assert host.report("noted") == "noted rc=0 out=ipc.message;"
    assert host.report("big") == "big rc=-2 out="  # ESTARTER_E_TOO_LARGE
    assert host.report("small") == 'small rc=-5 out={"jsonr'  # TRUNCATED, a NUL-ended prefix
    assert host.report("three") == f"three rc={len(body)} out=3"
    assert host.report("bad-method") == "bad-method rc=-3 out="
    assert host.report("bad-params") == "bad-params rc=-3 out="
    # control characters escaped, each byte that is not UTF-8 replaced: valid JSON, one line
    assert ("warning", 'ctl\x01 quote" nl\n bad\ufffd end\ufffd\ufffd') in host.logs
    assert b"printed\n" in stderr  # stdout was moved off the protocol channel
    assert not any(m.startswith("after-shutdown") for _, m in host.logs)


def test_malformed_header_is_a_protocol_error(driver: Path) -> None:
    host = Host(driver, "garbage")
    host.receive()
    host.send(b"Content-Length: 1x\r\n\r\n{}")
    code, stderr = host.finish()
    assert code == 3, stderr
    assert host.report("garbage") == "garbage rc=-7 out="  # ESTARTER_E_PROTOCOL


def test_closed_channel_is_an_io_error(driver: Path) -> None:
    host = Host(driver, "garbage")
    host.receive()
    code, stderr = host.finish()  # closes the app's stdin without answering
    assert code == 3, stderr
    assert host.report("garbage") == "garbage rc=-6 out="  # ESTARTER_E_IO


def test_refuses_to_run_unhosted(driver: Path) -> None:
    proc = subprocess.run([str(driver)], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr == b"init -8\n"  # ESTARTER_E_NOT_HOSTED
