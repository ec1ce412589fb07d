"""ProcessHost with a fake kernel: real child processes speaking the wire protocol."""

from __future__ import annotations

import concurrent.futures
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import EstarterError, PermissionDenied
from estarter.hosting.base import ExitInfo, ExitReason, HostContext, HostState
from estarter.hosting.process_host import ProcessHost
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy


class FakeKernel:
    """Answers like the kernel, records every call; ``forbidden`` methods are denied."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.forbidden = {"system.info"}
        self.lock = threading.Condition()

    def wait_for(self, method: str, timeout: float = 30) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: any(m == method for m, _ in self.calls),
                                      timeout)

    def api(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self.lock:
            self.calls.append((method, params))
            self.lock.notify_all()
        if method in self.forbidden:
            fut.set_exception(PermissionDenied.for_permission(method, method))
        elif method == "echo":
            fut.set_result(params)
        elif method == "system.ping":
            fut.set_result({"pong": True, "time": 1.0})
        elif method == "boom":
            fut.set_exception(RuntimeError("secret internals"))
        else:
            fut.set_exception(EstarterError.from_dict({"code": -32601, "message": "nope"}))
        return fut


class Rig:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.kernel = FakeKernel()
        self.logs: list[str] = []
        self.exits: list[ExitInfo] = []
        self.hosts: list[ProcessHost] = []

    def host(self, source: str, on_connect: Any = None, **manifest: Any) -> ProcessHost:
        folder = self.root / "app"
        folder.mkdir(exist_ok=True)
        (folder / "app.py").write_text(textwrap.dedent(source))
        m = AppManifest.model_validate({"id": "t", "runtime": "python", "entry": "app.py",
                                        **manifest})
        policy = SandboxPolicy.from_manifest(m, folder, granted=m.requested_permissions)
        ctx = HostContext(api=self.kernel.api, log=lambda lvl, msg: self.logs.append(msg),
                          on_exit=self.exits.append, home=self.root / "home",
                          appdata=self.root / "home" / "appdata", on_connect=on_connect)
        host = ProcessHost(policy, ctx)
        self.hosts.append(host)
        return host


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        for host in r.hosts:
            host.close()


CLIENT = """
import json, os, sys
from sdk import EStarterClient, ApiError
client = EStarterClient.connect()
def out(**kw):
    print(json.dumps(kw), file=sys.stderr, flush=True)
"""


def results(rig: Rig) -> list[dict[str, Any]]:
    return [json.loads(line) for line in rig.logs if line.startswith("{")]


def test_calls_are_forwarded_and_errors_come_back_typed(rig: Rig) -> None:
    host = rig.host(CLIENT + """
out(ping=client.call("system.ping"))
out(echo=client.call("echo", {"a": [1, 2]}))
for method in ("system.info", "boom", "nope"):
    try:
        client.call(method)
    except ApiError as exc:
        out(method=method, code=exc.code, data=exc.data, message=exc.message)
client.notify("echo", {"note": True})
print("stray print goes to the log", flush=True)
""")
    host.start()
    info = host.wait(30)
    assert info is not None and info.reason is ExitReason.EXITED, rig.logs
    got = results(rig)
    assert got[0] == {"ping": {"pong": True, "time": 1.0}}
    assert got[1] == {"echo": {"a": [1, 2]}}
    assert got[2]["code"] == -32001 and got[2]["data"] == {"permission": "system.info"}
    assert got[3]["code"] == -32603 and "secret" not in got[3]["message"]
    assert got[4]["code"] == -32601
    assert ("echo", {"note": True}) in rig.kernel.calls
    assert "stray print goes to the log" in rig.logs
    assert rig.exits == [info] and host.state is HostState.EXITED


def test_the_host_hears_once_that_the_app_connects_before_its_first_call(rig: Rig) -> None:
    connects: list[int] = []  # how many calls the kernel had seen at each
    host = rig.host(CLIENT + """
out(ping=client.call("system.ping"))
out(echo=client.call("echo", [1]))
""", on_connect=lambda: connects.append(len(rig.kernel.calls)))
    host.start()
    info = host.wait(30)
    assert info is not None and info.reason is ExitReason.EXITED, rig.logs
    assert connects == [0] and [m for m, _ in rig.kernel.calls] == ["system.ping", "echo"]


def test_batches_are_answered_as_one_array(rig: Rig) -> None:
    host = rig.host("""
import json, os, sys
from sdk._wire import encode_frame, read_frame
batch = [{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1]},
         {"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}},
         {"jsonrpc": "2.0", "id": 2, "method": "system.ping"}]
os.write(1, encode_frame(batch))
reply = json.loads(read_frame(sys.stdin.buffer))
print(json.dumps({"reply": reply}), file=sys.stderr, flush=True)
""")
    host.start()
    assert host.wait(30) is not None
    reply = results(rig)[0]["reply"]
    assert sorted(r["id"] for r in reply) == [1, 2]
    assert {r["id"]: r.get("result") for r in reply}[1] == [1]


def test_host_notifications_reach_the_app(rig: Rig) -> None:
    host = rig.host(CLIENT + """
import threading
got = threading.Event()
client.on("ipc.message", lambda params: (out(message=params), got.set()))
client.call("system.ping")
got.wait(20)
""")
    host.start()
    assert rig.kernel.wait_for("system.ping")  # its handler is registered by then
    host.notify("ipc.message", {"from": "other", "topic": None, "message": "hi"})
    info = host.wait(30)
    assert info is not None and info.reason is ExitReason.EXITED
    assert results(rig) == [{"message": {"from": "other", "topic": None, "message": "hi"}}]


def test_stop_asks_first_and_the_app_can_exit_cleanly(rig: Rig) -> None:
    host = rig.host(CLIENT + """
import time
client.on_shutdown(lambda grace: (out(grace=grace), os._exit(0)))
client.call("system.ping")
time.sleep(60)
""")
    host.start()
    assert rig.kernel.wait_for("system.ping")
    info = host.stop(grace=5)
    assert info.reason is ExitReason.STOPPED and info.code == 0
    assert results(rig) == [{"grace": 5}]


def test_environment_and_working_folder(rig: Rig) -> None:
    host = rig.host("""
import json, os, sys
print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}), file=sys.stderr)
""")
    host.start()
    assert host.wait(30) is not None
    got = results(rig)[0]
    env = got["env"]
    assert env["ESTARTER_MODE"] == "hosted" and env["ESTARTER_APP_ID"] == "t"
    assert set(env) - {"PATH", "LANG", "ESTARTER_MODE", "ESTARTER_APP_ID"} <= {
        "ESTARTER_LIMITS_TOKEN", "PWD", "LC_CTYPE"}
    assert got["cwd"] == "/appdata"  # sandboxed: the appdata zone at its virtual path


def test_start_twice_and_use_after_close(rig: Rig) -> None:
    from estarter.errors import LaunchError, RuntimeClosed

    host = rig.host("pass\n")
    host.start()
    with pytest.raises(LaunchError):
        host.start()
    host.wait(30)
    host.close()
    host.close()  # idempotent
    with pytest.raises(RuntimeClosed):
        host.start()
