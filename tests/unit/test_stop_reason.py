"""Which stop string ended a choice: the node names it (``stop_reason``, as vLLM does), and
the Messages API turns it into ``stop_reason: stop_sequence`` with the sequence."""

from __future__ import annotations

import anthropic
import httpx2 as httpx

from inferno.proxy.gateway import Gateway
from tests.conftest import start_fake_node
from tests.polling import eventually

# The fake engine's words for this prompt, in order (deterministic): see engines/fake.py.
PROMPT = [{"role": "user", "content": "hi"}]


async def test_the_node_names_the_stop_string_and_messages_report_it(gateway: Gateway) -> None:
    node = await start_fake_node(discovery_lb=f"127.0.0.1:{gateway.ops.port}")
    base = f"http://127.0.0.1:{gateway.server.port}"
    try:
        await eventually(lambda: "fake-model" in gateway.pool.snapshot.models,
                         what="the node registered")
        async with httpx.AsyncClient(timeout=10) as http:
            plain = await http.post(f"{base}/v1/chat/completions", json={
                "model": "fake-model", "max_tokens": 8, "messages": PROMPT})
            words = plain.json()["choices"][0]["message"]["content"].split()
            assert len(words) == 8 and "stop_reason" not in plain.json()["choices"][0]
            stop = words[3]  # a word the answer surely reaches
            body = {"model": "fake-model", "max_tokens": 8, "messages": PROMPT,
                    "stop": ["never-there", stop]}
            r = await http.post(f"{base}/v1/chat/completions", json=body)
            choice = r.json()["choices"][0]
            assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
            assert stop not in choice["message"]["content"]
            streamed = await http.post(f"{base}/v1/chat/completions",
                                       json={**body, "stream": True})
            assert f'"stop_reason":"{stop}"' in streamed.text

        client = anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0)
        msg = await client.messages.create(model="fake-model", max_tokens=8, messages=PROMPT,
                                           stop_sequences=[stop])
        assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", stop)
        async with client.messages.stream(model="fake-model", max_tokens=8, messages=PROMPT,
                                          stop_sequences=[stop]) as s:
            final = await s.get_final_message()
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
        await client.close()
    finally:
        await node.drain()
