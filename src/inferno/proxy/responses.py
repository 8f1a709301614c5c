"""The OpenAI Responses API (``/v1/responses``), served by translating to chat completions.

Create turns the request (``instructions``, ``input``, and with ``previous_response_id``
the stored conversation before it) into one chat-completions request sent through the
proxy's usual pipeline (auth, limits, routing, request log under ``/v1/responses``), and
its answer into a response object or Responses stream events
(:mod:`inferno.proxy.responses_stream`). With ``store`` (default true) the response is
kept per API key (:mod:`inferno.proxy.responses_store`: readable the moment the create
call answers), and retrieve, delete and ``input_items`` see only the caller's own.
``instructions`` apply to their own request only, as OpenAI's do: the chained conversation
carries the messages, not the instructions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from inferno.api import responses as rs
from inferno.core.errors import InvalidRequest, MethodNotAllowed, NotFound
from inferno.core.validation import parse_request
from inferno.net import Request, Response, StreamingResponse
from inferno.proxy import responses_translate as tr
from inferno.proxy.responses_store import ResponseStore
from inferno.proxy.responses_stream import ResponsesStream
from inferno.proxy.translated import Chat, read_answer
from inferno.store import StoredResponse

Owner = Callable[[Request], "str | None"]
RESPONSES = "/v1/responses"
_MAX_LIST = 100


class ResponsesAPI:
    def __init__(self, chat: Chat, owner: Owner, store: ResponseStore) -> None:
        self._chat = chat  # serves a chat-completions body through the proxy's pipeline
        self._owner = owner
        self._store = store

    async def handle(self, req: Request, path: str) -> Response | StreamingResponse:
        if path == RESPONSES:
            if req.method != "POST":
                raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use POST.")
            return await self._create(req)
        rid, _, sub = path.removeprefix(RESPONSES + "/").partition("/")
        if not path.startswith(RESPONSES + "/") or not rid or sub not in ("", "input_items"):
            raise NotFound(f"Unknown route {req.method} {path}.")
        owner = self._owner(req) or ""
        allowed = ("GET", "DELETE") if not sub else ("GET",)
        if req.method not in allowed:
            raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use "
                                   f"{' or '.join(allowed)}.")
        if req.method == "DELETE":
            if not await self._store.delete(owner, rid):
                raise _missing(rid)
            return Response.json({"id": rid, "object": "response.deleted", "deleted": True})
        stored = await self._store.get(owner, rid)
        if stored is None:
            raise _missing(rid)
        if not sub:
            return Response.json(stored.body)
        return Response.json(_listing(stored.input_items, req.query))

    async def _create(self, req: Request) -> Response | StreamingResponse:
        rreq = parse_request(rs.ResponsesRequest, req.body)
        tr.refuse_unsupported(rreq)
        owner = self._owner(req) or ""
        history: list[dict[str, Any]] = []
        if rreq.previous_response_id:
            prev = await self._store.get(owner, rreq.previous_response_id)
            if prev is None:
                raise _missing(rreq.previous_response_id, param="previous_response_id")
            history = prev.messages
        turn, items = tr.turn_messages(rreq)
        if not turn:
            raise InvalidRequest("Missing required parameter: 'input'.", param="input")
        system = [{"role": "system", "content": rreq.instructions}] if rreq.instructions \
            else []
        chat = tr.chat_options(rreq)
        chat["messages"] = [*system, *history, *turn]
        store = rreq.store is not False
        rid = tr.new_id("resp_")
        base = {"id": rid, "object": "response", "created_at": int(time.time()),
                **tr.echo(rreq, store)}

        async def keep(body: dict[str, Any], reply: dict[str, Any]) -> None:
            if store:
                await self._store.put(StoredResponse(
                    id=rid, owner=owner, body=body, input_items=items,
                    messages=[*history, *turn, reply], created_at=time.time()))

        resp = await self._chat(req, RESPONSES, chat)
        if resp.status != 200:
            return resp  # the pipeline's or node's OpenAI error body is this API's too
        if isinstance(resp, StreamingResponse):
            resp.chunks = ResponsesStream(resp.chunks, base, keep)
            return resp
        answer = read_answer(resp)
        output, reply, finish = tr.output_from_chat(answer)
        usage = answer.get("usage") or {}
        body = tr.finished(base, output, finish, int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0))
        await keep(body, reply)
        return Response(200, orjson.dumps(body), headers=resp.headers)


def _missing(rid: str, param: str | None = None) -> NotFound:
    return NotFound(f"Response with id '{rid}' not found.", param=param)


def _listing(items: list[dict[str, Any]], query: str) -> dict[str, Any]:
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': expected 'asc' or 'desc'.",
                             param="order")
    limit_text = params.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_LIST:
        raise InvalidRequest(f"Invalid value for 'limit': expected 1 to {_MAX_LIST}.",
                             param="limit")
    ordered = items if order == "asc" else items[::-1]
    after = params.get("after")
    if after:
        ids = [i.get("id") for i in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    page = ordered[:int(limit_text)]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ordered) > len(page)}
