#!/usr/bin/env bash
# session 14, reduced: GPU tests on this tree; one bench round at the defaults; GRAPH_OPT in process at 4 and 16
set -u
export SRC=$PWD
tools/gpu_bench.sh model >/dev/null || exit 1
export PYTHONPATH=$PWD/.gpu/build/site:$PWD PYTHONUNBUFFERED=1 PATH=$PWD/.gpu/build/site/bin:$PATH
R=$OUT
timeout 200 tools/gpu_bench.sh test 2>&1 | tail -3
echo "tests $SECONDS"
timeout 150 tools/gpu_bench.sh bench 1 default >/dev/null 2>&1 || echo "bench failed"
echo "bench $SECONDS"
p() { timeout 60 python3 tools/profile_step.py --no-cprofile --steps 600 "$@" 2>&1 | grep "sequences,"; }
{ for i in 1 2; do for n in 4 16; do
  echo "seqs $n unset: $(env -u GGML_CUDA_GRAPH_OPT bash -c "$(declare -f p); p --seqs $n")"
  echo "seqs $n opt=1: $(GGML_CUDA_GRAPH_OPT=1 bash -c "$(declare -f p); p --seqs $n")"
done; done; } 2>&1 | tee $R/graph-opt-profile.txt
echo "profile $SECONDS"
python3 -c "
import json; d=json.load(open('$R/bench-gpu-default.json'))
for x in d: print(x['target'][:12], x['concurrency'], round(x['aggregate_tok_s']))
"
