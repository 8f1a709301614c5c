"""``--gpu-layers``: passed to llama.cpp; on a build without GPU support, a clear refusal."""

from __future__ import annotations

import pytest

from inferno.core.config import BackendSettings
from inferno.core.errors import ConfigError
from inferno.core.settings import load_settings

llama_cpp = pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed")


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNO_BACKEND_GPU_LAYERS", "-1")
    assert load_settings(BackendSettings).gpu_layers == -1
    with pytest.raises(ConfigError, match="gpu_layers"):
        load_settings(BackendSettings, cli={"gpu_layers": -2})


@pytest.mark.skipif(llama_cpp.llama_supports_gpu_offload(), reason="a GPU build offloads")
def test_a_cpu_build_refuses_gpu_layers_naming_the_fix() -> None:
    from inferno.backend.engines.llamacpp import LlamaCppEngine
    from inferno.models.catalog import resolve_model

    engine = LlamaCppEngine(str(resolve_model("smollm2-135m").path), model_id="m", n_ctx=256,
                            gpu_layers=-1)
    with pytest.raises(ConfigError, match=r"no GPU support.*make setup GPU=cuda"):
        engine.load()
