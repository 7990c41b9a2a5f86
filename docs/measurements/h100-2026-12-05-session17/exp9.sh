#!/usr/bin/env bash
# session 17, call 3: model; decodes launched ahead (overlap auto) against off in process
# (profile_step, 2 rounds alternating); the GPU tests (test_overlap.py among them), overlap auto.
# Runs the committed tree carried as .gpu/head.tar.gz (unpacked in call 1 to .gpu/build/head).
set -u
G=$PWD/.gpu/build
tools/gpu_bench.sh model >/dev/null || exit 1
export SRC=$G/head PYTHONPATH=$G/site:$G/head PYTHONUNBUFFERED=1 PATH=$G/site/bin:$PATH
R=$OUT
cd $SRC
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m edge_llm plan 2>&1 | grep -v '^llama.cpp' > $R/plan.txt
{ for r in ${PROUNDS:-1 2}; do for n in 4 1 16; do for m in auto off; do
    echo "== round $r seqs $n overlap $m"
    EDGE_LLM_MODEL_OVERLAP_STEPS=$m timeout 60 python3 tools/profile_step.py --no-cprofile --steps 600 --seqs $n 2>&1 | grep -v '^llama.cpp'
  done; done; done
} 2>&1 | tee $R/profile-overlap.txt | grep "us/step, \|==\|Python"
echo "profiles $SECONDS"
EDGE_LLM_MODEL_OVERLAP_STEPS=auto timeout 280 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kv_slots.py tests/test_lookup.py tests/test_lanes.py tests/test_device_greedy.py tests/test_overlap.py > $R/gpu-tests.txt 2>&1; tail -4 $R/gpu-tests.txt
echo "tests $SECONDS"
