# The engine's own Python per step at N decoding sequences, with a stand-in backend (no model)
import cProfile
import pstats
import sys
import time
import types

sys.path.insert(0, "tests")  # run from the repository root
from test_stream_interval import PLAN, OneToken

from edge_llm.engine.request import Request, SamplingParams
from edge_llm.engine.step_engine import StepEngine

n = int(sys.argv[1])
steps = 3000
# the tests' stand-in plan (test_stream_interval.PLAN), with room for n sequences
room = {"num_seqs": n + 4, "kv_cache_tokens": (n + 4) * 4096, "max_batch_size": n}
plan = types.SimpleNamespace(**{**vars(PLAN), **room})
engine = StepEngine(OneToken(), plan, stream_interval=0.02)
reqs = [Request([1, 2, 3, 4, 5], SamplingParams(temperature=0, max_tokens=steps + 100)) for _ in range(n)]
for r in reqs:
    r.stream = True
    engine._add(r)
for _ in range(5):
    engine.step()
t = time.perf_counter()
for _ in range(steps):
    engine.step()
dt = (time.perf_counter() - t) / steps
print(f"{n} sequences: {dt * 1e6:.1f} us a step of engine Python (stand-in backend)")
if len(sys.argv) > 2:
    p = cProfile.Profile()
    p.enable()
    for _ in range(1000):
        engine.step()
    p.disable()
    pstats.Stats(p).sort_stats("tottime").print_stats(18)
