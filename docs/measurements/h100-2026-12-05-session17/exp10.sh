#!/usr/bin/env bash
# session 17, call 4: ours against llama-server, overlap on and off, alternating rounds (odd: on first)
# (gpu_bench.sh bench, from the committed tree in .gpu/build/head)
set -u
G=$PWD/.gpu/build
export SRC=$G/head PYTHONPATH=$G/site:$G/head PYTHONUNBUFFERED=1 PATH=$G/site/bin:$PATH
R=$OUT
cd $SRC
b() { timeout 170 python3 tools/bench.py --targets http native --native $G/server/bin/llama-server --native-args "-ngl 99" \
      --concurrency 1 4 16 --tokens 256 --rounds 1 --json $R/bench-gpu-$1.json --set model.overlap_steps=$2 2>&1 \
      | grep -E "streams,|^edge-llm|^llama-server"; echo "  ($1 at $SECONDS s)"; }
for r in ${ROUNDS:-1 2}; do
  if [ $((r % 2)) = 1 ]; then b on$r on; b off$r off; else b off$r off; b on$r on; fi
done
