"""The daemon with every engine step traced (a probe, not part of edge-llm): `python step_trace.py
TRACE.jsonl serve ...` runs `edge-llm serve ...` with Scheduler.observe_step wrapped, writing one
JSON line a step: when it ended (monotonic s), its seconds in the backend, the visitors' decodes and
prompt tokens, the background's decodes, prompt tokens and prompt sequences, and the share's credit
after it. For where a visitor's stream loses its pace beside a summary job (session 22)."""

import json
import sys
import time

from edge_llm.engine.request import Priority
from edge_llm.engine.scheduler import Scheduler

path = sys.argv.pop(1)
sink = open(path, "w", buffering=1)  # noqa: SIM115 (open for the daemon's life)
observe = Scheduler.observe_step


def traced(self, out, seconds, stopped=False, wall=None):
    observe(self, out, seconds, stopped, wall=wall)
    vis = [c for c in out.chunks if c.request.priority == Priority.INTERACTIVE]
    bg = [c for c in out.chunks if c.request.priority == Priority.BACKGROUND]
    row = {
        "t": round(time.monotonic(), 5),
        "s": round(seconds, 5),
        "wall": None if wall is None else round(wall, 5),
        "vd": sum(c.decode for c in vis),
        "vp": sum(len(c.tokens) for c in vis if not c.decode),
        "bd": sum(c.decode for c in bg),
        "bp": sum(len(c.tokens) for c in bg if not c.decode),
        "bps": sum(not c.decode for c in bg),
        "credit_ms": round(self.share.credit_s * 1000, 3),
        "stopped": stopped,
    }
    sink.write(json.dumps(row) + "\n")


Scheduler.observe_step = traced

from edge_llm.cli import main  # noqa: E402

sys.exit(main())
