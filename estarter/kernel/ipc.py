"""Messages between apps: direct sends, topics, bounded inboxes.

Two delivery styles, decided per app and never both for one message (so an app
sees no duplicates): an app that has called ``ipc.receive`` in this run pulls,
and its messages wait in its inbox; any other app gets each message pushed as an
``ipc.message`` notification (its host bounds what it buffers). Wasm apps always
pull. An inbox holds at most ``MAX_INBOX_MESSAGES`` messages and
``MAX_INBOX_BYTES`` bytes, and all inboxes together ``MAX_TOTAL_BYTES``: past
that the sender is answered Busy (-32005), so no sender can grow the kernel.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import Busy, InvalidParams, NotFound

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_INBOX_MESSAGES = 1000
MAX_INBOX_BYTES = 8 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_RECEIVE_SECONDS = 30.0
MAX_WAITERS = 64
MAX_TOPIC_CHARS = 256
MAX_TOPICS_PER_APP = 256

# push(app_id, method, params) -> True when the app has a push channel that took it.
Push = Callable[[str, str, Any], bool]


@dataclass(frozen=True)
class IpcStats:
    inboxes: int
    messages: int
    bytes: int
    waiters: int


class _Inbox:
    __slots__ = ("bytes", "messages", "pull")

    def __init__(self) -> None:
        self.messages: collections.deque[tuple[dict[str, Any], int]] = collections.deque()
        self.bytes = 0
        self.pull = False


class Ipc:
    """Thread-safe. ``is_running`` and ``pull_only`` come from the kernel's app table."""

    def __init__(self, is_running: Callable[[str], bool], push: Push,
                 pull_only: Callable[[str], bool] = lambda app_id: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._is_running = is_running
        self._push = push
        self._pull_only = pull_only
        self._clock = clock
        self._cond = threading.Condition()
        self._inboxes: dict[str, _Inbox] = {}
        self._topics: dict[str, set[str]] = {}
        self._total = 0
        self._waiters = 0

    def send(self, sender: str, to: str, message: Any, topic: str | None = None) -> dict[str, Any]:
        if not isinstance(to, str) or not to:
            raise InvalidParams("param to must be an app id", {"param": "to"})
        msg, size = _envelope(sender, topic, message)
        if not self._is_running(to):
            raise NotFound(f"app {to} is not running", {"appId": to})
        self._deliver(to, msg, size)
        return {"delivered": True}

    def broadcast(self, sender: str, topic: str, message: Any) -> dict[str, Any]:
        _check_topic(topic)
        msg, size = _envelope(sender, topic, message)
        with self._cond:
            targets = sorted(self._topics.get(topic, ()))
        delivered = 0
        for app_id in targets:
            if app_id == sender or not self._is_running(app_id):
                continue
            try:
                self._deliver(app_id, msg, size)
            except Busy:
                continue  # one full inbox must not stop the others
            delivered += 1
        return {"delivered": delivered}

    def subscribe(self, app_id: str, topic: str) -> dict[str, Any]:
        _check_topic(topic)
        with self._cond:
            mine = sum(1 for subs in self._topics.values() if app_id in subs)
            subs = self._topics.setdefault(topic, set())
            if app_id not in subs and mine >= MAX_TOPICS_PER_APP:
                raise Busy(f"an app subscribes to at most {MAX_TOPICS_PER_APP} topics")
            subs.add(app_id)
        return {}

    def unsubscribe(self, app_id: str, topic: str) -> dict[str, Any]:
        _check_topic(topic)
        with self._cond:
            subs = self._topics.get(topic)
            if subs is not None:
                subs.discard(app_id)
                if not subs:
                    del self._topics[topic]
        return {}

    def receive(self, app_id: str, timeout_ms: int = 0) -> dict[str, Any] | None:
        """The oldest message, waiting up to ``timeout_ms`` (capped); None if none came.

        The first call switches the app to pulling for the rest of its run."""
        if timeout_ms < 0:
            raise InvalidParams("timeoutMs must be >= 0", {"param": "timeoutMs"})
        deadline = self._clock() + min(timeout_ms / 1000.0, MAX_RECEIVE_SECONDS)
        with self._cond:
            inbox = self._inboxes.setdefault(app_id, _Inbox())
            inbox.pull = True
            if not inbox.messages and timeout_ms > 0:
                if self._waiters >= MAX_WAITERS:
                    raise Busy("too many apps are waiting in ipc.receive")
                self._waiters += 1
                try:
                    while not inbox.messages:
                        left = deadline - self._clock()
                        if left <= 0 or self._inboxes.get(app_id) is not inbox:
                            break
                        self._cond.wait(left)
                finally:
                    self._waiters -= 1
            if not inbox.messages:
                return None
            msg, size = inbox.messages.popleft()
            inbox.bytes -= size
            self._total -= size
            return msg

    def drop(self, app_id: str) -> None:
        """The app ended: free its inbox and subscriptions (waiters wake up)."""
        with self._cond:
            inbox = self._inboxes.pop(app_id, None)
            if inbox is not None:
                self._total -= inbox.bytes
            for topic in [t for t, subs in self._topics.items() if app_id in subs]:
                self._topics[topic].discard(app_id)
                if not self._topics[topic]:
                    del self._topics[topic]
            self._cond.notify_all()

    def statistics(self) -> IpcStats:
        with self._cond:
            return IpcStats(len(self._inboxes),
                            sum(len(i.messages) for i in self._inboxes.values()),
                            self._total, self._waiters)

    def _deliver(self, to: str, msg: dict[str, Any], size: int) -> None:
        with self._cond:
            inbox = self._inboxes.get(to)
            pull = (inbox is not None and inbox.pull) or self._pull_only(to)
        if not pull and self._push(to, "ipc.message", msg):
            return
        with self._cond:
            inbox = self._inboxes.setdefault(to, _Inbox())
            if len(inbox.messages) >= MAX_INBOX_MESSAGES or \
                    inbox.bytes + size > MAX_INBOX_BYTES:
                raise Busy(f"the inbox of {to} is full", {"appId": to})
            if self._total + size > MAX_TOTAL_BYTES:
                raise Busy("the kernel holds too many undelivered messages", {"appId": to})
            inbox.messages.append((msg, size))
            inbox.bytes += size
            self._total += size
            self._cond.notify_all()


def _envelope(sender: str, topic: str | None, message: Any) -> tuple[dict[str, Any], int]:
    if topic is not None:
        _check_topic(topic)
    try:
        size = len(json.dumps(message, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError):
        raise InvalidParams("message must be JSON", {"param": "message"}) from None
    if size > MAX_MESSAGE_BYTES:
        raise InvalidParams(f"a message is at most {MAX_MESSAGE_BYTES} bytes of JSON "
                            f"(this one: {size})", {"param": "message", "max": MAX_MESSAGE_BYTES})
    # The accounted size includes the envelope, so many tiny messages still count.
    return {"from": sender, "topic": topic, "message": message}, size + 64 + len(topic or "")


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_CHARS:
        raise InvalidParams(f"topic must be a non-empty string of at most {MAX_TOPIC_CHARS} "
                            "characters", {"param": "topic"})
