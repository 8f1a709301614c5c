"""A real embeddings node (ONNX Runtime, all-MiniLM-L6-v2) behind a real proxy, as separate
processes, driven with the official openai client."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx2 as httpx
import numpy as np
import openai
import pytest

from tests.integration.procs import Proc, backend, node_ids, proxy, wait_until

pytest.importorskip("onnxruntime", reason="the onnx engine is not installed")
pytestmark = pytest.mark.integration

MODEL = "all-minilm-l6-v2"
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.",
             "The new movie is awesome.", "The stock market crashed today."]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("embeddings")
    lb = proxy(tmp).start()
    node = backend(tmp, "embed-0", lb.ops_port, "--engine", "onnx", "--model", MODEL).start()
    try:
        # First start on a machine builds and checks the graph (a few seconds), then cached.
        wait_until(lambda: node_ids(lb.ops_port) == {"embed-0"}, 90,
                   "the embeddings node to register", lb, node)
        yield lb
    finally:
        node.stop()
        lb.stop()


def client(lb: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{lb.port}/v1", api_key="unused",
                         max_retries=0, timeout=60)


def _vectors(resp: openai.types.CreateEmbeddingResponse, fmt: str) -> np.ndarray:
    if fmt == "base64":  # asked for explicitly, the client leaves the strings encoded
        return np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4")  # type: ignore[arg-type]
                         for d in resp.data])
    return np.array([d.embedding for d in resp.data])


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_embeddings_through_the_proxy(cluster: Proc, fmt: str) -> None:
    resp = client(cluster).embeddings.create(model=MODEL, input=SENTENCES,
                                             encoding_format=fmt)  # type: ignore[arg-type]
    v = _vectors(resp, fmt)
    assert v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]  # similar beats dissimilar
    assert resp.usage.prompt_tokens > 0


def test_bad_embedding_requests_are_clear_4xx(cluster: Proc) -> None:
    url = f"http://127.0.0.1:{cluster.port}/v1"
    with httpx.Client(timeout=30) as http:
        empty = http.post(f"{url}/embeddings", json={"model": MODEL, "input": []})
        chat = http.post(f"{url}/chat/completions",
                         json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        dims = http.post(f"{url}/embeddings",
                         json={"model": MODEL, "input": "x", "dimensions": 64})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
    assert chat.status_code == 400
    assert chat.json()["error"]["code"] == "unsupported_parameter"
    assert dims.status_code == 400 and dims.json()["error"]["param"] == "dimensions"
