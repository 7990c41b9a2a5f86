#!/usr/bin/env bash
# session 14, call 3: where the engine's 4-sequence step loses to a bare context (lanes_probe),
# and GGML_CUDA_GRAPH_OPT=1 against unset, in process
set -u
export SRC=$PWD
tools/gpu_bench.sh model >/dev/null || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PYTHONUNBUFFERED=1 PATH=$PWD/.gpu/build/site/bin:$PATH
R=$OUT
p() { timeout 90 python3 tools/profile_step.py --no-cprofile --steps 600 "$@" 2>&1 | grep -v '^llama.cpp' | grep -v '^ *\[' ; }
q() { timeout 90 python3 tools/lanes_probe.py --steps 600 --lanes 1 "$@" 2>&1 | grep -E '^ +[0-9]' ; }
python3 -m edge_llm plan 2>&1 | grep -v '^llama.cpp' > $R/plan.txt
{ for i in 1 2; do
  for g in unset 1; do
    if [ $g = 1 ]; then export GGML_CUDA_GRAPH_OPT=1; else unset GGML_CUDA_GRAPH_OPT; fi
    echo "== round $i GRAPH_OPT=$g"
    echo "-- probe, one context of 4 (1 16)"; q --seqs 1 4 16
    echo "-- engine, 4, default plan"; p --seqs 4
    echo "-- engine, 4, planner.lanes=false"; EDGE_LLM_PLANNER_LANES=false p --seqs 4
    echo "-- engine, 1"; p --seqs 1
  done
done; } > $R/profile-exp3.txt 2>&1
echo done $SECONDS
grep -E '==|--|sequences,|^ +[0-9]|GPU wait|Python' $R/profile-exp3.txt
