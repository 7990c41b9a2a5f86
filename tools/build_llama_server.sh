#!/usr/bin/env bash
# Build llama.cpp's own server (llama-server) from the vendor tree of the very llama-cpp-python
# sdist edge-llm uses, with the flags tools/setup.sh built it with (.venv/.llama-cpp-cmake-args),
# for side-by-side benchmarks (tools/mixed_bench.py). About 6 minutes on 2 cores.
#   tools/build_llama_server.sh            prints the path of the binary
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
FLAGS=$(cat .venv/.llama-cpp-cmake-args)
OUT=${EDGE_LLM_WHEEL_DIR:-$HOME/.cache/edge-llm}/llama-server-$VERSION-$(md5sum <<< "$FLAGS" | cut -c1-8)
if [ ! -x "$OUT/bin/llama-server" ]; then
  src=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$src" >&2
  tar -xzf "$src"/llama_cpp_python-"$VERSION".tar.gz -C "$src"
  read -r -a flags <<< "$FLAGS"
  cmake -S "$src/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$OUT" "${flags[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
  cmake --build "$OUT" --target llama-server -j "$(nproc)" >&2
  rm -rf "$src"
fi
echo "$OUT/bin/llama-server"
