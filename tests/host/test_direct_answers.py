"""ProcessHost's direct path with real apps: a quick call answered from the kernel's
encoded reply (``HostContext.api_encoded``) reaches the app exactly as the endpoint's
answer would; batches, notifications and the calls it declines take the endpoint."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import EstarterError
from estarter.hosting.base import ExitReason, HostContext
from estarter.hosting.process_host import ProcessHost
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy
from estarter.protocol.kernel_wire import encode_error

from .test_process_host import CLIENT, FakeKernel


class EncodedKernel(FakeKernel):
    """FakeKernel's answers, also in the kernel's encoded form; ``declined`` methods
    have none (they go to ``api``)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[str] = []
        self.declined = {"decline.me"}

    def api_encoded(self, method: str, params: Any) -> bytes | None:
        if method in self.declined:
            return None
        self.encoded.append(method)
        fut = self.api(method, params)
        exc = fut.exception()
        if exc is None:
            return json.dumps({"result": fut.result()}).encode()
        if isinstance(exc, EstarterError):
            return encode_error(exc)
        raise exc  # a bug in the port: the host answers -32603


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    hosts: list[ProcessHost] = []
    logs: list[str] = []
    kernel = EncodedKernel()

    def start(source: str) -> tuple[list[dict[str, Any]], ProcessHost]:
        folder = tmp_path / "app"
        folder.mkdir(exist_ok=True)
        (folder / "app.py").write_text(textwrap.dedent(source))
        manifest = AppManifest.model_validate({"id": "t", "runtime": "python",
                                               "entry": "app.py"})
        ctx = HostContext(api=kernel.api, api_encoded=kernel.api_encoded,
                          log=lambda level, msg: logs.append(msg), on_exit=lambda info: None,
                          home=tmp_path / "home", appdata=tmp_path / "home" / "appdata")
        host = ProcessHost(SandboxPolicy.from_manifest(manifest, folder), ctx)
        hosts.append(host)
        host.start()
        info = host.wait(60)
        assert info is not None and info.reason is ExitReason.EXITED, logs
        return [json.loads(line) for line in logs if line.startswith("{")], host

    start.kernel = kernel  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for host in hosts:
            host.close()


def test_quick_calls_are_answered_from_the_encoded_reply_as_the_endpoint_would(
        run: Any) -> None:
    got, host = run(CLIENT + """
out(ping=client.call("system.ping"))
out(echo=client.call("echo", {"a": [1, "é"]}))
for method in ("system.info", "boom", "nope"):
    try:
        client.call(method)
    except ApiError as exc:
        out(method=method, code=exc.code, data=exc.data, message=exc.message)
""")
    assert got[0] == {"ping": {"pong": True, "time": 1.0}}
    assert got[1] == {"echo": {"a": [1, "é"]}}
    assert got[2]["code"] == -32001 and got[2]["data"] == {"permission": "system.info"}
    assert got[3]["code"] == -32603 and "secret" not in got[3]["message"]
    assert got[4]["code"] == -32601
    assert run.kernel.encoded == ["system.ping", "echo", "system.info", "boom", "nope"]
    messages = host.info()["messages"]
    assert messages["received"] == messages["sent"] == 5 and messages["malformed"] == 0


def test_batches_notifications_and_declined_calls_take_the_endpoint(run: Any) -> None:
    got, _ = run("""
import json, os, sys
from sdk._wire import encode_frame, read_frame
def ask(msg):
    os.write(1, encode_frame(msg))
    return json.loads(read_frame(sys.stdin.buffer))
os.write(1, encode_frame({"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}}))
batch = ask([{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1]},
             {"jsonrpc": "2.0", "id": 2, "method": "system.ping"}])
declined = ask({"jsonrpc": "2.0", "id": 3, "method": "decline.me"})
bad_id = ask({"jsonrpc": "2.0", "id": True, "method": "system.ping"})
print(json.dumps({"batch": batch, "declined": declined, "bad": bad_id}), file=sys.stderr,
      flush=True)
""")
    reply = got[0]
    assert sorted(r["id"] for r in reply["batch"]) == [1, 2]
    assert reply["declined"]["id"] == 3 and reply["declined"]["error"]["code"] == -32601
    assert reply["bad"]["id"] is None and reply["bad"]["error"]["code"] == -32600
    assert run.kernel.encoded == []  # none of these went the direct way
    assert ("echo", {"n": 1}) in run.kernel.calls and ("decline.me", None) in run.kernel.calls
