"""Inferno's HTTP/1.1 wire layer: a minimal server, a pooled client, SSE helpers.

Built directly on ``asyncio.Protocol`` and ``httptools`` so the proxy's hot path costs
a fraction of a general-purpose framework; see each module for its contract.
"""

from .client import HttpClient, UpstreamResponse, get_json
from .resolve import resolve_all
from .server import BodySink, Handler, HttpServer, Request, Response, StreamingResponse
from .sse import EVENT_ENDS, SSE_DONE, SSEDecoder, last_event_end, sse_event

__all__ = [
    "EVENT_ENDS",
    "SSE_DONE",
    "BodySink",
    "Handler",
    "HttpClient",
    "HttpServer",
    "Request",
    "Response",
    "SSEDecoder",
    "StreamingResponse",
    "UpstreamResponse",
    "get_json",
    "last_event_end",
    "resolve_all",
    "sse_event",
]
