"""A JSON-RPC 2.0 peer with no I/O of its own (after python-lsp-jsonrpc's Endpoint).

The owner feeds it frame bodies (``receive``) and gives it a ``send`` callable;
incoming calls go to a ``dispatcher`` that returns a ``concurrent.futures.Future``,
so a call may be answered from any thread, and out of order.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from estarter.errors import (
    EstarterError,
    InternalError,
    RuntimeClosed,
)
from estarter.protocol import messages as m

log = logging.getLogger(__name__)

Dispatcher = Callable[[str, m.Params], "Future[Any] | Any"]
Send = Callable[[Any], None]
OnError = Callable[[BaseException], None]


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """A snapshot of an endpoint's counters.

    ``received``: frame bodies received; ``sent``: messages sent (a batch answer
    counts once); ``malformed``: invalid frames, batch items, batches over the caps
    and answers to no request of ours (an unknown id);
    ``pending``: our requests still waiting for an answer.
    """

    received: int
    sent: int
    malformed: int
    pending: int


ERROR_LOG_RATE = 1.0  # lines a second the default error hook writes, per endpoint
ERROR_LOG_BURST = 10.0


class _ThrottledLog:
    """The default ``on_error``: a peer's errors to our logger, at most ``rate`` lines
    a second (and each line cut), so a flooding peer cannot fill our disk; what is
    left out is counted and reported with the next line written."""

    def __init__(self, rate: float = ERROR_LOG_RATE, burst: float = ERROR_LOG_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._last = burst, clock()
        self._lock = threading.Lock()
        self.suppressed = 0

    def __call__(self, exc: BaseException) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens < 1:
                self.suppressed += 1
                return
            self._tokens -= 1
            suppressed, self.suppressed = self.suppressed, 0
        more = f" ({suppressed} more not logged)" if suppressed else ""
        log.warning("jsonrpc endpoint: %s%s", repr(exc)[:500], more)


class Endpoint:
    """Both sides of one JSON-RPC connection. Thread-safe.

    ``dispatcher(method, params)`` returns a Future (a plain value is taken as an
    already finished call) or raises; an ``EstarterError`` becomes its own error
    object, anything else an internal error whose details go only to ``on_error``.
    ``send`` is never called concurrently (the endpoint serialises it).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        send: Send,
        id_generator: Iterator[int | str] | None = None,
        on_error: OnError | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._send_fn = send
        self._ids = id_generator if id_generator is not None else itertools.count(1)
        self._on_error = on_error or _ThrottledLog()
        self._lock = threading.Lock()  # state and counters
        self._send_lock = threading.Lock()  # one message on the wire at a time
        self._pending: dict[Any, Future[Any]] = {}
        self._closed: EstarterError | None = None
        self._received = 0
        self._sent = 0
        self._malformed = 0

    # --- outgoing -------------------------------------------------------------

    def request(self, method: str, params: m.Params = None) -> Future[Any]:
        """Send a request; the Future resolves with the result or the typed error.

        Raises ``RuntimeClosed`` after ``close``.
        """
        fut: Future[Any] = Future()
        with self._lock:
            self._check_open()
            msg_id = next(self._ids)
            self._pending[msg_id] = fut
        try:
            self._send(m.request(msg_id, method, params))
        except BaseException:
            with self._lock:
                self._pending.pop(msg_id, None)
            raise
        return fut

    def notify(self, method: str, params: m.Params = None) -> None:
        """Send a notification. Raises ``RuntimeClosed`` after ``close``."""
        with self._lock:
            self._check_open()
        self._send(m.notification(method, params))

    def close(self, error: EstarterError | None = None) -> None:
        """Fail every pending request with ``error`` (``RuntimeClosed`` by default).

        Idempotent; later ``request``/``notify`` raise ``RuntimeClosed``; later
        incoming bodies and answers to calls still running are dropped.
        """
        err = error if error is not None else RuntimeClosed("connection closed")
        with self._lock:
            if self._closed is not None:
                return
            self._closed = err
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def count_answered(self, error: BaseException | None = None) -> None:
        """Count a request its owner received and answered without this endpoint
        (``ProcessHost``'s direct path), in ``received`` and ``sent`` alike;
        ``error``: an unexpected failure it answered with -32603, reported through
        ``on_error`` as a dispatched call's would be."""
        with self._lock:
            self._received += 1
            self._sent += 1
        if error is not None:
            self._on_error(error)

    def statistics(self) -> EndpointStatistics:
        with self._lock:
            return EndpointStatistics(self._received, self._sent, self._malformed,
                                      len(self._pending))

    # --- incoming -------------------------------------------------------------

    def receive(self, body: bytes | str) -> None:
        """Handle one incoming frame body. Never blocks on a dispatched call.

        After ``close`` the body is dropped: a reader may still drain what the
        peer wrote before it went away, and that is not an error.
        """
        with self._lock:
            if self._closed is not None:
                return
            self._received += 1
        parsed = m.parse_body(body)
        if isinstance(parsed, m.Batch):
            self._receive_batch(parsed.items)
        else:
            self._handle(parsed, self._send_quietly)

    def _receive_batch(self, items: tuple[m.Message, ...]) -> None:
        replies: list[Any] = [None] * len(items)
        # One count per item plus one for this loop, so the answer goes out
        # exactly once, after the last item finished, whichever thread that is.
        remaining = [len(items) + 1]
        lock = threading.Lock()

        def done(index: int, reply: Any) -> None:
            with lock:
                if reply is not None:
                    replies[index] = reply
                remaining[0] -= 1
                finished = remaining[0] == 0
            if finished:
                answer = [r for r in replies if r is not None]
                if answer:  # a batch of notifications gets no answer at all
                    self._send_quietly(answer)

        for index, item in enumerate(items):
            self._handle(item, functools.partial(done, index), batched=True)
        done(-1, None)

    def _handle(self, msg: m.Message, reply: Callable[[Any], None], batched: bool = False) -> None:
        """Process one message; call ``reply`` once with the answer (or None if
        there is none) when ``batched``, otherwise only when there is an answer."""
        answer: Any = None
        if isinstance(msg, m.Request):
            self._dispatch(msg.method, msg.params, msg.id, reply)
            return
        if isinstance(msg, m.Notification):
            self._dispatch(msg.method, msg.params, None, None)
        elif isinstance(msg, m.Invalid):
            with self._lock:
                self._malformed += 1
            self._on_error(msg.error)
            if msg.reply:
                answer = m.error_response(msg.id, msg.error)
        else:
            self._resolve(msg)
        if answer is not None or batched:
            reply(answer)

    def _dispatch(
        self, method: str, params: m.Params, msg_id: Any, reply: Callable[[Any], None] | None
    ) -> None:
        try:
            outcome = self._dispatcher(method, params)
        except Exception as exc:  # every failure becomes an answer
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            outcome = failed
        if not isinstance(outcome, Future):
            value, outcome = outcome, Future()
            outcome.set_result(value)

        def finish(fut: Future[Any]) -> None:
            if reply is not None:
                reply(self._answer(msg_id, fut))
            elif not fut.cancelled() and fut.exception() is not None:
                self._on_error(fut.exception())  # type: ignore[arg-type]  # checked just above

        outcome.add_done_callback(finish)

    def _answer(self, msg_id: Any, fut: Future[Any]) -> dict[str, Any]:
        if fut.cancelled():
            return m.error_response(msg_id, InternalError("call cancelled"))
        exc = fut.exception()
        if exc is None:
            return m.response(msg_id, fut.result())
        if isinstance(exc, EstarterError):
            return m.error_response(msg_id, exc)
        self._on_error(exc)
        # The details of an unexpected failure stay on our side (they may hold paths).
        return m.error_response(msg_id, InternalError("Internal error"))

    def _resolve(self, msg: m.Response | m.ErrorResponse) -> None:
        with self._lock:
            fut = self._pending.pop(msg.id, None)
        if fut is None:
            # Nothing waits for it: an answer to no request of ours (pending calls
            # leave only at close, after which nothing is received), or an error
            # about a message the peer could not parse (id null). Malformed either
            # way, so a peer flooding them is ended like any other.
            with self._lock:
                self._malformed += 1
            if isinstance(msg, m.ErrorResponse):
                self._on_error(EstarterError.from_dict(msg.error))
            return
        if isinstance(msg, m.Response):
            fut.set_result(msg.result)
        else:
            fut.set_exception(EstarterError.from_dict(msg.error))

    # --- helpers --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise RuntimeClosed(f"endpoint is closed: {self._closed.message}")

    def _send(self, obj: Any) -> None:
        with self._send_lock:
            self._send_fn(obj)
        with self._lock:
            self._sent += 1

    def _send_quietly(self, obj: Any) -> None:
        """Send an answer; after ``close`` or on a write error it is dropped (the
        caller is a callback on some dispatcher thread, with no one to raise to)."""
        if self._closed is not None:
            return
        try:
            self._send(obj)
        except Exception as exc:  # reported through the hook
            self._on_error(exc)


__all__ = ["Dispatcher", "Endpoint", "EndpointStatistics", "OnError", "Send"]
