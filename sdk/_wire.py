"""Content-Length framing of JSON-RPC messages (the LSP / StreamJsonRpc format).

A frame is ``Content-Length: N\\r\\n`` (optionally ``Content-Type: ...\\r\\n``),
an empty line, then N bytes of UTF-8 JSON. This is the one implementation: the
SDK uses it directly and ``estarter.protocol.framing`` re-exports it. It imports
only the standard library because it runs inside sandboxes where only ``sdk/``
is mounted.

Every limit is checked on the header, before any body byte is kept, so a peer
that announces a huge message costs us nothing but the header.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing is not imported at run time (app start-up time)
if TYPE_CHECKING:
    from typing import IO, Any

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_HEADER = 8 * 1024

_TERMINATOR = b"\r\n\r\n"


class FramingError(ValueError):
    """The byte stream is not valid Content-Length framing, or breaks a size limit.

    The stream cannot be resynchronised after this: the caller must drop the peer.
    """


def encode_frame(obj: Any) -> bytes:
    """One frame holding ``obj`` as compact UTF-8 JSON."""
    return frame_body(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def frame_body(body: bytes) -> bytes:
    """One frame holding ``body``, already encoded JSON."""
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def parse_header(block: bytes, max_size: int = DEFAULT_MAX_SIZE) -> int:
    """The body length announced by a header block (without the final empty line).

    Header names are case-insensitive; ``Content-Length`` is required exactly once,
    ``Content-Type`` and other well-formed headers are ignored.
    """
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError:
        raise FramingError("frame header is not ASCII") from None
    length: int | None = None
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or " " in name or "\n" in line or "\r" in line:
            raise FramingError(f"malformed frame header line {line[:80]!r}")
        if name.lower() != "content-length":
            continue
        if length is not None:
            raise FramingError("duplicate Content-Length header")
        value = value.strip()
        # isdigit() alone would accept non-ASCII digits; the block is ASCII here.
        if not value.isdigit() or len(value) > 12:
            raise FramingError(f"invalid Content-Length {value[:20]!r}")
        length = int(value)
    if length is None:
        raise FramingError("frame header has no Content-Length")
    if length > max_size:
        raise FramingError(f"frame of {length} bytes is above the limit of {max_size} bytes")
    return length


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get complete bodies back.

    Memory is bounded by ``max_header + max_size`` plus the size of one ``feed``.
    After a ``FramingError`` the decoder stays broken and raises again.
    """

    __slots__ = ("_buf", "_error", "_need", "_scanned", "max_header", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, max_header: int = DEFAULT_MAX_HEADER):
        self.max_size = max_size
        self.max_header = max_header
        self._buf = bytearray()
        self._need: int | None = None  # body length once the header is parsed
        self._scanned = 0  # header bytes already searched for the terminator
        self._error: FramingError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the bodies of every frame it completes, in order."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except FramingError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        bodies: list[bytes] = []
        while True:
            if self._need is None:
                # Resume the search a little before where it stopped, in case the
                # terminator was split between two feeds.
                end = buf.find(_TERMINATOR, max(0, self._scanned - 3))
                if end < 0:
                    if len(buf) > self.max_header:
                        raise FramingError(f"frame header above {self.max_header} bytes")
                    self._scanned = len(buf)
                    return bodies
                if end > self.max_header:
                    raise FramingError(f"frame header above {self.max_header} bytes")
                self._need = parse_header(bytes(buf[:end]), self.max_size)
                del buf[: end + len(_TERMINATOR)]
                self._scanned = 0
            if len(buf) < self._need:
                return bodies
            bodies.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = None

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def at_boundary(self) -> bool:
        """True if no partial frame is held (an end of stream here is clean)."""
        return self._need is None and not self._buf


def read_frame(
    stream: IO[bytes], max_size: int = DEFAULT_MAX_SIZE, max_header: int = DEFAULT_MAX_HEADER
) -> bytes | None:
    """Block until one whole frame is read from a binary stream; return its body.

    Returns None on a clean end of stream (before any header byte); raises
    ``FramingError`` on bad framing or an end of stream inside a frame.
    """
    header = bytearray()
    while True:
        line = stream.readline(max_header + 1 - len(header))
        if not line:
            if header:
                raise FramingError("end of stream inside a frame header")
            return None
        header += line
        if len(header) > max_header:
            raise FramingError(f"frame header above {max_header} bytes")
        if line == b"\r\n":
            if len(header) == 2:
                raise FramingError("frame header is empty")
            break
        if not line.endswith(b"\n"):
            raise FramingError("end of stream inside a frame header")
    need = parse_header(bytes(header[:-4]), max_size)
    body = bytearray()
    while len(body) < need:
        chunk = stream.read(need - len(body))
        if not chunk:
            raise FramingError(f"end of stream after {len(body)} of {need} body bytes")
        body += chunk
    return bytes(body)


__all__ = [
    "DEFAULT_MAX_HEADER",
    "DEFAULT_MAX_SIZE",
    "FrameDecoder",
    "FramingError",
    "encode_frame",
    "frame_body",
    "parse_header",
    "read_frame",
]
