"""Tiny GGUF files written with ``gguf.GGUFWriter``: a real header, random tensor bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_gguf(path: Path, *, n_floats: int = 64 * 1024, seed: int = 0) -> bytes:
    """A llama-shaped header (values the tests assert) and one f32 tensor; returns the bytes."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(4)
    w.add_context_length(2048)
    w.add_embedding_length(256)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_chat_template("{{ messages }}")
    rng = np.random.default_rng(seed)
    w.add_tensor("token_embd.weight", rng.random(n_floats, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def split_gguf(src: Path, dest: Path, parts: int = 2) -> list[Path]:
    """``src`` rewritten as a split GGUF (``<stem>-0000N-of-0000M.gguf`` in ``dest``), as
    llama.cpp's gguf-split writes it; returns the parts in order."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    per_part = -(-len(reader.tensors) // parts)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    w = gguf.GGUFWriter(str(dest / src.name), arch, split_max_tensors=per_part)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for t in reader.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sorted(dest.glob(f"{src.stem}-*-of-*.gguf"))
