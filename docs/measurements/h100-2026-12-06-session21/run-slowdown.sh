#!/usr/bin/env bash
# session 21: limits.chat_slowdown 1.0 (background held while a visitor decodes) against 1.5 (the default) on the GPU
set -u
export OUT
echo "revision ${REV:-?}"; nvidia-smi --query-gpu=name --format=csv,noheader
tools/gpu_bench.sh model || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PATH=$PWD/.gpu/build/site/bin:$PATH PYTHONUNBUFFERED=1
t0=$(date +%s)
for r in 1 2 3 4; do for v in 1.0 1.5; do
  if [ $((r % 2)) = 0 ]; then v=$([ $v = 1.0 ] && echo 1.5 || echo 1.0); fi  # alternate which goes first
  EDGE_LLM_LIMITS_CHAT_SLOWDOWN=$v timeout 150 python3 tools/kiosk_bench.py --rounds 1 --chars 497161 --tokens 256 --seed $r \
    --out $OUT/kiosk-gpu-slowdown$v-$r.json > $OUT/kiosk-slowdown$v-$r.log 2>&1
  echo "slowdown=$v round $r: $(grep -E '^ +1 ' $OUT/kiosk-slowdown$v-$r.log)"; echo "  $(($(date +%s)-t0)) s"
done; done
cd $OUT && tar -czf kiosk-json.tar.gz kiosk-gpu-*.json && rm kiosk-gpu-*.json
