"""What the APIs served by translation (Anthropic Messages, Responses) share: how they
reach the chat-completions pipeline, and how they read its answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from inferno.core.errors import UpstreamProtocolError
from inferno.net import Request, Response, StreamingResponse

# Serves a chat-completions body through the proxy's pipeline (auth, limits, cache,
# routing, request log), logged under the route given: ProxyAPI.chat.
Chat = Callable[[Request, str, dict[str, Any]], Awaitable[Response | StreamingResponse]]


def read_answer(resp: Response) -> dict[str, Any]:
    """A node's 200 chat completion; a body that is not one is the node's fault (502)."""
    try:
        answer = orjson.loads(resp.body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError("The node's answer was not valid JSON.") from exc
    if not isinstance(answer, dict):
        raise UpstreamProtocolError("The node's answer was not a chat completion.")
    return answer
