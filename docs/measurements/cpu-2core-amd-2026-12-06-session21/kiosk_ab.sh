#!/usr/bin/env bash
# chat_slowdown 1.0 against 1.5 (the default) through the kiosk job, alternating, 2 rounds each
cd /work/main
D=docs/measurements/cpu-2core-amd-2026-12-06-session21
for r in ${ROUNDS:-1 2}; do
  for v in 1.0 1.5; do
    if [ $((r % 2)) = 0 ]; then v=$([ $v = 1.0 ] && echo 1.5 || echo 1.0); fi
    EDGE_LLM_LIMITS_CHAT_SLOWDOWN=$v .venv/bin/python tools/kiosk_bench.py --rounds 1 --seed $((510 + r)) \
      --out $D/kiosk-slowdown$v-$r.json > $D/kiosk-slowdown$v-$r.txt 2>&1
    echo "slowdown $v round $r: $(grep -E '^ +1 ' $D/kiosk-slowdown$v-$r.txt) $(date +%T)"
  done
done
