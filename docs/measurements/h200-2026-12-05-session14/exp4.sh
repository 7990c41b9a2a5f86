#!/usr/bin/env bash
# session 14, call 4: bench rounds, GGML_CUDA_GRAPH_OPT unset against 1, alternating; tests with it
set -u
export SRC=$PWD
R=$OUT
for i in 1 2; do
  env -u GGML_CUDA_GRAPH_OPT timeout 200 tools/gpu_bench.sh bench 1 unset-$i >/dev/null 2>&1 || echo "unset $i failed"
  echo "unset $i $SECONDS"
  GGML_CUDA_GRAPH_OPT=1 timeout 200 tools/gpu_bench.sh bench 1 opt-$i >/dev/null 2>&1 || echo "opt $i failed"
  echo "opt $i $SECONDS"
done
python3 - <<'PY'
import json,glob,os
R=os.environ['OUT']
for f in sorted(glob.glob(R+'/bench-gpu-*.json')):
    d=json.load(open(f)); print(os.path.basename(f), [(x['target'][:8], x['concurrency'], round(x['aggregate_tok_s'])) for x in (d if isinstance(d,list) else d.get('results',[]))])
PY
