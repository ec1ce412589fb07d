"""The supervisor's port to the kernel and VFS actors, through a fake of the one
Ray module (``actors.ray_api``): which actor serves a call, what is resubmitted
while an actor restarts, and what fails at once with -32007. No Ray is started."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actors import ray_api
from actors.supervisor import RayKernelPort
from estarter.errors import UNAVAILABLE, ActorUnavailable, EstarterError

APP = "demo"


class FakeRef:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome


class FakeMethod:
    """An actor method: answers the scripted outcomes in turn, then ``{"result": ok}``."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> FakeRef:
        self.calls.append(args)
        outcome = self.outcomes.pop(0) if self.outcomes else {"result": "ok"}
        if isinstance(outcome, dict):
            outcome = json.dumps(outcome).encode()
        return FakeRef(outcome)

    def options(self, **_: Any) -> FakeMethod:
        return self


class FakeActor:
    def __init__(self, *outcomes: Any) -> None:
        self.call = FakeMethod(*outcomes)


@pytest.fixture(autouse=True)
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def get(ref: FakeRef, timeout: float | None = None) -> Any:
        if isinstance(ref.outcome, BaseException):
            raise ref.outcome
        return ref.outcome

    monkeypatch.setattr(ray_api, "get", get)


def sent(method: FakeMethod) -> list[str]:
    return [json.loads(args[0])[1] for args in method.calls]


def test_fs_calls_go_to_the_vfs_with_the_app_bound_others_to_the_kernel() -> None:
    kernel, vfs = FakeActor(), FakeActor()
    port = RayKernelPort(kernel, vfs=vfs)
    assert port.call(APP, "fs.read", {"path": "/appdata/a"}).result(5) == "ok"
    assert port.call(APP, "system.ping", {}).result(5) == "ok"
    assert sent(vfs.call) == ["fs.read"] and sent(kernel.call) == ["system.ping"]
    assert json.loads(vfs.call.calls[0][0])[0] == APP


def test_an_idempotent_call_is_resubmitted_while_its_actor_restarts() -> None:
    vfs = FakeActor(ActorUnavailable("restarting"), ActorUnavailable("restarting"))
    port = RayKernelPort(FakeActor(), vfs=vfs, retry_for=30)
    assert port.call(APP, "fs.write", {"path": "/appdata/a", "text": "x"}).result(30) == "ok"
    assert len(vfs.call.calls) == 3


@pytest.mark.parametrize(("method", "params"), [
    ("ipc.send", {"to": "b", "message": 1}),
    ("fs.write", {"path": "/appdata/a", "text": "x", "append": True}),
])
def test_a_call_that_must_not_repeat_fails_at_once_with_unavailable(
        method: str, params: dict[str, Any]) -> None:
    kernel, vfs = FakeActor(ActorUnavailable("gone")), FakeActor(ActorUnavailable("gone"))
    port = RayKernelPort(kernel, vfs=vfs, retry_for=30)
    with pytest.raises(EstarterError) as info:
        port.call(APP, method, params).result(5)
    assert info.value.code == UNAVAILABLE
    assert len(kernel.call.calls) + len(vfs.call.calls) == 1


def test_resubmitting_stops_after_the_retry_window() -> None:
    kernel = FakeActor(*[ActorUnavailable("down")] * 1000)
    port = RayKernelPort(kernel, retry_for=0.3)
    with pytest.raises(ActorUnavailable):
        port.call(APP, "system.ping", {}).result(30)
    assert 2 <= len(kernel.call.calls) < 1000


def test_kernel_errors_come_back_as_themselves() -> None:
    kernel = FakeActor({"error": {"code": -32002, "message": "no such app"}})
    with pytest.raises(EstarterError) as info:
        RayKernelPort(kernel).call(APP, "process.info", {"appId": "x"}).result(5)
    assert info.value.code == -32002


def test_the_encoded_form_is_the_actors_reply_with_the_same_routing_and_retries() -> None:
    kernel = FakeActor({"error": {"code": -32002, "message": "no such app"}})
    vfs = FakeActor(ActorUnavailable("restarting"))
    port = RayKernelPort(kernel, vfs=vfs, retry_for=30)
    reply = port.call_encoded(APP, "process.info", {"appId": "x"})
    assert reply is not None
    assert json.loads(reply) == {"error": {"code": -32002, "message": "no such app"}}
    # fs.* to the VFS actor, resubmitted while it restarts (an idempotent read).
    assert json.loads(port.call_encoded(APP, "fs.read", {"path": "/appdata/a"}) or b"") \
        == {"result": "ok"}
    assert sent(kernel.call) == ["process.info"] and sent(vfs.call) == ["fs.read", "fs.read"]


def test_the_encoded_form_answers_an_unavailable_actor_as_an_error_and_leaves_waits() -> None:
    kernel = FakeActor(ActorUnavailable("gone"))
    port = RayKernelPort(kernel, retry_for=30)
    reply = port.call_encoded(APP, "ipc.send", {"to": "b", "message": 1})
    assert reply is not None and json.loads(reply)["error"]["code"] == UNAVAILABLE
    assert len(kernel.call.calls) == 1  # not repeated: it may have been applied
    assert port.call_encoded(APP, "ipc.receive", {"timeoutMs": 10}) is None
    assert len(kernel.call.calls) == 1
