#!/usr/bin/env bash
# session 21: the final tree (BackgroundShare.beside, the wait at 1.0 bounded) on the GPU: plan, GPU tests, one kiosk round
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name --format=csv,noheader
tools/gpu_bench.sh model || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PATH=$PWD/.gpu/build/site/bin:$PATH PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 120 python3 -m edge_llm plan > $OUT/plan.txt 2>&1; grep -E "chat_slowdown|max_batch_size " $OUT/plan.txt; echo "plan $(($(date +%s)-t0)) s"
tools/gpu_bench.sh test > $OUT/tests.log 2>&1; grep -E "passed|failed" $OUT/tests.log | tail -3; echo "tests $(($(date +%s)-t0)) s"
for r in 3; do
  timeout 150 python3 tools/kiosk_bench.py --rounds 1 --chars 497161 --tokens 256 --seed $r --out $OUT/kiosk-gpu-auto-$r.json > $OUT/kiosk-auto-$r.log 2>&1
  echo "auto round $r: $(grep -E '^ +1 ' $OUT/kiosk-auto-$r.log) chat_slowdown $(grep -o '"chat_slowdown": [0-9.]*' $OUT/kiosk-gpu-auto-$r.json | sort -u | tr '\n' ' ')"; echo "  $(($(date +%s)-t0)) s"
done
