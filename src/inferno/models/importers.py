"""Models a user already has on disk, from another tool's store, found and named.

Two layouts are understood:

- **Ollama** (``$OLLAMA_MODELS``, ``~/.ollama/models``, or the Linux service's
  ``/usr/share/ollama/.ollama/models``): ``manifests/HOST/NS/NAME/TAG`` are OCI manifests,
  ``blobs/sha256-<hex>`` their layers. A model becomes ``HOST/NS/NAME:TAG``, the name an
  ``ollama://`` pull of it would get, with the same layer file names.
- **The Hugging Face cache** (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``):
  ``models--ORG--REPO/snapshots/REV/FILE`` link to ``blobs/ETAG``; an LFS file's ETag is its
  sha256. Each GGUF model (a split one with all its parts) becomes ``hf.co/ORG/REPO:STEM``,
  as ``hf://`` pulls name it; the snapshot ``refs/main`` names wins over older ones.

Finding reads only directory listings and manifests; importing hard-links each file into
the store (``ModelStore.import_blob``), which hashes it and refuses one whose bytes do not
match the digest its own store recorded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from inferno.core.errors import ConfigError
from inferno.models.sources._hf_files import tag_of
from inferno.models.sources._oci import LAYER_FILES
from inferno.models.store import Manifest, ModelStore, check_name, check_part, sniff_format

_HEX = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass(frozen=True, slots=True)
class FoundFile:
    path: Path
    filename: str  # the name it has inside the model
    sha256: str | None  # what the other store says the bytes hash to, when it says
    media_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Found:
    name: str
    tag: str
    files: tuple[FoundFile, ...]
    source: str
    revision: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


def ollama_root() -> Path:
    if env := os.environ.get("OLLAMA_MODELS"):
        return Path(env)
    home = Path.home() / ".ollama" / "models"
    service = Path("/usr/share/ollama/.ollama/models")
    return service if not home.is_dir() and service.is_dir() else home


def hf_cache_root() -> Path:
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env)
    if env := os.environ.get("HF_HOME"):
        return Path(env) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def find_ollama(root: Path) -> list[Found]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        raise ConfigError(f"{root} is not an Ollama model store (no manifests/ directory)")
    found = []
    for path in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = path.relative_to(manifests).parts
        if len(parts) != 4:  # HOST/NS/NAME/TAG
            continue
        name, tag = "/".join(parts[:3]), parts[3]
        try:
            check_name(name)
            check_part(tag, "tag")
            raw = orjson.loads(path.read_bytes())
        except (ConfigError, orjson.JSONDecodeError):
            continue  # not a manifest Ollama itself could have written
        files = _ollama_files(root / "blobs", raw)
        if files:
            found.append(Found(name, tag, files, f"ollama://{name}:{tag}"))
    return found


def _ollama_files(blobs: Path, manifest: object) -> tuple[FoundFile, ...]:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        return ()
    config = manifest.get("config")
    entries = [(config, "config.json")] if config is not None else []
    for layer in manifest["layers"]:
        media = layer.get("mediaType", "") if isinstance(layer, dict) else ""
        entries.append((layer, LAYER_FILES.get(media, media.rsplit(".", 1)[-1] or "blob")))
    files: list[FoundFile] = []
    seen: dict[str, int] = {}
    for entry, filename in entries:
        if not isinstance(entry, dict):
            return ()
        digest = entry.get("digest", "")
        hexdigest = digest.removeprefix("sha256:") if isinstance(digest, str) else ""
        blob = blobs / f"sha256-{hexdigest}"
        if not _HEX.fullmatch(hexdigest) or not blob.is_file():
            return ()  # a layer is missing: the model is incomplete in Ollama too
        seen[filename] = seen.get(filename, 0) + 1
        name = filename if seen[filename] == 1 else f"{filename}-{seen[filename]}"
        media = entry.get("mediaType") or "application/octet-stream"
        files.append(FoundFile(blob, name, hexdigest, media))
    return tuple(files)


def find_hf_cache(root: Path) -> list[Found]:
    if not root.is_dir():
        raise ConfigError(f"{root} is not a Hugging Face cache directory")
    found: dict[tuple[str, str], Found] = {}
    for repo_dir in sorted(root.glob("models--*--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/")
        main = repo_dir / "refs" / "main"
        main_rev = main.read_text().strip() if main.is_file() else None
        snaps = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.name == main_rev)
        for snap in snaps:  # refs/main's snapshot last: its files win
            for model in _gguf_models(snap):
                f0 = model[0].relative_to(snap).as_posix()
                files = tuple(_hf_file(snap, p) for p in model)
                item = Found(f"hf.co/{repo}", tag_of(f0), files,
                             f"hf://{repo}/{f0}@{snap.name}", snap.name)
                found[(item.name, item.tag)] = item
    return [found[k] for k in sorted(found)]


def _gguf_models(snap: Path) -> list[list[Path]]:
    """Each GGUF model in a snapshot: one file, or all parts of a split one, in order."""
    models: dict[str, list[Path]] = {}
    for path in sorted(snap.rglob("*.gguf")):
        m = _SHARD.search(path.name)
        key = str(path) if m is None else str(path)[: -len(m.group(0))]
        models.setdefault(key, []).append(path)
    return [
        parts for parts in models.values()
        if (m := _SHARD.search(parts[0].name)) is None or len(parts) == int(m.group(2))
    ]


def _hf_file(snap: Path, path: Path) -> FoundFile:
    # The snapshot entry is a link to blobs/ETAG; an LFS file's ETAG is its sha256.
    etag = path.resolve().name
    return FoundFile(path.resolve(), path.relative_to(snap).as_posix(),
                     etag if _HEX.fullmatch(etag) else None)


def import_found(store: ModelStore, item: Found,
                 progress: Callable[[FoundFile], None] | None = None) -> Manifest:
    """Hard-link (or copy) every file of ``item`` into ``store`` and write its manifest."""
    layers = []
    for f in item.files:
        if progress is not None:
            progress(f)
        layer = store.import_blob(f.path, expected=f.sha256)
        layers.append(type(layer)(layer.digest, layer.size, f.filename, f.media_type))
    weights = next((f for f in item.files if f.filename.endswith((".gguf", ".onnx"))), None)
    fmt = sniff_format(weights.path, weights.filename) if weights is not None else "other"
    manifest = Manifest(name=item.name, tag=item.tag, layers=tuple(layers),
                        source=item.source, revision=item.revision, format=fmt)
    store.put_manifest(manifest)
    return manifest
