"""POST /v1/embeddings on a node: the real MiniLM through real sockets and the openai client."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import numpy as np
import openai
import pytest
import pytest_asyncio

from inferno.backend.engines.onnx import OnnxEngine
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings
from inferno.models.catalog import resolve_model
from tests.conftest import start_fake_node

pytest.importorskip("onnxruntime")
MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def engine() -> OnnxEngine:
    # The default data dir: the graph is built once per machine, then loaded from the cache.
    eng = OnnxEngine(resolve_model(MODEL).path, model_id=MODEL, threads=1,
                     aliases=("all-MiniLM-L6-v2",))
    eng.load()
    return eng


@pytest_asyncio.fixture
async def node(engine: OnnxEngine) -> AsyncIterator[BackendNode]:
    settings = BackendSettings(port=0, ops_port=0, engine="onnx", model=MODEL, drain_timeout=2)
    n = BackendNode(settings, engine)
    await n.start()
    yield n
    await n.drain()


def client_for(node: BackendNode) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{node.server.port}/v1",
                              api_key="unused", max_retries=0)


async def post(node: BackendNode, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(f"http://127.0.0.1:{node.server.port}{path}", json=body)


@pytest.mark.parametrize("fmt", [pytest.param("float", id="float"),
                                 pytest.param("base64", id="base64"),
                                 pytest.param(openai.NOT_GIVEN, id="client-default")])
async def test_openai_client_gets_unit_vectors(node: BackendNode, fmt: Any) -> None:
    # Left out, the client asks for base64 itself and decodes it.
    resp = await client_for(node).embeddings.create(
        model=MODEL, input=["A man is eating food.", "A man is eating bread.",
                            "The stock market fell."], encoding_format=fmt)
    if fmt == "base64":  # asked for explicitly, the client hands the strings over as they are
        v = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4")  # type: ignore[arg-type]
                      for d in resp.data])
    else:
        v = np.array([d.embedding for d in resp.data])
    assert v.shape == (3, 384) and [d.index for d in resp.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert resp.usage.prompt_tokens > 0 and resp.usage.total_tokens == resp.usage.prompt_tokens
    assert resp.model == MODEL


async def test_float_and_base64_agree_and_string_input(node: BackendNode) -> None:
    f = (await post(node, "/v1/embeddings", {"model": MODEL, "input": "hello"})).json()
    b = (await post(node, "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hello",
                                             "encoding_format": "base64"})).json()
    decoded = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(f["data"][0]["embedding"], dtype=np.float32))
    assert f["object"] == "list" and f["data"][0]["object"] == "embedding"
    assert f["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # [CLS] hello [SEP]


@pytest.mark.parametrize("body,status,code,param,text", [
    pytest.param({"input": []}, 400, "invalid_value", "input", "empty", id="empty-list"),
    pytest.param({"input": ""}, 400, "invalid_value", "input", "empty string",
                 id="empty-string"),
    pytest.param({"input": ["ok", ""]}, 400, "invalid_value", "input", "input[1]",
                 id="empty-item"),
    pytest.param({"input": ["x"] * 2049}, 400, "invalid_value", "input", "at most 2048",
                 id="too-many-inputs"),
    pytest.param({"input": ["word " * 400]}, 400, "context_length_exceeded", "input",
                 "at most 256 tokens", id="too-long"),
    pytest.param({"input": [101, 102]}, 400, "unsupported_parameter", "input", "Token-id",
                 id="token-ids"),
    pytest.param({"input": [[101, 102]]}, 400, "unsupported_parameter", "input", "Token-id",
                 id="token-id-lists"),
    pytest.param({"input": "x", "dimensions": 128}, 400, "unsupported_parameter",
                 "dimensions", "384-dimensional", id="dimensions"),
    pytest.param({"input": "x", "encoding_format": "int8"}, 400, "invalid_value",
                 "encoding_format", "float", id="encoding-format"),
    pytest.param({"input": "x", "model": "nope"}, 404, "model_not_found", "model", "nope",
                 id="unknown-model"),
    pytest.param({"input": 5}, 400, "invalid_value", "input", "string", id="wrong-type"),
])
async def test_bad_input_gets_clear_openai_errors(node: BackendNode, body: dict[str, Any],
                                                  status: int, code: str, param: str,
                                                  text: str) -> None:
    r = await post(node, "/v1/embeddings", {"model": MODEL, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["param"] == param and text in err["message"]


async def test_dimensions_equal_to_native_is_accepted(node: BackendNode) -> None:
    r = await post(node, "/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 384})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384


async def test_chat_on_an_embedding_node_is_refused(node: BackendNode) -> None:
    r = await post(node, "/v1/chat/completions",
                   {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "unsupported_parameter" and "/v1/embeddings" in err["message"]


async def test_embeddings_on_a_chat_node_is_refused() -> None:
    chat = await start_fake_node()
    try:
        r = await post(chat, "/v1/embeddings", {"model": "fake-model", "input": "hi"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "unsupported_parameter" and err["param"] == "model"
        assert "does not support /v1/embeddings" in err["message"]
    finally:
        await chat.drain()


async def test_models_card_and_telemetry_describe_the_embedding_model(
        node: BackendNode) -> None:
    async with httpx.AsyncClient() as http:
        models = (await http.get(f"http://127.0.0.1:{node.server.port}/v1/models")).json()
        vitals = (await http.get(f"http://127.0.0.1:{node.ops.port}/telemetry")).json()
    card = models["data"][0]
    assert card["capabilities"] == ["embeddings"] and card["dimensions"] == 384
    assert vitals["capabilities"] == ["embeddings"] and vitals["engine"] == "onnx"
    assert vitals["capacity"] == 32 and vitals["queue_depth"] == 0
