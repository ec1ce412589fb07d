"""The direct path of a quick API call (issue 15): the kernel's encoded reply is
spliced into the app's answer undecoded. What the app gets must be what the
endpoint would have answered, and everything else must still take the endpoint."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import EstarterError, NotFound, PermissionDenied
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy
from estarter.protocol import messages as m
from estarter.protocol.kernel_wire import answer_body, encode_error, reply_error, serve_call
from estarter.supervision import Supervisor

from .test_supervisor_calls import IdleHost

REQUESTS: list[Any] = [
    {"jsonrpc": "2.0", "id": 1, "method": "system.ping"},
    {"jsonrpc": "2.0", "id": "x\"y", "method": "fs.read", "params": {"path": "/a"}},
    {"jsonrpc": "2.0", "id": 7, "method": "echo", "params": [1, 2]},
]
NOT_REQUESTS: list[Any] = [
    {"jsonrpc": "2.0", "method": "log", "params": {}},          # a notification
    {"jsonrpc": "2.0", "id": None, "method": "system.ping"},    # null id
    {"jsonrpc": "2.0", "id": True, "method": "system.ping"},    # bool id
    {"jsonrpc": "2.0", "id": 1.5, "method": "system.ping"},     # fractional id
    {"jsonrpc": "2.0", "id": 1, "method": 3},
    {"jsonrpc": "2.0", "id": 1, "method": "a", "params": "no"},
    {"jsonrpc": "1.0", "id": 1, "method": "a"},
    {"id": 1, "method": "a"},
    {"jsonrpc": "2.0", "id": 1, "result": 3},                   # an answer
    [{"jsonrpc": "2.0", "id": 1, "method": "a"}],               # a batch
    "text", 3, None,
]


@pytest.mark.parametrize("obj", REQUESTS)
def test_a_plain_request_is_what_the_parser_calls_a_request(obj: Any) -> None:
    parsed = m.parse_one(obj)
    assert isinstance(parsed, m.Request)
    assert m.plain_request(obj) == (parsed.id, parsed.method, parsed.params)


@pytest.mark.parametrize("obj", NOT_REQUESTS)
def test_anything_else_is_left_to_the_parser(obj: Any) -> None:
    assert m.plain_request(obj) is None
    if not isinstance(obj, list):
        assert not isinstance(m.parse_one(obj), m.Request)


def kernel_reply(handler: Any) -> bytes:
    return serve_call(lambda app, method, params: handler(), json.dumps(["a", "m", None]).encode())


def raise_(exc: BaseException) -> Any:
    raise exc


@pytest.mark.parametrize("msg_id", [1, 0, -5, "id", "quote\" and é", ""])
@pytest.mark.parametrize("handler", [
    lambda: {"pong": True, "time": 1.5},
    lambda: None,
    lambda: ["é", {"nested": [1, {"x": "\n"}]}],
    lambda: raise_(PermissionDenied.for_permission("fs.write", "fs.write", "a", True)),
    lambda: raise_(NotFound("gone", {"path": "/x"})),
    lambda: raise_(RuntimeError("a bug")),
])
def test_the_spliced_answer_is_the_endpoints_answer(msg_id: Any, handler: Any) -> None:
    reply = kernel_reply(handler)
    decoded = json.loads(reply)
    expected = (m.response(msg_id, decoded["result"]) if "result" in decoded
                else m.error_response(msg_id, decoded["error"]))
    assert json.loads(answer_body(msg_id, reply)) == expected
    error = reply_error(reply)
    assert (error is None) == ("result" in decoded)
    if error is not None:
        assert error.to_dict() == decoded["error"]


class EncodedKernel:
    """A kernel port with the encoded form: records what it served and how."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        self.sent.append(f"call {method}")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        fut.set_result(None)
        return fut

    def call_encoded(self, app_id: str, method: str, params: Any) -> bytes | None:
        self.sent.append(f"encoded {method}")
        if method == "fs.write":
            return encode_error(PermissionDenied.for_permission("fs.write", method, app_id))
        if method == "fs.read":
            return encode_error(NotFound("no such file"))
        return json.dumps({"result": {"pong": True}}).encode()

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        pass

    def logs(self, app_id: str, lines: list[tuple[str, str, str]]) -> None:
        self.sent.append("logs")

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        pass


def test_the_supervisor_serves_quick_kernel_calls_encoded_and_counts_them(
        tmp_path: Path) -> None:
    hosts: list[IdleHost] = []
    kernel = EncodedKernel()
    manifest = AppManifest.model_validate({"id": "t", "entry": "app.py"})
    sup = Supervisor(SandboxPolicy.from_manifest(manifest, tmp_path), 1, kernel, tmp_path,
                     host_factory=lambda policy, ctx: hosts.append(IdleHost(ctx)) or hosts[-1])
    sup.start()
    try:
        direct = hosts[0].ctx.api_encoded
        assert direct is not None
        assert json.loads(direct("system.ping", {}) or b"") == {"result": {"pong": True}}
        assert reply_error(direct("fs.write", {}) or b"") is not None
        assert isinstance(reply_error(direct("fs.read", {}) or b""), EstarterError)
        # Served by the supervisor itself, or may wait: not the direct path's.
        for method in ("system.heartbeat", "log", "ipc.receive"):
            assert direct(method, {}) is None
        assert [s for s in kernel.sent if s.startswith("encoded")] == [
            "encoded system.ping", "encoded fs.write", "encoded fs.read"]
        calls = {(c["method"], c["outcome"]): c["count"]
                 for c in sup.info()["metrics"]["calls"]}
        assert calls == {("system.ping", "ok"): 1, ("fs.write", "denied"): 1,
                         ("fs.read", "error"): 1}
    finally:
        sup.close()


def test_a_kernel_port_without_the_encoded_form_keeps_every_call_on_api(
        tmp_path: Path) -> None:
    class PlainKernel(EncodedKernel):
        call_encoded = None  # type: ignore[assignment]

    hosts: list[IdleHost] = []
    manifest = AppManifest.model_validate({"id": "t", "entry": "app.py"})
    sup = Supervisor(SandboxPolicy.from_manifest(manifest, tmp_path), 1, PlainKernel(),
                     tmp_path, host_factory=lambda policy, ctx: hosts.append(IdleHost(ctx))
                     or hosts[-1])
    sup.start()
    try:
        direct = hosts[0].ctx.api_encoded
        assert direct is not None and direct("system.ping", {}) is None
    finally:
        sup.close()
