#!/usr/bin/env bash
# session 20, call B: the committed tree on the GPU (b0a9eaf's layout timing, test_overlap's gap report)
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
tools/gpu_bench.sh model || exit 1
t0=$(date +%s)
(export PYTHONPATH=$PWD/.gpu/build/site:$PWD; timeout 120 python3 -m edge_llm plan > $OUT/plan.txt 2>&1); grep -E "kv_layout|max_batch_size |lanes |prefill_chunk|calibration" $OUT/plan.txt | head; echo "plan $(($(date +%s)-t0)) s"
tools/gpu_bench.sh test > $OUT/tests.log 2>&1; grep -E "passed|failed|Error|assert|misses" $OUT/tests.log | tail -15; echo "tests $(($(date +%s)-t0)) s"
tools/gpu_bench.sh profile 1 4 > $OUT/profile.log 2>&1; cat $OUT/profile.log | head -30; echo "profile $(($(date +%s)-t0)) s"
tools/gpu_bench.sh bench 3 default > $OUT/bench.log 2>&1; grep -E 'streams,|^edge-llm|^llama-server' $OUT/bench.log ; echo "bench $(($(date +%s)-t0)) s"
tools/gpu_bench.sh mixed 2 > $OUT/mixed.log 2>&1; tail -12 $OUT/mixed.log; echo "mixed $(($(date +%s)-t0)) s"
