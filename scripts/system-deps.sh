#!/usr/bin/env bash
# Debian packages the build needs (a C/C++ toolchain and cmake for llama-cpp-python's source build).
# Installs only what is missing, so a prepared machine pays nothing.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v cmake >/dev/null || need+=(cmake)
command -v make >/dev/null || need+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The dashboard's browser tests (make test) drive Debian's Chromium through Playwright.
[ -x /usr/bin/chromium ] || need+=(chromium)
# `system-deps.sh bench` (make bench-gateway only): nginx with its echo module, and wrk.
if [ "${1:-}" = bench ]; then
  command -v nginx >/dev/null || need+=(nginx)
  [ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || need+=(libnginx-mod-http-echo)
  command -v wrk >/dev/null || need+=(wrk)
fi
# `system-deps.sh cuda` / `vulkan` (make setup GPU=...): the GPU toolchain for llama.cpp.
# CUDA comes from Debian's non-free nvidia-cuda-toolkit (the NVIDIA driver is the host's).
if [ "${1:-}" = cuda ]; then
  command -v nvcc >/dev/null || need+=(nvidia-cuda-toolkit)
fi
if [ "${1:-}" = vulkan ]; then
  [ -e /usr/include/vulkan/vulkan.h ] || need+=(libvulkan-dev)
  command -v glslc >/dev/null || need+=(glslc)
fi
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing system packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
