"""The content-addressed store: names, manifests, rm/tag/verify/prune, import by hard link."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from inferno.core.errors import ConfigError, ModelNotFound
from inferno.models.store import ModelStore, parse_ref
from tests.fakes.tiny_gguf import write_tiny_gguf


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    return path


@pytest.mark.parametrize(
    "ref",
    [
        pytest.param("../etc:x", id="dotdot"),
        pytest.param("/abs/name", id="absolute"),
        pytest.param("a/../../b", id="inner-dotdot"),
        pytest.param("bad\x07name", id="control"),
        pytest.param("a//b", id="empty-part"),
        pytest.param("name:..", id="dotdot-tag"),
    ],
)
def test_unsafe_names_are_refused(ref: str) -> None:
    with pytest.raises(ConfigError):
        parse_ref(ref)


def test_refs_split_name_and_tag() -> None:
    assert parse_ref("hf.co/org/repo:Q4_K_M") == ("hf.co/org/repo", "Q4_K_M")
    assert parse_ref("localhost:5000/model") == ("localhost:5000/model", "latest")
    assert parse_ref("m") == ("m", "latest")


def test_import_hard_links_and_leaves_the_original(model: Path, tmp_path: Path) -> None:
    before = (model.read_bytes(), model.stat().st_mode)
    store = ModelStore(tmp_path / "store")
    m = store.import_file(model, "org/tiny", "v1")
    blob = store.blob_path(m.layers[0].digest)
    assert blob.stat().st_ino == model.stat().st_ino
    assert (model.read_bytes(), model.stat().st_mode) == before
    assert m.format == "gguf" and m.layers[0].digest == hashlib.sha256(before[0]).hexdigest()
    assert store.get_manifest("org/tiny:v1") == m
    assert (store.manifests / "org" / "tiny" / "v1.json").is_file()


def test_tag_rm_and_prune(model: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    m = store.import_file(model, "tiny")
    store.tag("tiny", "other:v2")
    assert sorted(x.ref for x in store.list()) == ["other:v2", "tiny:latest"]
    store.remove("tiny")
    assert store.prune() == []  # other:v2 still names the blob
    store.remove("other:v2")
    assert store.prune() == [m.layers[0].digest]
    assert not store.has_blob(m.layers[0].digest) and store.list() == []
    with pytest.raises(ModelNotFound):
        store.get_manifest("tiny")


def test_rm_is_refused_while_in_use_unless_forced(model: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    m = store.import_file(model, "tiny")
    asked: list[str] = []

    def in_use(manifest: object) -> bool:
        asked.append(getattr(manifest, "ref", ""))
        return True

    with pytest.raises(ConfigError, match="in use"):
        store.remove("tiny", in_use=in_use)
    assert asked == ["tiny:latest"] and store.get_manifest("tiny") == m
    store.remove("tiny", force=True, in_use=in_use)
    assert store.list() == []


def test_verify_quarantines_a_corrupted_blob(tmp_path: Path) -> None:
    src = tmp_path / "copy.gguf"
    write_tiny_gguf(src)
    store = ModelStore(tmp_path / "store")
    m = store.import_file(src, "tiny")
    assert store.verify() == []
    blob = store.blob_path(m.layers[0].digest)
    with blob.open("r+b") as f:  # the hard link shares the inode: corrupt through it
        f.seek(100)
        f.write(b"\xff\xff")
    problems = store.verify()
    assert [p.digest for p in problems] == [m.layers[0].digest]
    assert problems[0].actual != m.layers[0].digest
    assert problems[0].quarantined is not None and problems[0].quarantined.exists()
    assert not blob.exists()


def test_import_copies_across_filesystems(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*_: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    store = ModelStore(tmp_path / "store")
    m = store.import_file(model, "tiny")
    blob = store.blob_path(m.layers[0].digest)
    assert blob.stat().st_ino != model.stat().st_ino
    assert blob.read_bytes() == model.read_bytes()
    assert not os.access(blob, os.W_OK) or os.geteuid() == 0


def test_weights_blob_is_the_gguf_layer_in_any_position(model: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    store = ModelStore(tmp_path / "store")
    template = tmp_path / "template"
    template.write_bytes(b"{{ .Prompt }}")
    first = store.import_blob(template)  # an Ollama model may list its template first
    weights = store.import_file(model, "m", "t")
    mixed = replace(weights, tag="mixed", layers=(first, *weights.layers))
    store.put_manifest(mixed)
    got = store.weights_blob(store.get_manifest("m:mixed"))
    assert got == store.blob_path(weights.layers[0].digest)
    assert got.read_bytes()[:4] == b"GGUF"
    only_template = replace(weights, tag="none", layers=(first,))
    with pytest.raises(ConfigError, match="no GGUF layer"):
        store.weights_blob(only_template)
