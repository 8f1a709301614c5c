"""Where Inferno keeps files: one rule for every component.

``data_dir()`` holds state worth keeping (the SQLite database); ``cache_dir()`` holds
artefacts that can be rebuilt (ONNX graphs, requantized GGUF files). ``INFERNO_DATA_DIR``
overrides both, so a test or a container can put everything in one place.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    if os.environ.get("INFERNO_DATA_DIR"):
        return Path(os.environ["INFERNO_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "inferno"


def cache_dir() -> Path:
    if os.environ.get("INFERNO_DATA_DIR"):
        return Path(os.environ["INFERNO_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inferno"
