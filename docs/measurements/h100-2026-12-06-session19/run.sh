#!/usr/bin/env bash
# session 19: the committed tree on the GPU: the plan (calibration v5: layouts beside held sequences),
# tests (test_overlap's re-score), schema real-model tests, bench and mixed (1 round each: 11 minutes of device time were left)
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tools/gpu_bench.sh model || exit 1
t0=$(date +%s)
(export PYTHONPATH=$PWD/.gpu/build/site:$PWD; timeout 120 python3 -m edge_llm plan > $OUT/plan.txt 2>&1); grep -E "kv_layout|max_batch_size |lanes |prefill_chunk|calibration:" $OUT/plan.txt; echo "plan $(($(date +%s)-t0)) s"
tools/gpu_bench.sh test > $OUT/tests.log 2>&1; tail -4 $OUT/tests.log; echo "tests $(($(date +%s)-t0)) s"
(export PYTHONPATH=$PWD/.gpu/build/site:$PWD PATH=$PWD/.gpu/build/site/bin:$PATH; python3 -m pytest -q -p no:cacheprovider tests/test_schema_inputs.py -k "real_model or escapes or numeric_bounds or supported_keywords" > $OUT/schema-tests.log 2>&1); tail -3 $OUT/schema-tests.log; echo "schema tests $(($(date +%s)-t0)) s"
tools/gpu_bench.sh bench 1 default > $OUT/bench.log 2>&1; grep -E 'streams,|^edge-llm|^llama-server' $OUT/bench.log ; echo "bench $(($(date +%s)-t0)) s"
tools/gpu_bench.sh mixed 1 > $OUT/mixed.log 2>&1; tail -12 $OUT/mixed.log; echo "mixed $(($(date +%s)-t0)) s"
