#!/usr/bin/env bash
# session 21: limits.chat_enough_tok_s (100, the new default) against 0 (chat_slowdown alone) on the GPU
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name --format=csv,noheader
tools/gpu_bench.sh model || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PATH=$PWD/.gpu/build/site/bin:$PATH PYTHONUNBUFFERED=1
t0=$(date +%s)
tools/gpu_bench.sh test > $OUT/tests.log 2>&1; grep -E "passed|failed" $OUT/tests.log | tail -3; echo "tests $(($(date +%s)-t0)) s"
for r in 1 2 3; do for v in 100 0; do
  if [ $((r % 2)) = 0 ]; then v=$((100 - v)); fi  # alternate which goes first
  EDGE_LLM_LIMITS_CHAT_ENOUGH_TOK_S=$v timeout 150 python3 tools/kiosk_bench.py --rounds 1 --chars 497161 --tokens 256 --seed $r \
    --out $OUT/kiosk-gpu-enough$v-$r.json > $OUT/kiosk-enough$v-$r.log 2>&1
  echo "enough=$v round $r: $(grep -E '^ +1 ' $OUT/kiosk-enough$v-$r.log)"; echo "  $(($(date +%s)-t0)) s"
done; done
tools/gpu_bench.sh mixed 2 > $OUT/mixed.log 2>&1; tail -8 $OUT/mixed.log; echo "mixed $(($(date +%s)-t0)) s"
