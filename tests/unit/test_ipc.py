"""Messages between apps: order, pull vs push, bounds, topics."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from estarter.errors import Busy, InvalidParams, NotFound
from estarter.kernel.ipc import MAX_INBOX_BYTES, MAX_INBOX_MESSAGES, MAX_MESSAGE_BYTES, Ipc


class FakeApps:
    """The kernel's side: which apps run, and a push channel that records."""

    def __init__(self, *running: str) -> None:
        self.running = set(running)
        self.pushed: list[tuple[str, str, Any]] = []
        self.can_push = True

    def is_running(self, app_id: str) -> bool:
        return app_id in self.running

    def push(self, app_id: str, method: str, params: Any) -> bool:
        if self.can_push:
            self.pushed.append((app_id, method, params))
        return self.can_push


def make(*running: str) -> tuple[Ipc, FakeApps]:
    apps = FakeApps(*running)
    return Ipc(apps.is_running, apps.push), apps


def test_pull_mode_keeps_order() -> None:
    ipc, apps = make("a", "b")
    assert ipc.receive("b", 0) is None  # b pulls from now on
    for i in range(1000):
        assert ipc.send("a", "b", {"n": i}) == {"delivered": True}
    got = [ipc.receive("b", 0) for _ in range(1000)]
    assert [g["message"]["n"] for g in got if g] == list(range(1000))
    assert got[0] == {"from": "a", "topic": None, "message": {"n": 0}}
    assert apps.pushed == []  # pulled messages are not pushed too


def test_push_mode_until_the_first_receive() -> None:
    ipc, apps = make("a", "b")
    ipc.send("a", "b", "hi", topic="t")
    assert apps.pushed == [("b", "ipc.message", {"from": "a", "topic": "t", "message": "hi"})]
    assert ipc.statistics().messages == 0  # nothing held for a pushed message
    apps.can_push = False  # no push channel (e.g. wasm): it waits in the inbox
    ipc.send("a", "b", "later")
    assert ipc.receive("b", 0)["message"] == "later"


def test_not_running_is_not_found_and_bad_messages_invalid() -> None:
    ipc, _ = make("a")
    with pytest.raises(NotFound):
        ipc.send("a", "ghost", 1)
    with pytest.raises(InvalidParams):
        ipc.send("a", "a", "x" * MAX_MESSAGE_BYTES)
    with pytest.raises(InvalidParams):
        ipc.send("a", "a", {1, 2})


def test_full_inbox_answers_busy_and_memory_stays_bounded() -> None:
    ipc, _ = make("a", "b")
    ipc.receive("b", 0)
    sent = 0
    with pytest.raises(Busy):
        for _ in range(MAX_INBOX_MESSAGES + 1):
            ipc.send("a", "b", "x")
            sent += 1
    assert sent == MAX_INBOX_MESSAGES
    ipc.drop("b")
    ipc.receive("b", 0)
    big = "y" * (512 * 1024)
    with pytest.raises(Busy):
        for _ in range(100):
            ipc.send("a", "b", big)
    assert ipc.statistics().bytes <= MAX_INBOX_BYTES
    ipc.drop("b")
    assert ipc.statistics().bytes == 0


def test_receive_waits_bounded_and_wakes_on_send() -> None:
    ipc, _ = make("a", "b")
    t0 = time.monotonic()
    assert ipc.receive("b", 50) is None
    assert 0.04 <= time.monotonic() - t0 < 30  # waited, and did not hang
    out: list[Any] = []
    waiter = threading.Thread(target=lambda: out.append(ipc.receive("b", 5000)))
    waiter.start()
    deadline = time.monotonic() + 5
    while ipc.statistics().waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    ipc.send("a", "b", "wake")
    waiter.join(5)
    assert out and out[0]["message"] == "wake"


def test_broadcast_reaches_running_subscribers_but_not_the_sender() -> None:
    ipc, apps = make("a", "b", "c")
    for app in ("a", "b", "c", "gone"):
        ipc.subscribe(app, "news")
    ipc.receive("c", 0)
    assert ipc.broadcast("a", "news", 1) == {"delivered": 2}
    assert [p[0] for p in apps.pushed] == ["b"]
    assert ipc.receive("c", 0)["topic"] == "news"
    ipc.unsubscribe("b", "news")
    assert ipc.broadcast("a", "news", 2) == {"delivered": 1}
