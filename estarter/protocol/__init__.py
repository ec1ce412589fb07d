"""JSON-RPC 2.0 over Content-Length framing: messages, framing, endpoint (no I/O)."""

from estarter.protocol.endpoint import Endpoint, EndpointStatistics
from estarter.protocol.framing import (
    FrameDecoder,
    FramingError,
    HostFrameDecoder,
    encode_frame,
    read_frame,
)
from estarter.protocol.messages import (
    Batch,
    ErrorResponse,
    Invalid,
    Notification,
    Request,
    Response,
    parse_body,
)

__all__ = [
    "Batch",
    "Endpoint",
    "EndpointStatistics",
    "ErrorResponse",
    "FrameDecoder",
    "FramingError",
    "HostFrameDecoder",
    "Invalid",
    "Notification",
    "Request",
    "Response",
    "encode_frame",
    "parse_body",
    "read_frame",
]
