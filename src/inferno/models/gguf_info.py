"""What ``inferno models show`` says about a GGUF file, from its header alone, and how much
memory serving it takes. The header (magic, version, KV pairs, tensor infos) is parsed here,
streamed from the file in 64 KiB reads; tensor data is never touched. Every count and length
is checked against the bytes the file has left (strings also against 16 MiB), so a truncated
or hostile file is a clear ConfigError, never a hang or a huge allocation.

KV cache (llama.cpp, f16 K and V): ``n_layer * n_ctx_total * (n_embd_k_gqa + n_embd_v_gqa)
* 2 bytes`` with ``n_embd_k_gqa = key_length * head_count_kv``; ``n_ctx_total`` is the
per-sequence context times the sequences served at once (``--parallel``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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


# GGUF value types -> struct format (scalars); 8 = string, 9 = array
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
MAX_STRING = 16 << 20  # a chat template is a few KiB; a 16 MiB key or value is hostile
# ggml type -> (block size in elements, bytes per block), as in gguf.GGML_QUANT_SIZES
_BLOCK = 1 << 16  # bytes read from the file at a time


class _Header:
    """A forward-only reader of a GGUF header, with every count checked against the bytes
    the file still has, so that a hostile or truncated file fails fast and small."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path
        self.buf = b""
        self.pos = 0  # file offset of buf[0]
        self.at = 0  # read offset inside buf

    def fail(self, why: str) -> ConfigError:
        return ConfigError(f"{self.path}: not a readable GGUF file ({why})")

    def left(self) -> int:
        return self.size - (self.pos + self.at)

    def take(self, n: int) -> bytes:
        if n > self.left():
            raise self.fail(f"truncated: {n} bytes needed at offset {self.pos + self.at}")
        if self.at + n > len(self.buf):
            rest = self.buf[self.at :]
            self.pos += self.at
            more = self.f.read(max(_BLOCK, n - len(rest)))
            self.buf, self.at = rest + more, 0
            if n > len(self.buf):
                raise self.fail(f"truncated at offset {self.pos + len(self.buf)}")
        out = self.buf[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, each: int) -> int:
        """A u64 count of items at least ``each`` bytes long, checked against the file."""
        n = int(self.unpack("Q"))
        if n * each > self.left():
            raise self.fail(f"{what} count {n} does not fit in the file")
        return n

    def string(self) -> str:
        n = int(self.unpack("Q"))
        if n > MAX_STRING or n > self.left():
            raise self.fail(f"a string of {n} bytes")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype = int(self.unpack("I"))
            if itype in _SCALARS:
                width = struct.calcsize(_SCALARS[itype])
                n = self.count("array", width)
                data = self.take(n * width)  # arrays are kept only when short
                return list(struct.unpack(f"<{n}{_SCALARS[itype]}", data)) if n <= 64 else n
            if itype == _STRING:
                n = self.count("array", 8)
                for _ in range(n):
                    self.string()
                return n  # token lists: only their length matters here
            raise self.fail(f"an array of value type {itype}")
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise self.fail(f"value type {vtype}")
        return self.unpack(fmt)


def _parse(path: Path) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """The KV pairs (long arrays as their length) and each tensor's (elements, ggml type)."""
    with path.open("rb") as f:
        h = _Header(f, os.fstat(f.fileno()).st_size, path)
        if h.take(4) != b"GGUF":
            raise h.fail("no GGUF magic")
        version = int(h.unpack("I"))
        if version not in (2, 3):
            raise h.fail(f"version {version}")
        n_tensors = int(h.unpack("Q"))
        n_kv = int(h.unpack("Q"))
        if n_kv * 13 > h.left():  # key length (8) + a byte of key + type (4), at least
            raise h.fail(f"KV count {n_kv} does not fit in the file")
        if n_tensors * 25 > h.left():  # name length, a byte, n_dims, type, offset: >= 25
            raise h.fail(f"tensor count {n_tensors} does not fit in the file")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = h.string()
            kv[key] = h.value(int(h.unpack("I")))
        tensors = []
        data_end = 0
        for _ in range(n_tensors):
            h.string()
            n_dims = int(h.unpack("I"))
            if n_dims > 8:
                raise h.fail(f"a tensor of {n_dims} dimensions")
            dims = struct.unpack(f"<{n_dims}Q", h.take(8 * n_dims))
            ggml_type = int(h.unpack("I"))
            offset = int(h.unpack("Q"))
            elements = 1
            for d in dims:
                elements *= d
            tensors.append((elements, ggml_type))
            data_end = max(data_end, offset + _tensor_bytes(elements, ggml_type))
        align = kv.get("general.alignment", 32)
        align = align if isinstance(align, int) and align > 0 else 32
        start = -(-(h.pos + h.at) // align) * align
        if tensors and start + data_end > h.size:
            raise h.fail(f"truncated: tensor data ends at {start + data_end}, file has {h.size}")
    return kv, tensors


def _tensor_bytes(elements: int, ggml_type: int) -> int:
    import gguf

    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (KeyError, ValueError):
        return 0
    return elements * size // block


def read_gguf(path: Path) -> GgufInfo:
    try:
        import gguf
    except ImportError as exc:
        raise ConfigError("reading GGUF headers needs gguf: pip install gguf==0.19.0") from exc
    try:
        kv, tensors = _parse(path)
    except OSError as exc:
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = str(kv.get("general.architecture") or "unknown")

    def arch_int(key: str) -> int | None:
        value = kv.get(f"{arch}.{key}")
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        return int(value) if isinstance(value, int | float) else None

    stated = kv.get("general.parameter_count")
    ftype = kv.get("general.file_type")
    try:
        file_type = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        file_type = "unknown" if ftype is None else str(ftype)
    return GgufInfo(
        architecture=arch,
        parameters=int(stated) if stated else sum(e for e, _ in tensors),
        file_type=file_type,
        context_length=arch_int("context_length"),
        n_layer=arch_int("block_count"),
        n_embd=arch_int("embedding_length"),
        n_head=arch_int("attention.head_count"),
        n_head_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        chat_template="tokenizer.chat_template" in kv,
        weights_bytes=sum(_tensor_bytes(e, t) for e, t in tensors),
    )
