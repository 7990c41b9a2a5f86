#!/usr/bin/env bash
# session 20, call C of machine 2: where serving over HTTP costs the 4- and 16-stream steps
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tools/gpu_bench.sh model || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PATH=$PWD/.gpu/build/site/bin:$PATH PYTHONUNBUFFERED=1
LS=$PWD/.gpu/build/server/bin/llama-server
t0=$(date +%s)
python3 -m pytest -q -p no:cacheprovider tests/test_overlap.py > $OUT/test-overlap.txt 2>&1; tail -2 $OUT/test-overlap.txt; echo "test $(($(date +%s)-t0)) s"
python3 tools/bench.py --targets in-process http native --native $LS --native-args "-ngl 99" --concurrency 4 16 --tokens 256 --rounds 2 --json $OUT/bench-inproc.json > $OUT/bench-inproc.txt 2>&1
grep -E "^(in-|edge|llama)|engine,|streams," $OUT/bench-inproc.txt; echo "inproc $(($(date +%s)-t0)) s"
for r in 1 2; do for v in 20 50 100; do
  python3 tools/bench.py --targets http --concurrency 4 16 --tokens 256 --set limits.stream_interval_ms=$v --json $OUT/bench-interval-$v-$r.json > $OUT/i.txt 2>&1
  echo "interval $v round $r: $(grep -E '^edge' $OUT/i.txt | awk '{print $3": "$4" tok/s, TPOT "$8}' | tr '\n' ' ') $(grep -E 'engine,' $OUT/i.txt | sed 's/.*streams: //' | tr '\n' ' ')"
done; done; echo "interval $(($(date +%s)-t0)) s"
