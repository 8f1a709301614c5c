"""Importing whole stores of other tools: an Ollama model store and the Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferno.cli import app
from inferno.core.errors import ConfigError
from inferno.models.importers import find_hf_cache, find_ollama, import_found
from inferno.models.store import ModelStore
from tests.fakes.tiny_gguf import write_tiny_gguf


def _blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / f"sha256-{digest}").write_bytes(data)
    return digest


def ollama_store(root: Path, *, corrupt: bool = False) -> dict[str, str]:
    """An Ollama store as Ollama writes it: manifests/HOST/NS/NAME/TAG and sha256 blobs."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    weights = write_tiny_gguf(root / "w.gguf")
    (root / "w.gguf").unlink()
    digests = {
        "model": _blob(blobs, weights),
        "template": _blob(blobs, b"{{ .Prompt }}"),
        "config": _blob(blobs, b'{"model_format":"gguf"}'),
    }
    if corrupt:  # the bytes no longer match the name Ollama gave them
        (blobs / f"sha256-{digests['template']}").write_bytes(b"tampered")
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": f"sha256:{digests['config']}", "size": 23},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model",
             "digest": f"sha256:{digests['model']}", "size": len(weights)},
            {"mediaType": "application/vnd.ollama.image.template",
             "digest": f"sha256:{digests['template']}", "size": 13},
        ],
    }
    path = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "q8"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    # An incomplete model (its blob was never downloaded) is not offered.
    broken = root / "manifests" / "registry.ollama.ai" / "library" / "half" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text(json.dumps({**manifest, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "0" * 64,
         "size": 1}]}))
    return digests


def hf_cache(root: Path) -> tuple[Path, Path]:
    """models--org--repo with two snapshots; refs/main names the newer one."""
    repo = root / "models--org--repo"
    (repo / "blobs").mkdir(parents=True)
    old_rev, new_rev = "a" * 40, "b" * 40
    paths = []
    for i, rev in enumerate((old_rev, new_rev)):
        data = write_tiny_gguf(root / "t.gguf", seed=i)
        digest = hashlib.sha256(data).hexdigest()
        (root / "t.gguf").replace(repo / "blobs" / digest)
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        os.symlink(f"../../blobs/{digest}", snap / "tiny-Q8_0.gguf")
        (repo / "blobs" / f"readme{i}").write_text("# readme")
        os.symlink(f"../../blobs/readme{i}", snap / "README.md")
        paths.append(repo / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(new_rev)
    return paths[0], paths[1]


def test_ollama_models_import_by_hard_link_under_their_pull_names(tmp_path: Path) -> None:
    digests = ollama_store(tmp_path / "ollama")
    found = find_ollama(tmp_path / "ollama")
    assert [f.ref for f in found] == ["registry.ollama.ai/library/tiny:q8"]
    store = ModelStore(tmp_path / "store")
    m = import_found(store, found[0])
    assert store.get_manifest("registry.ollama.ai/library/tiny:q8") == m
    assert [x.filename for x in m.layers] == ["config.json", "model.gguf", "template"]
    assert m.format == "gguf"
    weights = store.weights_blob(m)
    source = tmp_path / "ollama" / "blobs" / f"sha256-{digests['model']}"
    assert weights.stat().st_ino == source.stat().st_ino  # linked, not copied


def test_an_ollama_blob_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    ollama_store(tmp_path / "ollama", corrupt=True)
    store = ModelStore(tmp_path / "store")
    code = CliRunner().invoke(app, ["models", "import", "--from", "ollama", "--dir",
                                    str(tmp_path / "ollama"), "--models-dir",
                                    str(tmp_path / "store")])
    assert code.exit_code == 1
    assert "skipped registry.ollama.ai/library/tiny:q8" in code.output
    assert store.list() == []


def test_hf_cache_imports_the_main_revision_under_hf_names(tmp_path: Path) -> None:
    _old, new = hf_cache(tmp_path / "hub")
    result = CliRunner().invoke(app, ["models", "import", "--from", "hf-cache", "--dir",
                                      str(tmp_path / "hub"), "--models-dir",
                                      str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert "imported hf.co/org/repo:tiny-Q8_0" in result.output
    store = ModelStore(tmp_path / "store")
    m = store.get_manifest("hf.co/org/repo:tiny-Q8_0")
    assert m.revision == "b" * 40 and m.source.endswith("@" + "b" * 40)
    assert store.weights_blob(m).stat().st_ino == new.stat().st_ino
    assert [x.filename for x in m.layers] == ["tiny-Q8_0.gguf"]  # GGUF only, no README


def test_split_gguf_in_the_cache_is_one_model_only_when_complete(tmp_path: Path) -> None:
    snap = tmp_path / "hub" / "models--o--r" / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    for i in (1, 2):
        write_tiny_gguf(snap / f"big-Q4_K_M-0000{i}-of-00002.gguf", seed=i)
    write_tiny_gguf(snap / "other-00001-of-00003.gguf")  # parts 2 and 3 missing
    found = find_hf_cache(tmp_path / "hub")
    assert [(f.ref, len(f.files)) for f in found] == [("hf.co/o/r:big-Q4_K_M", 2)]
    assert [f.filename for f in found[0].files] == [
        "big-Q4_K_M-00001-of-00002.gguf", "big-Q4_K_M-00002-of-00002.gguf"]


def test_import_without_a_source_or_file_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "import", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    with pytest.raises(ConfigError, match="not an Ollama model store"):
        find_ollama(tmp_path / "nothing-here")
