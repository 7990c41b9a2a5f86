#!/usr/bin/env bash
# session 20, machine 4: the final tree's GPU tests (the engine's interval change included) and the schema tests' real-model ones
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tools/gpu_bench.sh model || exit 1
t0=$(date +%s)
tools/gpu_bench.sh test > $OUT/gpu-tests.log 2>&1; tail -2 $OUT/gpu-tests.log; echo "tests $(($(date +%s)-t0)) s"
(export PYTHONPATH=$PWD/.gpu/build/site:$PWD PATH=$PWD/.gpu/build/site/bin:$PATH; python3 -m pytest -q -p no:cacheprovider tests/test_schema_inputs.py tests/test_stream_interval.py tests/test_api.py > $OUT/more-tests.log 2>&1); tail -3 $OUT/more-tests.log; echo "more tests $(($(date +%s)-t0)) s"
