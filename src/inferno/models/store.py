"""The content-addressed model store: immutable blobs named by their sha256, and manifests.

Layout under ``root`` (default ``<data_dir>/models``; ``--models-dir``/``INFERNO_MODELS_DIR``
move it)::

    blobs/sha256-<hex>            read-only, never rewritten; shared by every manifest naming it
    blobs/sha256-<hex>.lock       flock: one process downloads a blob, the others wait for it
    blobs/sha256-<hex>.partial    a download in progress (download.py), with a .json sidecar
    manifests/<name>/<tag>.json   the layers of one model, where it came from, its format
    quarantine/                   bytes that failed verification, kept for a post-mortem
    splits/<sha256 of part 1>/    a split GGUF's parts as links under their own file names,
                                  which is how llama.cpp finds parts 2..N beside part 1

Every write is atomic (a temporary name, fsync, rename), so a crash leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import orjson

from inferno.core.errors import ConfigError, ModelIntegrityError, ModelNotFound
from inferno.core.paths import data_dir

CHUNK = 1 << 20
SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
DEFAULT_TAG = "latest"


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str  # lowercase sha256 hex
    size: int
    filename: str
    media_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    tag: str
    layers: tuple[Layer, ...]
    source: str
    revision: str | None = None
    format: str = "other"  # gguf | onnx | other: from the first layer's magic
    created: float = field(default_factory=time.time)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = orjson.loads(data)
        layers = tuple(Layer(**layer) for layer in raw.pop("layers"))
        return cls(layers=layers, **raw)


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    digest: str
    actual: str  # the digest the bytes have now ("" when the blob is missing)
    quarantined: Path | None


def parse_ref(ref: str) -> tuple[str, str]:
    """``name[:tag]``: the tag is what follows the last ``:`` unless that holds a ``/``
    (``host:port/name`` is a name)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, DEFAULT_TAG
    check_name(name)
    check_part(tag, "tag")
    return name, tag


def check_part(part: str, what: str) -> None:
    if part in ("", ".", "..") or "/" in part or "\\" in part:
        raise ConfigError(f"invalid model {what} {part!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        raise ConfigError(f"invalid model {what} {part!r}: control characters")


def check_name(name: str) -> None:
    """A name becomes directories under manifests/: nothing may climb out of it."""
    if name.startswith("/") or not name:
        raise ConfigError(f"invalid model name {name!r}")
    for part in name.split("/"):
        check_part(part, "name")


def sniff_format(path: Path, filename: str = "") -> str:
    """gguf by its magic; onnx (a bare protobuf, no magic) by its name and first byte."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    if (filename or path.name).endswith(".onnx") and magic[:1] == b"\x08":  # ir_version
        return "onnx"
    return "other"


def hash_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


class ModelStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or data_dir() / "models").expanduser()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.quarantine = self.root / "quarantine"
        for d in (self.blobs, self.manifests, self.quarantine):
            d.mkdir(parents=True, exist_ok=True)

    # blobs

    def blob_path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"invalid sha256 digest {digest!r}")
        return self.blobs / f"sha256-{digest}"

    def weights_blob(self, manifest: Manifest) -> Path:
        """The blob of the manifest's weights: its first GGUF layer (an Ollama model lists
        its template and parameters beside it, in any order)."""
        for layer in manifest.layers:
            blob = self.blob_path(layer.digest)
            if not blob.is_file():
                raise ConfigError(
                    f"model '{manifest.ref}': blob sha256:{layer.digest} is missing from "
                    f"{self.root}; pull it again (inferno models pull {manifest.source})"
                )
            if sniff_format(blob, layer.filename) == "gguf":
                return blob
        raise ConfigError(
            f"model '{manifest.ref}' in {self.root} has no GGUF layer (format "
            f"{manifest.format}); serve a model directory by its path instead"
        )

    def weights_path(self, manifest: Manifest) -> Path:
        """The file an engine loads: the weights blob, or for a split GGUF (``NAME-00001-of-
        0000N.gguf`` and its siblings) part 1 in a directory of links that carry every part's
        own name. Links are made again whenever one is missing or points elsewhere."""
        first = self.weights_blob(manifest)
        parts = [layer for layer in manifest.layers if SPLIT_GGUF.search(layer.filename)]
        if len(parts) < 2:
            return first
        home = self.root / "splits" / parts[0].digest
        home.mkdir(parents=True, exist_ok=True)
        for layer in parts:
            link = home / Path(layer.filename).name
            target = self.blob_path(layer.digest)
            if not target.is_file():
                raise ConfigError(f"model '{manifest.ref}': part {layer.filename} "
                                  f"(sha256:{layer.digest}) is missing from {self.root}")
            if link.is_symlink() and link.resolve() == target.resolve():
                continue
            tmp = home / f".{link.name}.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)  # atomic: a concurrent loader sees the old link or the new
        return home / Path(parts[0].filename).name

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    @contextlib.contextmanager
    def try_lock(self, key: str) -> Iterator[bool]:
        """Yield True while holding the exclusive lock named ``key``, False when another
        holds it. The kernel drops the lock when its holder dies (even by SIGKILL)."""
        fd = os.open(self.blobs / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    def commit_blob(self, tmp: Path, digest: str) -> Path:
        """Move finished, verified bytes into place (same filesystem: an atomic rename)."""
        dest = self.blob_path(digest)
        tmp.chmod(0o444)
        tmp.replace(dest)
        fsync_dir(self.blobs)
        return dest

    def quarantine_file(self, path: Path, digest: str) -> Path:
        dest = self.quarantine / f"sha256-{digest}.{int(time.time() * 1000)}"
        path.replace(dest)
        return dest

    # manifests

    def _manifest_path(self, name: str, tag: str) -> Path:
        check_name(name)
        check_part(tag, "tag")
        return self.manifests / name / f"{tag}.json"

    def put_manifest(self, manifest: Manifest) -> None:
        for layer in manifest.layers:
            if not self.has_blob(layer.digest):
                raise ModelIntegrityError(f"{manifest.ref}: blob sha256:{layer.digest} missing")
        atomic_write(self._manifest_path(manifest.name, manifest.tag), manifest.to_json())

    def get_manifest(self, ref: str) -> Manifest:
        name, tag = parse_ref(ref)
        path = self._manifest_path(name, tag)
        try:
            return Manifest.from_json(path.read_bytes())
        except FileNotFoundError:
            raise ModelNotFound(f"model '{name}:{tag}' is not in {self.root}") from None

    def list(self) -> list[Manifest]:
        found = []
        for path in sorted(self.manifests.rglob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(Manifest.from_json(path.read_bytes()))
        return found

    def remove(
        self, ref: str, *, force: bool = False, in_use: Callable[[Manifest], bool] | None = None
    ) -> Manifest:
        """Remove a manifest (its blobs go at the next ``prune``)."""
        manifest = self.get_manifest(ref)
        if not force and in_use is not None and in_use(manifest):
            raise ConfigError(f"model '{manifest.ref}' is in use; stop it first or use --force")
        self._manifest_path(manifest.name, manifest.tag).unlink()
        parent = self._manifest_path(manifest.name, manifest.tag).parent
        while parent != self.manifests:  # empty name directories go too
            with contextlib.suppress(OSError):
                parent.rmdir()
            parent = parent.parent
        return manifest

    def tag(self, src: str, dst: str) -> Manifest:
        name, tag = parse_ref(dst)
        copy = replace(self.get_manifest(src), name=name, tag=tag, created=time.time())
        self.put_manifest(copy)
        return copy

    # maintenance

    def verify(self) -> builtins.list[VerifyProblem]:
        """Re-hash every blob; a blob whose bytes no longer match its name is quarantined."""
        problems: builtins.list[VerifyProblem] = []
        for path in sorted(self.blobs.glob("sha256-*")):
            if path.suffix:  # .lock, .partial, .json: not blobs
                continue
            digest = path.name.removeprefix("sha256-")
            actual, _ = hash_file(path)
            if actual != digest:
                problems.append(VerifyProblem(digest, actual, self.quarantine_file(path, digest)))
        for manifest in self.list():
            for layer in manifest.layers:
                if not self.blob_path(layer.digest).exists() and not any(
                    p.digest == layer.digest for p in problems
                ):
                    problems.append(VerifyProblem(layer.digest, "", None))
        return problems

    def prune(self) -> builtins.list[str]:
        """Delete blobs no manifest names; return their digests."""
        named = {layer.digest for m in self.list() for layer in m.layers}
        removed: builtins.list[str] = []
        for path in sorted(self.blobs.glob("sha256-*")):
            digest = path.name.removeprefix("sha256-")
            if path.suffix or digest in named:
                continue
            path.unlink()
            removed.append(digest)
        for home in sorted((self.root / "splits").glob("*")):  # links to parts now gone
            if home.name not in named:
                shutil.rmtree(home, ignore_errors=True)
        return removed

    def import_blob(self, path: Path, expected: str | None = None) -> Layer:
        """Put a local file into blobs: hard-linked when on the same filesystem (no copy, no
        extra space), else copied. The original is never modified: a hard link shares the
        inode, so the blob is not chmod-ed read-only in that case."""
        digest, size = hash_file(path)
        if expected is not None and digest != expected:
            raise ModelIntegrityError(
                f"{path}: expected sha256:{expected}, the file has sha256:{digest}"
            )
        if not self.has_blob(digest):
            tmp = self.blobs / f".import-{digest}.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)
                tmp.replace(self.blob_path(digest))
                fsync_dir(self.blobs)
            except OSError:  # another filesystem (EXDEV), or links not allowed
                shutil.copyfile(path, tmp)
                with tmp.open("rb") as f:
                    os.fsync(f.fileno())
                if hash_file(tmp)[0] != digest:  # changed while copying
                    tmp.unlink()
                    raise ModelIntegrityError(f"{path} changed while it was imported") from None
                self.commit_blob(tmp, digest)
        return Layer(digest, size, path.name)

    def import_file(self, path: Path, name: str, tag: str = DEFAULT_TAG) -> Manifest:
        if not path.is_file():
            raise ConfigError(f"{path} is not a file")
        layer = self.import_blob(path)
        manifest = Manifest(
            name=name,
            tag=tag,
            layers=(layer,),
            source=f"file://{path.resolve()}",
            format=sniff_format(path, path.name),
        )
        self.put_manifest(manifest)
        return manifest
