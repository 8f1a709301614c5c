"""The header-only GGUF reader: equal to gguf.GGUFReader on real files, and hostile input
(truncated, absurd lengths and counts) fails fast with a clear error."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from inferno.core.errors import ConfigError
from inferno.models.gguf_info import read_gguf
from tests.fakes.tiny_gguf import write_tiny_gguf


def reference(path: Path) -> dict[str, object]:
    import gguf

    reader = gguf.GGUFReader(path)

    def value(key: str) -> object:
        field = reader.get_field(key)
        if field is None:
            return None
        v = field.contents()
        return v[0] if isinstance(v, list) and len(v) == 1 else v

    return {
        "architecture": value("general.architecture"),
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "file_type": gguf.LlamaFileType(int(value("general.file_type"))).name,  # type: ignore[arg-type]
        "context_length": value("llama.context_length"),
        "n_layer": value("llama.block_count"),
        "n_embd": value("llama.embedding_length"),
        "n_head": value("llama.attention.head_count"),
        "n_head_kv": value("llama.attention.head_count_kv"),
        "chat_template": reader.get_field("tokenizer.chat_template") is not None,
        "weights_bytes": sum(int(t.n_bytes) for t in reader.tensors),
    }


@pytest.mark.parametrize("n_floats", [1, 4096, 64 * 1024])
def test_equal_to_gguf_reader(tmp_path: Path, n_floats: int) -> None:
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, n_floats=n_floats)
    info = read_gguf(path)
    ref = reference(path)
    assert {
        "architecture": info.architecture,
        "parameters": info.parameters,
        "file_type": "ALL_F32" if info.file_type == "ALL_F32" else info.file_type,
        "context_length": info.context_length,
        "n_layer": info.n_layer,
        "n_embd": info.n_embd,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "chat_template": info.chat_template,
        "weights_bytes": info.weights_bytes,
    } == ref
    assert info.parameters == n_floats and info.weights_bytes == 4 * n_floats


def header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def kv_string(key: bytes, length: int, value: bytes = b"") -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, length) + value


@pytest.mark.parametrize("keep", [3, 10, 24, 100, 300, -1])  # -1: the last data byte
def test_a_truncated_file_is_a_clear_error(tmp_path: Path, keep: int) -> None:
    whole = write_tiny_gguf(tmp_path / "src.gguf", n_floats=16)
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[:keep])  # 480 bytes in all
    with pytest.raises(ConfigError, match="not a readable GGUF file"):
        read_gguf(path)


def test_a_huge_string_length_is_refused_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "s.gguf"
    path.write_bytes(header(0, 1) + kv_string(b"general.name", 1 << 62) + b"x" * 64)
    with pytest.raises(ConfigError, match="string of 4611686018427387904 bytes"):
        read_gguf(path)


def test_a_huge_tensor_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    path.write_bytes(header(1 << 60, 0) + b"\0" * 4096)
    with pytest.raises(ConfigError, match="tensor count"):
        read_gguf(path)


def test_a_huge_array_length_is_refused(tmp_path: Path) -> None:
    key = b"tokenizer.ggml.scores"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 6, 1 << 40)
    path = tmp_path / "a.gguf"
    path.write_bytes(header(0, 1) + body + b"\0" * 64)
    with pytest.raises(ConfigError, match="array count"):
        read_gguf(path)


def test_not_gguf_and_unknown_version(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGML" + b"\0" * 60)
    with pytest.raises(ConfigError, match="magic"):
        read_gguf(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(ConfigError, match="version 9"):
        read_gguf(path)
