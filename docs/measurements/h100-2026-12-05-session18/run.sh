#!/usr/bin/env bash
# session 18: the committed tree 3df4ddd on the GPU: tests, bench, mixed, kiosk
set -u
export OUT
echo "revision 3df4ddd"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tools/gpu_bench.sh model || exit 1
t0=$(date +%s)
tools/gpu_bench.sh test > $OUT/tests.log 2>&1; tail -6 $OUT/tests.log; echo "tests $(($(date +%s)-t0)) s"
tools/gpu_bench.sh bench 3 default > $OUT/bench.log 2>&1; grep -E 'streams,|^edge-llm|^llama-server' $OUT/bench.log ; echo "bench $(($(date +%s)-t0)) s"
tools/gpu_bench.sh mixed 3 > $OUT/mixed.log 2>&1; tail -12 $OUT/mixed.log; echo "mixed $(($(date +%s)-t0)) s"
timeout 240 tools/gpu_bench.sh kiosk 2 > $OUT/kiosk.log 2>&1; tail -10 $OUT/kiosk.log; echo "kiosk $(($(date +%s)-t0)) s"
