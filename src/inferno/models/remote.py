"""What a model reference resolves to before anything is downloaded.

Contract between the sources (``hf://``, ``ollama://``, ``https://``, ``file://``: each
turns a reference into a :class:`Resolved`) and the puller (which fetches every
:class:`Remote` into the content-addressed store, verifies it, and records a manifest):

- a source talks to its registry only to *resolve* (metadata, manifests, auth challenges);
  it never downloads a model file itself;
- ``sha256`` is the digest the registry promises (Hugging Face's ``X-Linked-Etag`` for LFS
  files, an OCI layer's ``sha256:`` digest); ``None`` when the source states none (a plain
  URL), in which case the puller trusts what arrives and records its digest;
- ``headers`` are what the download needs (a bearer token): never logged, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Remote:
    """One file to download."""

    url: str
    filename: str  # its name in the model (e.g. "model-Q4_K_M.gguf"); never a path
    size: int | None = None
    sha256: str | None = None  # lowercase hex, no "sha256:" prefix
    media_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Resolved:
    """A reference resolved: what to call it in the store and which files it is made of."""

    name: str  # e.g. "hf.co/org/repo" or "registry.ollama.ai/library/qwen2"
    tag: str  # e.g. "Q4_K_M" or "latest"
    source: str  # the reference as the user gave it (credentials stripped)
    revision: str | None  # a commit or manifest digest the source pinned, if any
    files: tuple[Remote, ...]


class Source(Protocol):
    """Resolves references of one scheme."""

    def handles(self, ref: str) -> bool:
        """True when ``ref`` belongs to this source (checked in the table's order)."""
        ...

    async def resolve(self, ref: str) -> Resolved:
        """Raise ``ModelSourceError`` (or ``ModelNotFound``) with a message that names the
        reference and the registry's answer, never a credential."""
        ...
