#!/usr/bin/env bash
# session 20, machine 3: the tree with the stream interval grown beyond 4 streams (696d85e): bench, kiosk
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tools/gpu_bench.sh model || exit 1
t0=$(date +%s)
(export PYTHONPATH=$PWD/.gpu/build/site:$PWD; python3 -m pytest -q -p no:cacheprovider tests/test_overlap.py tests/test_stream_interval.py > $OUT/tests.txt 2>&1); tail -1 $OUT/tests.txt; echo "tests $(($(date +%s)-t0)) s"
tools/gpu_bench.sh bench 3 default > $OUT/bench.log 2>&1; grep -E 'streams,|^edge-llm|^llama-server|engine,' $OUT/bench.log ; echo "bench $(($(date +%s)-t0)) s"
tools/gpu_bench.sh kiosk 1 > $OUT/kiosk.log 2>&1; tail -8 $OUT/kiosk.log; echo "kiosk $(($(date +%s)-t0)) s"
