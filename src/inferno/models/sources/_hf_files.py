"""Which files of a Hugging Face repo an ``hf://`` reference means.

A GGUF repo holds one file per quantisation (``model-Q4_K_M.gguf``), sometimes split into
parts (``model-Q4_K_M-00001-of-00002.gguf``) that only load together, plus vision
projectors (``mmproj-*.gguf``) that are never the model itself. The quant is matched as a
word, case-insensitively, so ``:Q4_K`` does not also pick ``Q4_K_M`` and ``Q4_K_S``.
"""

from __future__ import annotations

import re

from inferno.core.errors import ModelNotFound, ModelSourceError

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def pick_files(ref: str, file: str | None, quant: str | None, names: list[str]) -> list[str]:
    """The repo files ``ref`` selects, in load order; a split GGUF comes whole."""
    if file is not None:
        if file not in names:
            raise ModelNotFound(f"{ref}: the repo has no file {file}")
        return _whole(ref, file, names)
    weights = [
        n
        for n in names
        if n.lower().endswith(".gguf") and not n.rsplit("/", 1)[-1].lower().startswith("mmproj")
    ]
    if quant is not None:
        word = re.compile(rf"(?<![a-z0-9]){re.escape(quant)}(?![a-z0-9_])", re.IGNORECASE)
        weights = [n for n in weights if word.search(n.rsplit("/", 1)[-1])]
        if not weights:
            raise ModelNotFound(
                f"{ref}: no .gguf file for quant {quant}; the repo has: "
                + _listing([n for n in names if n.lower().endswith(".gguf")])
            )
    if not weights:
        raise ModelNotFound(f"{ref}: the repo has no .gguf file; it has: {_listing(names)}")
    models = {_model_of(n) for n in weights}
    if len(models) > 1:
        hint = "a :QUANT" if quant is None else "the /FILE"
        raise ModelSourceError(
            f"{ref}: ambiguous, name {hint}; candidates: " + _listing(sorted(models))
        )
    return _whole(ref, weights[0], names)


def tag_of(file: str) -> str:
    """The store tag of a file chosen by name: its stem, without a split suffix."""
    return _model_of(file).rsplit("/", 1)[-1].removesuffix(".gguf")


def _whole(ref: str, file: str, names: list[str]) -> list[str]:
    """``file`` and, when it is part of a split GGUF, every part, in order."""
    m = _SHARD.search(file)
    if m is None:
        return [file]
    total = int(m.group(2))
    base = file[: m.start()]
    parts = [f"{base}-{i:05d}-of-{m.group(2)}.gguf" for i in range(1, total + 1)]
    missing = [p for p in parts if p not in names]
    if missing:
        raise ModelSourceError(f"{ref}: split GGUF {base} lacks parts: {_listing(missing)}")
    return parts


def _model_of(file: str) -> str:
    m = _SHARD.search(file)
    return file if m is None else file[: m.start()] + ".gguf"


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") or "nothing"
