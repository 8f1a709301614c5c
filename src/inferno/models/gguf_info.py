"""What ``inferno models show`` says about a GGUF file, from its header alone (the tensor
data is memory-mapped, never read), and how much memory serving it takes.

KV cache (llama.cpp, f16 K and V): ``n_layer * n_ctx_total * (n_embd_k_gqa + n_embd_v_gqa)
* 2 bytes`` with ``n_embd_k_gqa = key_length * head_count_kv``; ``n_ctx_total`` is the
per-sequence context times the sequences served at once (``--parallel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferno.core.errors import ConfigError

KV_BYTES = 2  # f16 cache, llama.cpp's default


@dataclass(frozen=True, slots=True)
class GgufInfo:
    architecture: str
    parameters: int  # stated in the header, else counted from the tensor shapes
    file_type: str
    context_length: int | None
    n_layer: int | None
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    key_length: int | None
    value_length: int | None
    chat_template: bool
    weights_bytes: int

    def kv_bytes(self, n_ctx: int, parallel: int = 1) -> int | None:
        if not (self.n_layer and self.n_embd and self.n_head):
            return None
        head_kv = self.n_head_kv or self.n_head
        k = (self.key_length or self.n_embd // self.n_head) * head_kv
        v = (self.value_length or self.n_embd // self.n_head) * head_kv
        return self.n_layer * n_ctx * parallel * (k + v) * KV_BYTES


def _value(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def read_gguf(path: Path) -> GgufInfo:
    try:
        import gguf
    except ImportError as exc:
        raise ConfigError("reading GGUF headers needs gguf: pip install gguf==0.19.0") from exc
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:  # not a GGUF file, or a truncated one
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = str(_value(reader, "general.architecture") or "unknown")

    def arch_int(key: str) -> int | None:
        value = _value(reader, f"{arch}.{key}")
        return int(value) if isinstance(value, int | float) else None

    stated = _value(reader, "general.parameter_count")
    ftype = _value(reader, "general.file_type")
    try:
        file_type = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        file_type = "unknown" if ftype is None else str(ftype)
    return GgufInfo(
        architecture=arch,
        parameters=int(stated) if stated else sum(int(t.n_elements) for t in reader.tensors),
        file_type=file_type,
        context_length=arch_int("context_length"),
        n_layer=arch_int("block_count"),
        n_embd=arch_int("embedding_length"),
        n_head=arch_int("attention.head_count"),
        n_head_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        chat_template=reader.get_field("tokenizer.chat_template") is not None,
        weights_bytes=sum(int(t.n_bytes) for t in reader.tensors),
    )
