"""The Anthropic Messages and OpenAI Responses APIs over a real proxy and a llama.cpp node
(SmolLM2), driven by the official anthropic and openai clients: plain text, and tool use
and structured output enforced by the node's grammar."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.integration.procs import Proc, backend, node_ids, proxy, wait_until

pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed")
pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PARIS = [{"role": "user", "content": "what is the capital of france?"}]


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("apis")
    lb = proxy(tmp).start()
    node = backend(tmp, "node-0", lb.ops_port, "--parallel", "2").start()
    try:
        wait_until(lambda: node_ids(lb.ops_port) == {"node-0"}, 60, "the node to register",
                   lb, node)
        yield lb
    finally:
        node.stop()
        lb.stop()


def claude(lb: Proc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{lb.port}", api_key="unused",
                               max_retries=0, timeout=60)


def oai(lb: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{lb.port}/v1", api_key="unused",
                         max_retries=0, timeout=60)


def test_messages_create_and_count(lb: Proc) -> None:
    client = claude(lb)
    msg = client.messages.create(model=MODEL, max_tokens=32, system="Answer in one word.",
                                 messages=PARIS, extra_body={"temperature": 0})  # type: ignore[arg-type]
    assert msg.content[0].type == "text" and "Paris" in msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    count = client.messages.count_tokens(model=MODEL, system="Answer in one word.",
                                         messages=PARIS)  # type: ignore[arg-type]
    # The node's own template and tokenizer: exactly what the answer's usage says.
    assert count.input_tokens == msg.usage.input_tokens > 5


def test_messages_stream(lb: Proc) -> None:
    with claude(lb).messages.stream(model=MODEL, max_tokens=32, messages=PARIS,  # type: ignore[arg-type]
                                    extra_body={"temperature": 0}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "Paris" in text
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.input_tokens > 5 and final.usage.output_tokens > 0


def test_responses_create_stream_and_chain(lb: Proc) -> None:
    client = oai(lb)
    first = client.responses.create(model=MODEL, input=PARIS[0]["content"], temperature=0,
                                    max_output_tokens=32)
    assert "Paris" in first.output_text and first.status in ("completed", "incomplete")
    with client.responses.stream(model=MODEL, input="And of Italy?", temperature=0,
                                 max_output_tokens=32, previous_response_id=first.id) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed",
                                                            "response.incomplete")
    assert final.output_text and final.usage is not None
    # The chained turn carried the first exchange: more prompt than the question alone.
    assert first.usage is not None and final.usage.input_tokens > first.usage.input_tokens
    assert client.responses.retrieve(final.id).output_text == final.output_text


WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"type": "string",
                                                     "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}


def test_messages_tool_use_is_forced_by_the_node_grammar(lb: Proc) -> None:
    # tool_choice "any" becomes chat "required": the node's grammar makes the tiny model
    # produce a valid call, which comes back as an Anthropic tool_use block.
    msg = claude(lb).messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"name": "get_weather", "description": "Current weather for a city.",
                "input_schema": WEATHER}],
        tool_choice={"type": "any"})
    assert msg.stop_reason == "tool_use"
    [call] = [b for b in msg.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id  # the node's call id, round-tripped
    assert isinstance(call.input, dict) and set(call.input) == {"city", "unit"}
    assert call.input["unit"] in ("celsius", "fahrenheit")


def test_responses_structured_output_is_valid_json(lb: Proc) -> None:
    import json

    resp = oai(lb).responses.create(
        model=MODEL, input="Describe the weather in Paris.", max_output_tokens=64,
        text={"format": {"type": "json_schema", "name": "weather", "schema": WEATHER,
                         "strict": True}})
    data = json.loads(resp.output_text)  # the grammar makes the tiny model's JSON valid
    assert set(data) == {"city", "unit"} and data["unit"] in ("celsius", "fahrenheit")
