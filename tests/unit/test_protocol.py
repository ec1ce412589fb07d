"""Framing, JSON-RPC 2.0 messages and the Endpoint (every example of spec section 7)."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from estarter import errors
from estarter.errors import (
    EstarterError,
    InvalidParams,
    MethodNotFound,
    PermissionDenied,
    ProtocolViolation,
    RuntimeClosed,
)
from estarter.protocol import messages as m
from estarter.protocol.endpoint import Endpoint, EndpointStatistics
from estarter.protocol.framing import (
    FrameDecoder,
    FramingError,
    HostFrameDecoder,
    encode_frame,
    read_frame,
)

# --- framing -----------------------------------------------------------------


def test_encode_frame_is_compact_utf8() -> None:
    frame = encode_frame({"a": "é", "b": [1, 2]})
    body = '{"a":"é","b":[1,2]}'.encode()
    assert frame == b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_decoder_byte_by_byte() -> None:
    frames = encode_frame({"x": 1}) + encode_frame({"y": "ü" * 10})
    dec = FrameDecoder()
    bodies: list[bytes] = []
    for i in range(len(frames)):
        bodies += dec.feed(frames[i : i + 1])
    assert [json.loads(b) for b in bodies] == [{"x": 1}, {"y": "ü" * 10}]
    assert dec.at_boundary()


def test_decoder_several_frames_in_one_feed_and_split_tail() -> None:
    data = b"".join(encode_frame(i) for i in range(5)) + encode_frame("tail")
    dec = FrameDecoder()
    assert [json.loads(b) for b in dec.feed(data[:-3])] == [0, 1, 2, 3, 4]
    assert not dec.at_boundary()
    assert dec.feed(data[-3:]) == [b'"tail"']


def test_decoder_accepts_content_type_and_any_header_case() -> None:
    body = b'{"ok":true}'
    data = (b"content-type: application/vscode-jsonrpc; charset=utf-8\r\n"
            b"CONTENT-LENGTH:  %d \r\n\r\n" % len(body)) + body
    assert FrameDecoder().feed(data) == [body]


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length 5\r\n\r\n",  # no colon
        b"Content-Type: x\r\n\r\n",  # no Content-Length
        b"Content-Length: -5\r\n\r\n",
        b"Content-Length: abc\r\n\r\n",
        b"Content-Length: 5.0\r\n\r\n",
        b"Content-Length: \r\n\r\n",
        b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"Content-Length: \xd9\xa5\r\n\r\n",  # a non-ASCII digit
        b"\r\n\r\n",
        b"hello world\nContent-Length: 5\r\n\r\n",  # a stray print before the header
    ],
)
def test_decoder_rejects_bad_headers(header: bytes) -> None:
    dec = FrameDecoder()
    with pytest.raises(FramingError):
        dec.feed(header + b"12345")
    with pytest.raises(FramingError):  # stays broken: the stream cannot resynchronise
        dec.feed(encode_frame(1))


def test_oversize_frame_rejected_on_the_header_without_buffering() -> None:
    dec = FrameDecoder(max_size=1024)
    with pytest.raises(FramingError, match="above the limit"):
        dec.feed(b"Content-Length: 100000000\r\n\r\n")
    assert dec.buffered == 0
    assert FrameDecoder(max_size=1024).feed(b"Content-Length: 1024\r\n\r\n") == []


def test_header_above_max_header_rejected() -> None:
    dec = FrameDecoder(max_header=64)
    with pytest.raises(FramingError, match="header above"):
        for _ in range(100):  # no terminator ever comes
            dec.feed(b"X-Padding: yyyyyyyy\r\n")
    assert dec.buffered == 0
    with pytest.raises(FramingError, match="header above"):
        FrameDecoder(max_header=64).feed(b"X: " + b"y" * 100 + b"\r\n\r\n")


def test_host_decoder_raises_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        HostFrameDecoder().feed(b"garbage\r\n\r\n")
    assert issubclass(FramingError, ValueError)


def test_read_frame() -> None:
    stream = io.BytesIO(encode_frame({"a": 1}) + encode_frame([2]))
    assert read_frame(stream) == b'{"a":1}'
    assert read_frame(stream) == b"[2]"
    assert read_frame(stream) is None  # clean end of stream
    with pytest.raises(FramingError):
        read_frame(io.BytesIO(b"Content-Length: 10\r\n\r\nabc"))
    with pytest.raises(FramingError):
        read_frame(io.BytesIO(b"Content-Length: 10\r\n"))
    with pytest.raises(FramingError):
        read_frame(io.BytesIO(b"Content-Length: 99\r\n\r\n"), max_size=10)
    with pytest.raises(FramingError):
        read_frame(io.BytesIO(b"X: " + b"y" * 100 + b"\r\n\r\n"), max_header=64)


# --- error codes ---------------------------------------------------------------


def test_error_codes_match_the_jsonrpc_spec() -> None:
    assert errors.PARSE_ERROR == errors.ParseError.code == -32700
    assert errors.INVALID_REQUEST == errors.InvalidRequest.code == -32600
    assert errors.METHOD_NOT_FOUND == errors.MethodNotFound.code == -32601
    assert errors.INVALID_PARAMS == errors.InvalidParams.code == -32602
    assert errors.INTERNAL_ERROR == errors.InternalError.code == -32603


# --- the fake peer ----------------------------------------------------------------


class FakeDispatcher:
    """The methods of the spec's examples; records notifications."""

    def __init__(self) -> None:
        self.notified: list[tuple[str, Any]] = []

    def __call__(self, method: str, params: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        if method == "subtract":
            if isinstance(params, list):
                fut.set_result(params[0] - params[1])
            elif isinstance(params, dict):
                fut.set_result(params["minuend"] - params["subtrahend"])
            else:
                raise InvalidParams("Invalid params")
        elif method == "sum":
            fut.set_result(sum(params))
        elif method == "get_data":
            fut.set_result(["hello", 5])
        elif method in ("update", "notify_hello", "notify_sum"):
            self.notified.append((method, params))
            fut.set_result(None)
        else:
            raise MethodNotFound("Method not found")
        return fut


class Wire:
    """Collects what the endpoint sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.cond = threading.Condition()

    def __call__(self, obj: Any) -> None:
        json.dumps(obj)  # everything sent must be JSON
        with self.cond:
            self.sent.append(obj)
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float = 5.0) -> list[Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.sent) >= n, timeout), self.sent
            return list(self.sent)


def _strip_data(obj: Any) -> Any:
    """Error ``data`` is optional detail; the spec's examples have none."""
    if isinstance(obj, list):
        return [_strip_data(o) for o in obj]
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return {**obj, "error": {k: v for k, v in obj["error"].items() if k != "data"}}
    return obj


def _exchange(text: str) -> Any:
    """Feed one body to a fresh endpoint; return its single answer or None."""
    wire = Wire()
    Endpoint(FakeDispatcher(), wire).receive(text.encode())
    assert len(wire.sent) <= 1
    return _strip_data(wire.sent[0]) if wire.sent else None


def _err(code: int, message: str, msg_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": msg_id}


# --- spec section 7, example by example ---------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "answer"),
    [
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
         {"jsonrpc": "2.0", "result": 19, "id": 1}),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
         {"jsonrpc": "2.0", "result": -19, "id": 2}),
        ('{"jsonrpc": "2.0", "method": "subtract", '
         '"params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
         {"jsonrpc": "2.0", "result": 19, "id": 3}),
        ('{"jsonrpc": "2.0", "method": "subtract", '
         '"params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
         {"jsonrpc": "2.0", "result": 19, "id": 4}),
        ('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
        ('{"jsonrpc": "2.0", "method": "foobar"}', None),
        ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
         _err(-32601, "Method not found", "1")),
        ('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
         _err(-32700, "Parse error")),
        ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
         _err(-32600, "Invalid Request")),
        ('[\n  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n'
         '  {"jsonrpc": "2.0", "method"\n]',
         _err(-32700, "Parse error")),
        ("[]", _err(-32600, "Invalid Request")),
        ("[1]", [_err(-32600, "Invalid Request")]),
        ("[1,2,3]", [_err(-32600, "Invalid Request")] * 3),
        ('[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
         ' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]', None),
    ],
)
def test_spec_examples(request_text: str, answer: Any) -> None:
    assert _exchange(request_text) == answer


def test_spec_mixed_batch() -> None:
    text = """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""
    assert _exchange(text) == [
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        _err(-32600, "Invalid Request"),
        _err(-32601, "Method not found", "5"),
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
    ]


def test_notifications_are_dispatched_without_answer() -> None:
    disp, wire = FakeDispatcher(), Wire()
    Endpoint(disp, wire).receive(b'{"jsonrpc": "2.0", "method": "update", "params": [1,2]}')
    assert disp.notified == [("update", [1, 2])]
    assert wire.sent == []


# --- message validation beyond the examples -------------------------------------------


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"jsonrpc": "2.0", "method": "a", "id": 1}, m.Request),
        ({"jsonrpc": "2.0", "method": "a"}, m.Notification),
        ({"jsonrpc": "2.0", "result": None, "id": 1}, m.Response),
        ({"jsonrpc": "2.0", "error": {"code": 1, "message": "x"}, "id": None}, m.ErrorResponse),
        ({"jsonrpc": "1.0", "method": "a", "id": 1}, m.Invalid),
        ({"method": "a", "id": 1}, m.Invalid),
        ({"jsonrpc": "2.0", "method": "a", "id": 1.5}, m.Invalid),
        ({"jsonrpc": "2.0", "method": "a", "id": True}, m.Invalid),
        ({"jsonrpc": "2.0", "method": "a", "id": {}}, m.Invalid),
        ({"jsonrpc": "2.0", "method": "a", "params": 3, "id": 1}, m.Invalid),
        ({"jsonrpc": "2.0", "result": 1, "error": {"code": 1, "message": "x"}, "id": 1},
         m.Invalid),
        ({"jsonrpc": "2.0", "error": {"code": "x", "message": "x"}, "id": 1}, m.Invalid),
        ({"jsonrpc": "2.0", "result": 1}, m.Invalid),
    ],
)
def test_parse_one(obj: Any, kind: type) -> None:
    assert isinstance(m.parse_one(obj), kind)


def test_invalid_request_keeps_a_valid_id_and_broken_responses_get_no_answer() -> None:
    assert _exchange('{"jsonrpc": "2.0", "method": 5, "id": 7}')["id"] == 7
    assert _exchange('{"jsonrpc": "2.0", "result": 1, "error": {}, "id": 3}') is None


def test_builders_use_error_to_dict() -> None:
    err = PermissionDenied.for_permission("fs.write")
    assert m.error_response(3, err) == {"jsonrpc": "2.0", "id": 3, "error": err.to_dict()}
    assert m.request(1, "a") == {"jsonrpc": "2.0", "id": 1, "method": "a"}
    assert m.notification("log", {"x": 1})["params"] == {"x": 1}


# --- the endpoint ------------------------------------------------------------------------


def test_request_resolves_with_result_and_typed_error() -> None:
    wire = Wire()
    ep = Endpoint(FakeDispatcher(), wire)
    ok, bad = ep.request("system.ping", {}), ep.request("fs.write", {"path": "/x"})
    assert [s["id"] for s in wire.sent] == [1, 2]
    assert ep.statistics().pending == 2
    ep.receive(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"pong": True}}).encode())
    ep.receive(json.dumps({"jsonrpc": "2.0", "id": 2, "error":
                           PermissionDenied.for_permission("fs.write").to_dict()}).encode())
    assert ok.result(timeout=5) == {"pong": True}
    exc = bad.exception(timeout=5)
    assert isinstance(exc, PermissionDenied) and exc.data == {"permission": "fs.write"}
    assert ep.statistics() == EndpointStatistics(received=2, sent=2, malformed=0, pending=0)


def test_answers_sent_when_futures_finish_on_other_threads() -> None:
    futures: list[Future[Any]] = []

    def dispatcher(method: str, params: Any) -> Future[Any]:
        futures.append(Future())
        return futures[-1]

    wire = Wire()
    ep = Endpoint(dispatcher, wire)
    ep.receive(b'[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b","id":2}]')
    ep.receive(b'{"jsonrpc":"2.0","method":"c","id":3}')
    assert wire.sent == []
    threads = [
        threading.Thread(target=futures[2].set_result, args=("c",)),
        threading.Thread(target=futures[1].set_exception, args=(PermissionDenied("no"),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert wire.wait_count(1) == [{"jsonrpc": "2.0", "result": "c", "id": 3}]
    futures[0].set_result("a")  # the batch goes out once its last item is done
    sent = wire.wait_count(2)
    assert sent[1] == [
        {"jsonrpc": "2.0", "result": "a", "id": 1},
        {"jsonrpc": "2.0", "error": {"code": -32001, "message": "no"}, "id": 2},
    ]


def test_unexpected_errors_become_safe_internal_errors() -> None:
    seen: list[BaseException] = []

    def dispatcher(method: str, params: Any) -> Any:
        if method == "boom":
            raise RuntimeError("secret /etc/path")
        fut: Future[Any] = Future()
        fut.set_exception(KeyError("note"))
        return fut

    wire = Wire()
    ep = Endpoint(dispatcher, wire, on_error=seen.append)
    ep.receive(b'{"jsonrpc":"2.0","method":"boom","id":1}')
    ep.receive(b'{"jsonrpc":"2.0","method":"note"}')  # error swallowed, reported
    assert wire.sent == [_err(-32603, "Internal error", 1)]
    assert [type(e) for e in seen] == [RuntimeError, KeyError]


def test_plain_values_from_the_dispatcher_are_answers() -> None:
    wire = Wire()
    Endpoint(lambda method, params: {"echo": params}, wire).receive(
        b'{"jsonrpc":"2.0","method":"x","params":[1],"id":"a"}')
    assert wire.sent == [{"jsonrpc": "2.0", "result": {"echo": [1]}, "id": "a"}]


def test_malformed_messages_are_counted() -> None:
    ep = Endpoint(FakeDispatcher(), Wire(), on_error=lambda exc: None)
    ep.receive(b"not json")
    ep.receive(b"[1, 2]")
    ep.receive(b"[]")
    ep.receive(b'{"jsonrpc":"2.0","method":"sum","params":[1],"id":1}')
    stats = ep.statistics()
    assert (stats.received, stats.malformed, stats.sent) == (4, 4, 4)


def test_close_fails_pending_requests_and_later_use() -> None:
    wire = Wire()
    ep = Endpoint(FakeDispatcher(), wire, id_generator=iter(["a", "b"]))
    first, second = ep.request("x"), ep.request("y")
    ep.close(ProtocolViolation("too many malformed messages"))
    ep.close()  # idempotent
    for fut in (first, second):
        assert isinstance(fut.exception(timeout=5), ProtocolViolation)
    assert ep.closed and ep.statistics().pending == 0
    with pytest.raises(RuntimeClosed):
        ep.request("z")
    with pytest.raises(RuntimeClosed):
        ep.notify("z")
    ep.receive(b'{"jsonrpc":"2.0","method":"sum","params":[1],"id":1}')  # drained, dropped
    assert wire.sent == [{"jsonrpc": "2.0", "id": "a", "method": "x"},
                         {"jsonrpc": "2.0", "id": "b", "method": "y"}]


def test_close_default_error_and_late_answers_dropped() -> None:
    pending: Future[Any] = Future()
    wire = Wire()
    ep = Endpoint(lambda method, params: pending, wire)
    ep.receive(b'{"jsonrpc":"2.0","method":"slow","id":1}')
    out = ep.request("x")
    ep.close()
    assert isinstance(out.exception(timeout=5), RuntimeClosed)
    pending.set_result(1)
    assert wire.sent == [{"jsonrpc": "2.0", "id": 1, "method": "x"}]


def test_unmatched_answers_go_to_on_error_and_count_as_malformed() -> None:
    seen: list[BaseException] = []
    ep = Endpoint(FakeDispatcher(), Wire(), on_error=seen.append)
    ep.receive(b'{"jsonrpc":"2.0","result":1,"id":99}')  # nobody asked: not logged
    ep.receive(b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}')
    assert [type(e) for e in seen] == [errors.ParseError]
    # An answer to no request of ours is counted, so a flood of them ends the peer.
    assert ep.statistics().malformed == 2


def test_send_failure_in_request_is_raised_and_not_left_pending() -> None:
    def send(obj: Any) -> None:
        raise BrokenPipeError

    ep = Endpoint(FakeDispatcher(), send)
    with pytest.raises(BrokenPipeError):
        ep.request("x")
    assert ep.statistics().pending == 0


def test_estarter_error_round_trip() -> None:
    err = EstarterError.from_dict({"code": -32601, "message": "m"})
    assert isinstance(err, MethodNotFound)
