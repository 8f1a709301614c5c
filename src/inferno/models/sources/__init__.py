"""The table of model sources, checked in order: the first whose ``handles(ref)`` is true
resolves ``ref``. Registry sources (``hf://``, ``ollama://``) go before the catch-alls."""

from __future__ import annotations

from inferno.core.errors import ConfigError
from inferno.models.remote import Source
from inferno.models.sources.url import CatalogSource, FileSource, UrlSource

SOURCES: tuple[Source, ...] = (CatalogSource(), FileSource(), UrlSource())


def pick(ref: str, sources: tuple[Source, ...] = SOURCES) -> Source:
    for source in sources:
        if source.handles(ref):
            return source
    raise ConfigError(
        f"no source understands '{ref}': use a catalog id, https://..., or file://..."
    )
