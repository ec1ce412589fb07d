"""Operator access over the kernel socket (issue 13), without Ray: the operator
token opens ``operator.*`` and nothing else, app tokens never open it, wrong or
absent tokens are refused; ``ps`` rows are honest; the CLI's operator commands go
over the socket without importing Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.console.auth import OPERATOR_TOKEN_FILE as CONSOLE_TOKEN_FILE
from estarter.console.auth import ensure_token
from estarter.errors import InvalidParams, MethodNotFound, NotFound, PermissionDenied
from estarter.kernel.core import AppRecord, Kernel
from estarter.kernel.operator_access import status_row
from estarter.kernel.permissions import PermissionManager
from estarter.operator_client import OPERATOR_TOKEN_FILE, OperatorClient, reach
from estarter.paths import kernel_db, run_dir, state_db
from estarter.protocol.framing import FrameDecoder, encode_frame
from estarter.state import AppRecords
from tests.apps import FAKE_RUNTIME_UP

ROOT = Path(__file__).resolve().parents[2]
APP = "tool"


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    home = tmp_path / "h"
    k = Kernel(home, PermissionManager(state_db(home)), records=AppRecords(kernel_db(home)))
    k.permissions.register(APP, ["fs.read"])
    (run_dir(home) / "runtime.json").write_text("{}")  # as ``up`` leaves it
    try:
        yield k
    finally:
        k.shutdown()
        k.permissions.close()
        assert k.records is not None
        k.records.close()


def operator_token(home: Path) -> str:
    return ensure_token(home).read_text().strip()


def raw_call(path: Path, token: str, method: str, params: Any = None) -> list[dict[str, Any]]:
    """hello with ``token`` and, if it is accepted, one call: every message the
    kernel sent back (a refused hello: its answer, then the kernel closed)."""
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(path))
        decoder = FrameDecoder()
        got: list[dict[str, Any]] = []

        def read_until(msg_id: int) -> bool:
            while not any(msg.get("id") == msg_id for msg in got):
                data = raw.recv(65536)
                if not data:
                    return False
                got.extend(json.loads(b) for b in decoder.feed(data))
            return True

        raw.sendall(encode_frame({"jsonrpc": "2.0", "id": 1, "method": "auth.hello",
                                  "params": {"token": token}}))
        read_until(1)
        if "error" in got[0]:
            assert raw.recv(65536) == b""  # and closed
            return got
        raw.sendall(encode_frame({"jsonrpc": "2.0", "id": 2, "method": method,
                                  "params": params or {}}))
        read_until(2)
    return got


def test_the_token_file_is_the_consoles() -> None:
    assert OPERATOR_TOKEN_FILE == CONSOLE_TOKEN_FILE


def test_operator_token_opens_operator_methods_only(kernel: Kernel) -> None:
    operator_token(kernel.home)
    client = reach(kernel.home)
    assert client is not None
    with client:
        assert client.ps() == []
        with pytest.raises(NotFound):
            client.info("nosuch")
        with pytest.raises(NotFound):
            client.stop("nosuch", 1.0)
        # An operator connection has no app identity: app methods are not served.
        for method in ("system.ping", "fs.read", "permission.list"):
            with pytest.raises(MethodNotFound):
                client.call(method, {})
        with pytest.raises(InvalidParams):
            client.call("operator.stop", {"appId": "x", "grace": -1})
        with pytest.raises(InvalidParams):
            client.call("operator.start", {"ref": 3})
        assert client.ps() == []  # still served after errors
    assert kernel.socket is not None
    assert kernel.socket.connections() <= 1  # this client is going away
    assert "@operator" not in kernel._sockets  # never attached as an app


def test_app_token_cannot_call_operator_methods(kernel: Kernel) -> None:
    assert kernel.socket is not None
    token = kernel.tokens.issue(APP)
    for method in ("operator.ps", "operator.stop", "operator.start", "operator.info"):
        got = raw_call(kernel.socket.path, token, method, {"appId": APP})
        assert got[0]["result"] == {"appId": APP}  # the app's hello is accepted
        answer = next(msg for msg in got if msg.get("id") == 2)
        assert answer["error"]["code"] == -32601, answer
    # Its own methods still work on the same kind of connection.
    got = raw_call(kernel.socket.path, token, "system.ping")
    assert "result" in next(msg for msg in got if msg.get("id") == 2)


def test_an_app_cannot_reach_operator_methods_through_the_kernel() -> None:
    # Hosted apps' calls reach Kernel.handle through their supervisor: no operator.*
    # method is routed there (the router would answer -32601).
    from estarter.kernel.router import Router

    router = Router()
    with pytest.raises(MethodNotFound):
        router.lookup("operator.ps")


def test_wrong_or_absent_operator_token_is_refused(kernel: Kernel) -> None:
    assert kernel.socket is not None
    # No token file yet: nothing opens an operator connection.
    with pytest.raises(PermissionDenied):
        OperatorClient.connect(kernel.home, "x" * 43)
    assert reach(kernel.home) is None
    real = operator_token(kernel.home)
    for bad in ("", "x" * 43, real[:-1], real + "x", real.upper() if real.upper() != real
                else real.lower()):
        got = raw_call(kernel.socket.path, bad, "operator.ps")
        assert got[0]["error"]["code"] == -32001, (bad, got)
        assert not any(msg.get("id") == 2 for msg in got)  # closed before any call
    # The file is read at each hello: a replaced token takes effect at once.
    (run_dir(kernel.home) / OPERATOR_TOKEN_FILE).write_text("y" * 43)
    with pytest.raises(PermissionDenied):
        OperatorClient.connect(kernel.home, real)
    with OperatorClient.connect(kernel.home, "y" * 43) as client:
        assert client.ps() == []


def test_reach_needs_a_recorded_runtime_and_an_answering_socket(kernel: Kernel,
                                                                tmp_path: Path) -> None:
    operator_token(kernel.home)
    (run_dir(kernel.home) / "runtime.json").unlink()
    assert reach(kernel.home) is None  # no runtime up: the caller says so (Ray path)
    other = tmp_path / "other"
    operator_token(other)
    (run_dir(other) / "runtime.json").write_text("{}")
    assert reach(other) is None  # a recorded runtime whose socket is gone


class FakeSupervisor:
    def __init__(self, info: dict[str, Any]) -> None:
        self.answer = info

    def info(self) -> dict[str, Any]:
        return dict(self.answer)

    def stop(self, grace: float) -> dict[str, Any]:
        return {"code": 0, "reason": "stopped", "detail": "", "restarts": 0}

    def notify(self, method: str, params: Any) -> None:
        pass


def test_ps_shows_backoff_as_restarting_and_never_a_dead_pid(kernel: Kernel) -> None:
    from estarter.policy import SandboxPolicy  # noqa: F401 - for the record's type only

    policy: Any = type("P", (), {"runtime": type("R", (), {"value": "python"})(),
                                 "restart": type("R", (), {"value": "always"})()})()
    backing = AppRecord("backoff", 7, policy, 1000.0)
    backing.state, backing.pid = backing.state.RUNNING, 4242  # what the kernel last heard
    backing.supervisor = FakeSupervisor({"state": "exited", "pid": 4242, "restarts": 3,
                                         "restartAt": 2000.0, "usage": {}})
    up = AppRecord("up", 8, policy, 1000.0)
    up.state, up.pid = up.state.RUNNING, 4243
    up.supervisor = FakeSupervisor({"state": "running", "pid": 5555, "restarts": 1,
                                    "restartAt": None, "startedAt": 1500.0,
                                    "usage": {"cpuSeconds": 1.5, "memoryBytes": 1 << 20}})
    kernel._apps.update({"backoff": backing, "up": up})
    rows = {r["appId"]: r for r in kernel.ps()}
    assert rows["backoff"]["state"] == "restarting" and rows["backoff"]["pid"] is None
    assert rows["backoff"]["restarts"] == 3 and rows["backoff"]["restartAt"] == 2000.0
    assert rows["up"]["state"] == "running" and rows["up"]["pid"] == 5555  # the new pid
    assert rows["up"]["restarts"] == 1 and rows["up"]["cpuSeconds"] == 1.5
    assert rows["up"]["memoryBytes"] == 1 << 20 and rows["up"]["uptime"] is not None


def test_ps_drops_ended_apps_whose_record_is_gone(kernel: Kernel) -> None:
    policy: Any = type("P", (), {"runtime": type("R", (), {"value": "python"})(),
                                 "restart": type("R", (), {"value": "never"})()})()
    assert kernel.records is not None
    for app in ("kept", "gone"):
        rec = AppRecord(app, kernel.records.next_run_id(), policy, 1000.0)
        kernel.records.launched(app, rec.run_id, app, "never")
        rec.exit = type("E", (), {"to_dict": lambda self: {"reason": "exited", "code": 0,
                                                           "restarts": 2}})()
        rec.state, rec.pid = rec.state.EXITED, 99
        kernel._apps[app] = rec
    kernel.records.forget("gone")  # what ``estarter uninstall`` does
    rows = {r["appId"]: r for r in kernel.ps()}
    assert set(rows) == {"kept"}
    assert rows["kept"]["pid"] is None and rows["kept"]["restarts"] == 2


@pytest.mark.parametrize(("host", "expected"), [
    (None, {"state": "running", "pid": None, "cpuSeconds": None}),  # supervisor silent
    ({"state": "running", "pid": None, "startedAt": 90.0, "restarts": 0,
      "usage": {"cpuSeconds": 0.0, "memoryBytes": 0}},
     {"state": "running", "pid": None, "cpuSeconds": None, "uptime": 10.0}),  # wasm
    ({"state": "exited", "pid": 9, "restarts": 0},
     {"state": "exited", "pid": None}),  # the final exit is on its way
])
def test_status_row_leaves_unknowns_blank(host: dict[str, Any] | None,
                                          expected: dict[str, Any]) -> None:
    rec = {"appId": "a", "state": "running", "pid": 9, "runtime": "wasm", "exit": None}
    row = status_row(rec, host, now=100.0)
    assert {k: row[k] for k in expected} == expected


def _fresh_interpreter(script: str, tmp_path: Path) -> tuple[list[str], Any]:
    """Run ``script`` (it prints CALLS and RAY lines) in a fresh interpreter without
    estarter's or Ray's environment; its output lines and CALLS, once it is checked
    that ray was never imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESTARTER_", "RAY_"))}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "home")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "RAY False" in lines, proc.stdout
    return lines, json.loads(next(ln for ln in lines if ln.startswith("CALLS "))[6:])


def test_cli_operator_commands_go_over_the_socket_without_ray(tmp_path: Path) -> None:
    """ps, start, stop, restart, inspect, permissions and doctor against a fake kernel
    behind the real socket server, in a fresh interpreter that must never import ray."""
    script = FAKE_RUNTIME_UP + textwrap.dedent("""
        calls = []

        class FakeAuthority:
            def requested(self, app_id):
                calls.append(("requested", app_id))
                return frozenset({"fs.read", "fs.write"})
            def granted(self, app_id):
                return frozenset({"fs.read"})
            def grants(self, app_id):
                return {"fs.read": "granted"}
            def pending(self, app_id):
                return []
            def grant(self, app_id, names, by="operator"):
                calls.append(("grant", app_id, names, by))
                return frozenset(names)
            def revoke(self, app_id, names, by="operator"):
                calls.append(("revoke", app_id, names, by))
                return frozenset()
            def deny(self, app_id, names=None, by="operator"):
                calls.append(("deny", app_id, names, by))
                return 0
            def audit(self, app_id, limit=1000):
                calls.append(("audit", app_id, limit))
                return [{"time": 0.0, "permission": "fs.read", "method": "fs.read",
                         "decision": "allowed"}]

        class FakeKernel:
            def __init__(self):
                self.home = home
                self.permissions = FakeAuthority()
            def rec(self, app, state):
                return {"appId": app, "state": state, "runId": 1, "exit": None}
            def ps(self):
                calls.append("ps")
                return [{"appId": "a", "state": "restarting", "pid": None, "runId": 1,
                         "restarts": 2, "startedAt": None, "exit": None}]
            def launch(self, ref, grants=None, grant_all=False, strict=None, node=None):
                calls.append(("launch", ref, grants, grant_all, node))
                return self.rec("a", "starting")
            def stop(self, app_id, grace=5.0):
                calls.append(("stop", app_id, grace))
                return self.rec(app_id, "exited")
            def restart(self, app_id, grace=5.0):
                calls.append(("restart", app_id, grace))
                return self.rec(app_id, "starting")
            def app_info(self, app_id):
                calls.append(("info", app_id))
                return {**self.rec(app_id, "running"), "host": {"pid": 1}}
            def actors(self):
                calls.append("actors")
                return [{"name": "estarter-kernel", "role": "kernel", "node": "10.0.0.1",
                         "pid": 7, "nice": 0, "alive": True}]

        server = SocketServer(home / "run", lambda *a: None, lambda t: None,
                              lambda *a: None, lambda *a: None,
                              operator=OperatorService(FakeKernel()))
        server.start()
        from estarter.cli import app
        for argv in (["ps"], ["ps", "--json"], ["start", "a", "--grant", "fs.read"],
                     ["stop", "a", "--grace", "1"], ["restart", "a"], ["inspect", "a"],
                     ["permissions", "list", "a"], ["permissions", "grant", "a", "fs.write"],
                     ["permissions", "revoke", "a", "fs.read"], ["permissions", "deny", "a"],
                     ["permissions", "audit", "a", "--limit", "5"], ["doctor"]):
            rc = app([*argv, "--home", str(home)], standalone_mode=False)
            assert not rc, (argv, rc)
        server.close()
        print("CALLS", json.dumps(calls))
        print("RAY", "ray" in sys.modules)
    """)
    lines, calls = _fresh_interpreter(script, tmp_path)
    assert calls == ["ps", "ps", ["launch", "a", ["fs.read"], False, None],
                     ["stop", "a", 1.0], ["restart", "a", 5.0], ["info", "a"],
                     ["requested", "a"], ["grant", "a", ["fs.write"], "cli"],
                     ["revoke", "a", ["fs.read"], "cli"], ["deny", "a", None, "cli"],
                     ["audit", "a", 5], "actors"]
    assert any("restarting" in line for line in lines)
    # doctor: the runtime is up (its socket answers) and its actors come through it.
    assert any("kernel" in line and "estarter-kernel" in line and "pid 7" in line
               for line in lines), lines


def test_cli_run_against_up_goes_over_the_socket_without_ray(tmp_path: Path) -> None:
    """``estarter run`` against the runtime that is up: launched, followed and its exit
    status taken over the operator socket (cursor, events polled until the exit), in a
    fresh interpreter that must never import ray. The events wait for the app (the
    first polls find nothing) as they would for a real one."""
    script = FAKE_RUNTIME_UP + textwrap.dedent("""
        folder = home.parent / "app"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(
            {"id": "a", "runtime": "python", "entry": "app.py"}))
        (folder / "app.py").write_text("")
        calls = []
        log = {"seq": 6, "time": 0.0, "event": "log", "appId": "a", "level": "info",
               "stream": "app", "message": "hello from a"}
        end = {"seq": 7, "time": 0.0, "event": "exit", "appId": "a", "code": 3,
               "reason": "exited", "detail": ""}

        class FakeKernel:
            def __init__(self):
                self.home = home
                self.polls = 0
            def launch(self, ref, grants=None, grant_all=False, strict=None, node=None):
                calls.append(("launch", ref, grants, grant_all, node))
                return {"appId": "a", "state": "starting", "runId": 1, "exit": None}
            def event_cursor(self):
                calls.append("cursor")
                return 5
            def poll_events(self, since, timeout=0.0, app_id=None):
                assert timeout == 0.0  # answered at once: the client polls
                self.polls += 1
                if since == 5:
                    out = [log]
                elif self.polls < 4:
                    out = []
                else:
                    out = [end]
                calls.append(("events", since, app_id, len(out)))
                return {"events": out, "next": out[-1]["seq"] if out else since,
                        "missed": 0}

        server = SocketServer(home / "run", lambda *a: None, lambda t: None,
                              lambda *a: None, lambda *a: None,
                              operator=OperatorService(FakeKernel()))
        server.start()
        from estarter.cli import app
        # Not standalone: click returns the exit status typer.Exit carried.
        code = app(["run", str(folder), "--json", "--home", str(home)],
                   standalone_mode=False)
        server.close()
        print("CODE", code)
        print("CALLS", json.dumps(calls))
        print("RAY", "ray" in sys.modules)
    """)
    lines, calls = _fresh_interpreter(script, tmp_path)
    assert "CODE 3" in lines, lines
    folder = str((tmp_path / "app").resolve())
    assert calls[:3] == ["cursor", ["launch", folder, [], False, None], ["events", 5, "a", 1]]
    assert calls[3:] == [["events", 6, "a", 0], ["events", 6, "a", 0], ["events", 6, "a", 1]]
    printed = [json.loads(ln) for ln in lines if ln.startswith("{")]
    assert [e["event"] for e in printed] == ["log", "exit"]
    assert printed[0]["message"] == "hello from a" and printed[1]["code"] == 3


def test_operator_events_check_their_params(tmp_path: Path) -> None:
    from estarter.kernel.operator_access import OperatorService

    class Events:
        home = tmp_path

        def event_cursor(self) -> int:
            return 9

        def poll_events(self, since: int, timeout: float = 0.0,
                        app_id: str | None = None) -> dict[str, Any]:
            return {"events": [], "next": since, "missed": 0, "asked": [since, app_id]}

    svc = OperatorService(Events())  # type: ignore[arg-type]
    assert svc.handle("operator.cursor", {}) == 9
    assert svc.handle("operator.events", {"since": 4})["asked"] == [4, None]
    assert svc.handle("operator.events", {"since": 4, "appId": "a"})["asked"] == [4, "a"]
    assert not svc.is_blocking("operator.events")  # never holds a waiting slot
    assert svc.is_blocking("operator.actors")  # a Ray call to each actor
    with pytest.raises(MethodNotFound):  # a kernel that lists no actors (no Ray)
        svc.handle("operator.actors", {})
    for bad in ({"since": -1}, {"since": "4"}, {"since": True}, {"since": 1, "appId": 5}):
        with pytest.raises(InvalidParams):
            svc.handle("operator.events", bad)


def test_status_row_carries_what_the_console_shows() -> None:
    """The console builds its app rows from ``Kernel.ps`` alone: each row has the
    app's call counters and its dropped log lines, live or ended."""
    live = {"appId": "a", "state": "running", "pid": 9, "runtime": "python", "exit": None}
    host = {"state": "running", "pid": 11, "startedAt": 90.0, "restarts": 2,
            "usage": {"cpuSeconds": 1.0, "memoryBytes": 10},
            "metrics": {"calls": [{"method": "system.ping", "outcome": "ok", "count": 3}]},
            "messages": {"droppedLogLines": 7}}
    row = status_row(live, host, now=100.0)
    assert row["metrics"] == host["metrics"] and row["droppedLogLines"] == 7
    assert row["pid"] == 11 and row["restarts"] == 2
    silent = status_row(live, None, now=100.0)
    assert silent["metrics"] is None and silent["droppedLogLines"] == 0
    final = {"calls": [{"method": "ui.notify", "outcome": "ok", "count": 1}]}
    ended = {**live, "state": "exited", "metrics": None,
             "exit": {"reason": "exited", "restarts": 1, "metrics": final}}
    row = status_row(ended, None, now=100.0)
    assert row["metrics"] == final and row["pid"] is None and row["restarts"] == 1


def test_permissions_over_the_operator_socket(kernel: Kernel) -> None:
    """``estarter permissions`` against a runtime that is up: through the kernel's
    authority over its socket (no Ray driver), with the same effect as on the files."""
    kernel.permissions.register("writer", ["fs.write"])
    operator_token(kernel.home)
    client = reach(kernel.home)
    assert client is not None
    try:
        view = client.permissions("writer")
        assert view["requested"] == ["fs.write"] and "fs.write" not in view["granted"]
        granted = client.grant("writer", ["fs.write", "process.launch"])  # not requested
        assert "fs.write" in granted and "process.launch" not in granted
        assert "fs.write" in kernel.permissions.granted("writer")
        assert client.permissions("writer")["decisions"]["fs.write"] == "granted"
        assert client.deny("writer") == 0  # no open request
        assert "fs.write" not in client.revoke("writer", ["fs.write"])
        assert not kernel.permissions.check("writer", "fs.write")
        decisions = [(r["decision"], r["permission"]) for r in client.audit("writer", 10)]
        assert ("granted", "fs.write") in decisions and ("revoked", "fs.write") in decisions
        with pytest.raises(InvalidParams):
            client.call("operator.grant", {"appId": "writer", "permissions": "fs.write"})
        with pytest.raises(InvalidParams):
            client.call("operator.audit", {"appId": "writer", "limit": -1})
    finally:
        client.close()
