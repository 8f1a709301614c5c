"""The table of model sources, checked in order: the first whose ``handles(ref)`` is true
resolves ``ref``. Registry sources (``hf://``, ``ollama://``) go before the catch-alls."""

from __future__ import annotations

from inferno.core.errors import ConfigError
from inferno.models.remote import Source
from inferno.models.sources.hf import HfSource
from inferno.models.sources.ollama import OllamaSource
from inferno.models.sources.url import CatalogSource, FileSource, UrlSource


def default_sources() -> tuple[Source, ...]:
    """The table, built when a command runs: the registry sources read their endpoint and
    token (HF_ENDPOINT, HF_TOKEN, INFERNO_OLLAMA_INSECURE_HOSTS) then, not at import."""
    return (HfSource(), OllamaSource(), CatalogSource(), FileSource(), UrlSource())


def pick(ref: str, sources: tuple[Source, ...] | None = None) -> Source:
    for source in sources if sources is not None else default_sources():
        if source.handles(ref):
            return source
    raise ConfigError(
        f"no source understands '{ref}': use hf://ORG/REPO, ollama://NAME:TAG, a catalog "
        "id, https://... or file://..."
    )
