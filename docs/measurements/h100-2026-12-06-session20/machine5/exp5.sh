#!/usr/bin/env bash
# session 20, machine 5: the schema tests on the GPU with the wheels gpu_bench.sh pack now carries (jsonschema, hypothesis)
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name --format=csv,noheader
tools/gpu_bench.sh model || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PATH=$PWD/.gpu/build/site/bin:$PATH
t0=$(date +%s)
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_schema_inputs.py > $OUT/schema-tests.txt 2>&1; tail -3 $OUT/schema-tests.txt; echo "schema tests $(($(date +%s)-t0)) s"
