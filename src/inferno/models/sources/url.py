"""Sources that need no registry: plain ``https://``/``http://`` URLs, ``file://`` paths,
and the catalog's short ids (models shipped inside PyPI packages, imported by hard link).

A URL states no digest: the puller records what arrives. A ``file://`` path and a catalog
file are hashed when imported.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from inferno.core.errors import ConfigError, ModelNotFound, ModelSourceError
from inferno.models.catalog import CATALOG, CatalogEntry, resolve_model
from inferno.models.remote import Remote, Resolved


def _strip_ext(path: str) -> str:
    for ext in (".gguf", ".onnx", ".bin", ".safetensors"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


class UrlSource:
    """``https://host/path/model.gguf`` -> ``host/path/model:latest``, one file."""

    def handles(self, ref: str) -> bool:
        return ref.startswith(("https://", "http://"))

    async def resolve(self, ref: str) -> Resolved:
        u = urlsplit(ref)
        filename = unquote(u.path.rsplit("/", 1)[-1])
        if not u.hostname or not filename:
            raise ModelSourceError(f"{u.scheme}://{u.hostname or ''}{u.path}: no file name")
        host = u.hostname + (f"-{u.port}" if u.port else "")
        name = host + _strip_ext(unquote(u.path))
        # The user's own reference is the source; userinfo (credentials) is never kept.
        netloc = u.hostname + (f":{u.port}" if u.port else "")
        source = f"{u.scheme}://{netloc}{u.path}"
        return Resolved(
            name=name,
            tag="latest",
            source=source,
            revision=None,
            files=(Remote(url=ref, filename=filename),),
        )


class FileSource:
    """``file:///abs/path/model.gguf`` -> ``local/model:latest``, imported by hard link."""

    def handles(self, ref: str) -> bool:
        return ref.startswith("file://")

    async def resolve(self, ref: str) -> Resolved:
        return await asyncio.to_thread(self._resolve, ref)

    def _resolve(self, ref: str) -> Resolved:
        path = Path(unquote(urlsplit(ref).path))
        if not path.is_file():
            raise ModelNotFound(f"{ref}: no such file")
        return Resolved(
            name=f"local/{_strip_ext(path.name)}",
            tag="latest",
            source=ref,
            revision=None,
            files=(Remote(url=ref, filename=path.name, size=path.stat().st_size),),
        )


class CatalogSource:
    """Catalog ids and aliases (``smollm2-135m``): the file inside the installed package."""

    def handles(self, ref: str) -> bool:
        return any(ref == e.id or ref in e.aliases for e in CATALOG.values())

    async def resolve(self, ref: str) -> Resolved:
        return await asyncio.to_thread(self._resolve, ref)

    def _resolve(self, ref: str) -> Resolved:
        try:
            found = resolve_model(ref)
        except ConfigError as exc:  # the package is not installed: say which one
            raise ModelNotFound(exc.message) from exc
        entry: CatalogEntry = CATALOG[found.id]
        paths = (
            sorted(p for p in found.path.rglob("*") if p.is_file())
            if found.path.is_dir()
            else [found.path]
        )
        root = found.path if found.path.is_dir() else found.path.parent
        files = tuple(
            Remote(
                url="file://" + quote(str(p)),
                filename=p.relative_to(root).as_posix(),
                size=p.stat().st_size,
                sha256=entry.sha256 or None if len(paths) == 1 else None,
            )
            for p in paths
            if "__pycache__" not in p.parts
        )
        return Resolved(name=entry.id, tag="latest", source=ref, revision=None, files=files)
