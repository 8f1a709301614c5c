"""``inferno models pull``: resolve a reference with its source, fetch every file into the
store (download.py: resumable, verified, once), then record the manifest.

The manifest is written last: a model is listed only once all its blobs are in place.
"""

from __future__ import annotations

from inferno.models.download import FetchOptions, ProgressFn, fetch
from inferno.models.remote import Source
from inferno.models.sources import pick
from inferno.models.store import Manifest, ModelStore, sniff_format


async def pull(
    ref: str,
    store: ModelStore,
    sources: tuple[Source, ...] | None = None,
    progress: ProgressFn | None = None,
    options: FetchOptions | None = None,
) -> Manifest:
    resolved = await pick(ref, sources).resolve(ref)
    layers = [await fetch(remote, store, progress, options) for remote in resolved.files]
    fmt = "other"
    for layer in layers:  # the model's format is the first weights file's
        fmt = sniff_format(store.blob_path(layer.digest), layer.filename)
        if fmt != "other":
            break
    manifest = Manifest(
        name=resolved.name,
        tag=resolved.tag,
        layers=tuple(layers),
        source=resolved.source,
        revision=resolved.revision,
        format=fmt,
    )
    store.put_manifest(manifest)
    return manifest
