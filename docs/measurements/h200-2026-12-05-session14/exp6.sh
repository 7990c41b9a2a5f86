#!/usr/bin/env bash
# session 14, last call: the engine's Python per step on this host (stand-in backend; micro-timings
# with the real model), then the mixed workload against llama-server, 2 rounds
set -u
export SRC=$PWD
tools/gpu_bench.sh model >/dev/null || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PYTHONUNBUFFERED=1 PATH=$PWD/.gpu/build/site/bin:$PATH
R=$OUT
{ for n in 1 4 16; do python3 .gpu/py_overhead.py $n; done
  timeout 120 python3 .gpu/micro.py 2>&1 | grep -v '^llama.cpp' | head -12
  timeout 60 python3 tools/profile_step.py --no-cprofile --steps 600 --seqs 4 2>&1 | grep -v '^llama.cpp'
} 2>&1 | tee $R/python-overhead.txt
echo "overhead $SECONDS"
timeout 400 tools/gpu_bench.sh mixed 2 2>&1 | tail -6
echo "mixed $SECONDS"
