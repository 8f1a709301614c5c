"""Pull end to end: the hf:// and ollama:// sources, the downloader and the store together,
against the fake hub and registry (which speak the real protocols: test_model_sources.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from inferno.models.pull import pull
from inferno.models.sources.hf import HfSource
from inferno.models.sources.ollama import OllamaSource
from inferno.models.store import ModelStore
from tests.fakes.hf_hub import FakeHub, FakeRepo
from tests.fakes.oci_registry import FakeRegistry
from tests.unit.test_model_sources import OLLAMA, tiny_gguf

TOKEN = "hf_SECRETtoken0123456789"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs(store: ModelStore) -> set[str]:
    return {p.name for p in (store.root / "blobs").iterdir() if p.name.startswith("sha256-")
            and "." not in p.name}


async def test_pull_from_the_hub_and_the_hf_cache_share_one_blob(
    hub: FakeHub, tmp_path: Path
) -> None:
    weights = tiny_gguf(tmp_path / "w.gguf", "tiny")
    hub.tokens.add(TOKEN)
    hub.add_repo("org/gated", FakeRepo({"tiny-Q4_K_M.gguf": weights, "README.md": b"hi"},
                                       gated=True))
    store = ModelStore(tmp_path / "models")
    source = HfSource(endpoint=hub.url, token=TOKEN)
    manifest = await pull("hf://org/gated:Q4_K_M", store, sources=(source,))

    (layer,) = manifest.layers
    assert layer.digest == sha(weights) and layer.size == len(weights)
    assert store.blob_path(layer.digest).read_bytes() == weights
    assert manifest.format == "gguf" and manifest.name == "hf.co/org/gated"
    # The bytes came from the CDN, after a redirect; the token went to the hub only (the
    # fake CDN refuses an Authorization header, as signed storage URLs do).
    cdn = [r for r in hub.requests if r.host == "cdn" and r.method == "GET"]
    assert cdn, "nothing was downloaded from the CDN"
    assert all("Authorization" not in r.headers for r in cdn)
    assert any(r.headers.get("Authorization") == f"Bearer {TOKEN}"
               for r in hub.requests if r.host == "hub")

    # huggingface_hub fetches the same file into its own cache; importing it adds no blob.
    from huggingface_hub import hf_hub_download

    cached = await asyncio.to_thread(hf_hub_download, "org/gated", "tiny-Q4_K_M.gguf",
                                     endpoint=hub.url, cache_dir=tmp_path / "hf", token=TOKEN)
    before = blobs(store)
    imported = store.import_file(Path(cached), "hf-cache/tiny", "q4")
    assert imported.layers[0].digest == layer.digest
    assert blobs(store) == before == {f"sha256-{layer.digest}"}


async def test_pull_from_an_ollama_registry(
    registry: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tiny_gguf(tmp_path / "w.gguf", "tiny")
    registry.add_model("library/tiny", "latest", [(OLLAMA + "model", weights),
                                                  (OLLAMA + "template", b"{{ .Prompt }}")])
    monkeypatch.setenv("INFERNO_OLLAMA_INSECURE_HOSTS", registry.host)
    store = ModelStore(tmp_path / "models")
    manifest = await pull(f"ollama://{registry.host}/library/tiny", store,
                          sources=(OllamaSource(),))

    by_name = {layer.filename: layer for layer in manifest.layers}
    assert by_name["model.gguf"].digest == sha(weights)
    assert store.blob_path(by_name["model.gguf"].digest).read_bytes() == weights
    assert store.blob_path(by_name["template"].digest).read_bytes() == b"{{ .Prompt }}"
    assert manifest.format == "gguf" and manifest.tag == "latest"
    assert store.get_manifest(f"{registry.host}/library/tiny").layers == manifest.layers
    # The blobs were fetched with the registry's bearer token.
    got = [r for r in registry.requests if "/blobs/" in r.path]
    assert got and all(r.headers.get("Authorization", "").startswith("Bearer ") for r in got)
