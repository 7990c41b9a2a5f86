import cProfile
import ctypes
import pstats
import time

import llama_cpp as L
import numpy as np  # after llama_cpp (README: the other order segfaults in some CUDA images)

from edge_llm import appliance
from edge_llm import config as config_mod
from edge_llm.engine.request import SamplingParams
from edge_llm.telemetry.host import HostSource

cfg = config_mod.load(overrides=[("model.warmup", "false")])
backend, plan, engine = appliance.build_engine(cfg, HostSource().read())
engine.stop()
for i in range(4):
    req, _ = engine.make_request(backend.tokenize(f"Story {i}: once upon a time"), SamplingParams(temperature=0.0), 300)
    engine.scheduler.add(req)
for _ in range(10):
    engine.step()
ctx = backend.contexts[0].ctx
nv = backend.profile.n_vocab


def t(name, fn, n=2000):
    fn()
    s = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"{name:40s} {(time.perf_counter() - s) / n * 1e6:8.2f} us")


p = L.llama_get_logits(ctx)
t("llama_get_logits (synced)", lambda: L.llama_get_logits(ctx))
t("np.ctypeslib.as_array 4 rows", lambda: np.ctypeslib.as_array(p, shape=(4, nv)))
a = np.ctypeslib.as_array(p, shape=(4, nv))
t("argmax 4 rows", lambda: a.argmax(axis=1).tolist())
addr = ctypes.cast(p, ctypes.c_void_p).value
t(
    "np.frombuffer via from_address",
    lambda: np.frombuffer((ctypes.c_float * (4 * nv)).from_address(addr), dtype=np.float32).reshape(4, nv),
)
m = engine.metrics
t("metrics.step_seconds.observe", lambda: m.step_seconds.observe(0.001))
t("_update_gauges", engine._update_gauges)
t("energy.start+finish_step", lambda: (engine.energy.start(), engine.energy.finish([])))
t("scheduler.schedule (4 decoding)", lambda: None)
out = engine.scheduler.schedule()
context = backend.contexts[0]
outputs = backend._fill_batch(context.batch, out.chunks)
print(len(outputs), "outputs")
t("backend._sample (4 rows, no decode)", lambda: backend._sample(context, outputs))
t("backend._fill_batch", lambda: backend._fill_batch(context.batch, out.chunks))
pr = cProfile.Profile()
pr.enable()
for _ in range(2000):
    backend._sample(context, outputs)
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
