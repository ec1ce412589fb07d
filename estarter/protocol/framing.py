"""Content-Length framing for the host side.

The implementation lives in ``sdk._wire`` (stdlib only, so apps can use it in a
sandbox); this module re-exports it and maps its ``FramingError`` to
``estarter.errors.ProtocolViolation``, the error that ends an app. It adds
``StdoutSplitter``: a hosted app's stdout is frames *and* plain text.
"""

from __future__ import annotations

from estarter.errors import ProtocolViolation
from sdk._wire import (
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_SIZE,
    FrameDecoder,
    FramingError,
    encode_frame,
    frame_body,
    parse_header,
    read_frame,
)

# What a frame header may begin with (case-insensitive): LSP allows Content-Type first.
_HEADER_STARTS = (b"content-length:", b"content-type:")
_TERMINATOR = b"\r\n\r\n"


def violation(exc: FramingError) -> ProtocolViolation:
    """The ``ProtocolViolation`` to end an app with for a framing error."""
    return ProtocolViolation(f"bad framing: {exc}")


class HostFrameDecoder(FrameDecoder):
    """A ``FrameDecoder`` that raises ``ProtocolViolation`` instead of ``FramingError``."""

    __slots__ = ()

    def feed(self, data: bytes) -> list[bytes]:
        try:
            return super().feed(data)
        except FramingError as exc:
            raise violation(exc) from exc


class StdoutSplitter:
    """A hosted app's stdout cut into frame bodies and lines of text.

    Between frames, bytes that begin with ``Content-Length:`` or ``Content-Type:``
    (any case) start a frame and are held to every framing rule (header size, body
    size, header syntax: a ``FramingError`` ends the app as before). Anything else
    up to a newline is a line of app text (a shell's ``echo``, a ``print()`` before
    the SDK connected); a line without a newline is cut every ``max_line`` bytes.
    Text is only *returned*: the caller spends the app's log budget on it, so text
    costs an app what stderr costs it. Memory is bounded like ``FrameDecoder``'s
    (``max_header + max_size``, or ``max_line``, plus one ``feed``). After a
    ``FramingError`` the splitter stays broken and raises again.
    """

    __slots__ = ("_buf", "_error", "_need", "max_header", "max_line", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, max_header: int = DEFAULT_MAX_HEADER,
                 max_line: int = 8192) -> None:
        self.max_size, self.max_header, self.max_line = max_size, max_header, max_line
        self._buf = bytearray()
        self._need: int | None = None  # body bytes still to come once a header is read
        self._error: FramingError | None = None

    def feed(self, data: bytes, bodies: list[bytes], text: list[bytes]) -> None:
        """Append ``data``; append the frame bodies and text lines it completes to
        ``bodies`` and ``text``, each in order (their relative order is not kept: they
        go to different places). On a ``FramingError``, what came before the bad
        frame is appended already (the app's last words are logged).
        """
        if self._error is not None:
            raise self._error
        try:
            self._feed(data, bodies, text)
        except FramingError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def finish(self) -> list[bytes]:
        """At end of stream: the text left without a newline (a partial frame is dropped)."""
        rest = bytes(self._buf) if self._need is None and self._error is None else b""
        self._buf.clear()
        return [rest] if rest and not rest[:15].lower().startswith(_HEADER_STARTS) else []

    def _feed(self, data: bytes, bodies: list[bytes], text: list[bytes]) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                if self._need is not None:
                    if len(buf) - pos < self._need:
                        break
                    bodies.append(bytes(buf[pos:pos + self._need]))
                    pos += self._need
                    self._need = None
                    continue
                head = bytes(buf[pos:pos + 15]).lower()
                if head.startswith(_HEADER_STARTS):
                    end = buf.find(_TERMINATOR, pos, pos + self.max_header + 4)
                    if end < 0:
                        if len(buf) - pos > self.max_header:
                            raise FramingError(f"frame header above {self.max_header} bytes")
                        break
                    self._need = parse_header(bytes(buf[pos:end]), self.max_size)
                    pos = end + len(_TERMINATOR)
                    continue
                if _maybe_header(head):  # could still become a header: wait for more
                    break
                nl = buf.find(b"\n", pos, pos + self.max_line + 1)
                if nl < 0:
                    if len(buf) - pos < self.max_line:
                        break
                    text.append(bytes(buf[pos:pos + self.max_line]))
                    pos += self.max_line
                    continue
                line = bytes(buf[pos:nl])
                text.append(line[:-1] if line.endswith(b"\r") else line)
                pos = nl + 1
        finally:
            del buf[:pos]


def _maybe_header(head: bytes) -> bool:
    """True if ``head`` (fewer bytes than a header name) could begin a frame header."""
    head = head.lower()
    return any(len(head) < len(start) and start.startswith(head) for start in _HEADER_STARTS)


__all__ = [
    "DEFAULT_MAX_HEADER",
    "DEFAULT_MAX_SIZE",
    "FrameDecoder",
    "FramingError",
    "HostFrameDecoder",
    "StdoutSplitter",
    "encode_frame",
    "frame_body",
    "read_frame",
    "violation",
]
