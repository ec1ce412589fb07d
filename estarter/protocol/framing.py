"""Content-Length framing for the host side.

The implementation lives in ``sdk._wire`` (stdlib only, so apps can use it in a
sandbox); this module re-exports it and maps its ``FramingError`` to
``estarter.errors.ProtocolViolation``, the error that ends an app.
"""

from __future__ import annotations

from estarter.errors import ProtocolViolation
from sdk._wire import (
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_SIZE,
    FrameDecoder,
    FramingError,
    encode_frame,
    read_frame,
)


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


__all__ = [
    "DEFAULT_MAX_HEADER",
    "DEFAULT_MAX_SIZE",
    "FrameDecoder",
    "FramingError",
    "HostFrameDecoder",
    "encode_frame",
    "read_frame",
    "violation",
]
