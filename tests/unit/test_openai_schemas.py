from __future__ import annotations

import pytest

from inferno.api.openai import ChatCompletionRequest, CompletionRequest
from inferno.core.errors import InvalidRequest
from inferno.core.validation import parse_request

CHAT_OK = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


def test_valid_chat_request() -> None:
    req = parse_request(ChatCompletionRequest, CHAT_OK)
    assert req.model == "m"
    assert req.messages[0].text() == "hi"
    assert req.token_limit() is None


def test_content_parts_and_limits() -> None:
    body = (b'{"model": "m", "max_tokens": 50, "max_completion_tokens": 20, "messages": '
            b'[{"role": "user", "content": [{"type": "text", "text": "a"}, '
            b'{"type": "text", "text": "b"}]}]}')
    req = parse_request(ChatCompletionRequest, body)
    assert req.messages[0].text() == "ab"
    assert req.token_limit() == 20


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b"{not json", None, id="malformed"),
        pytest.param(b"[1]", None, id="not-object"),
        pytest.param(b'{"messages": [{"role": "user", "content": "x"}]}', "model", id="no-model"),
        pytest.param(b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}', "model",
                     id="model-type"),
        pytest.param(b'{"model": "m", "messages": []}', "messages", id="no-messages"),
        pytest.param(b'{"model": "m", "max_tokens": -5, "messages": [{"role": "user", '
                     b'"content": "x"}]}', "max_tokens", id="negative-max-tokens"),
        pytest.param(b'{"model": "m", "max_tokens": "9", "messages": [{"role": "user", '
                     b'"content": "x"}]}', "max_tokens", id="string-max-tokens"),
        pytest.param(b'{"model": "m", "temperature": 3, "messages": [{"role": "user", '
                     b'"content": "x"}]}', "temperature", id="temperature-range"),
        pytest.param(b'{"model": "m", "n": 9, "messages": [{"role": "user", "content": "x"}]}',
                     "n", id="n-too-many"),
        pytest.param(b'{"model": "m", "stream": "yes", "messages": [{"role": "user", '
                     b'"content": "x"}]}', "stream", id="stream-type"),
        pytest.param(b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}',
                     "messages.0.role", id="bad-role"),
        pytest.param(b'{"model": "m", "stop": ["a","b","c","d","e"], "messages": '
                     b'[{"role": "user", "content": "x"}]}', "stop", id="too-many-stops"),
    ],
)
def test_bad_chat_requests_name_the_param(body: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(ChatCompletionRequest, body)
    err = info.value
    assert err.status_code == 400
    if param is not None:
        assert err.param is not None and err.param.startswith(param)
    assert set(err.to_dict()["error"]) == {"message", "type", "param", "code"}


def test_completion_defaults_to_16_tokens() -> None:
    req = parse_request(CompletionRequest, b'{"model": "m", "prompt": "Once"}')
    assert req.prompt_text() == "Once"
    assert req.token_limit() == 16


def test_response_builders_follow_openai_schemas() -> None:
    from inferno.api import openai as oa
    from tests.openai_schema import check

    call = {"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}
    lp = [{"token": "a", "logprob": -0.1, "bytes": [97],
           "top_logprobs": [{"token": "a", "logprob": -0.1, "bytes": [97]}]}]
    choices = [oa.chat_choice(0, "hi", "stop", logprobs=lp),
               oa.chat_choice(1, None, "tool_calls", tool_calls=[call])]
    check(oa.chat_completion("id", "m", 1, choices, 3, 4), "CreateChatCompletionResponse")
    check(oa.chat_chunk("id", "m", 1, {"tool_calls": [{"index": 0, **call}]}, None, index=1),
          "CreateChatCompletionStreamResponse")
    check(oa.chat_chunk("id", "m", 1, {"content": "a"}, None, logprobs=lp),
          "CreateChatCompletionStreamResponse")
    legacy = {"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": [{"a": -0.1}],
              "text_offset": [0]}
    check(oa.text_completion("id", "m", 1, [oa.text_choice(0, "a", "length", legacy)],
                             oa.usage_dict(1, 1)), "CreateCompletionResponse")
    check(oa.text_completion("id", "m", 1, [oa.text_choice(0, "a", None)], None, chunk=True),
          "CompletionChunk")
