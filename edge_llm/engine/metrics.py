"""Prometheus metrics of one engine, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EngineMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram("edge_llm_time_to_first_token_seconds", "Arrival to first token", ["priority"],
                              registry=r, buckets=LATENCY_BUCKETS)
        self.queue_time = Histogram("edge_llm_queue_seconds", "Arrival to first admission", ["priority"],
                                    registry=r, buckets=LATENCY_BUCKETS)
        self.preemptions = Counter("edge_llm_preemptions", "Sequences preempted (KV kept as a prefix, resumed later)",
                                   ["priority"], registry=r)
        self.resumptions = Counter("edge_llm_resumptions", "Preempted sequences admitted again", registry=r)
        self.interrupted_steps = Counter("edge_llm_interrupted_steps", "Steps of background prefill stopped for "
                                         "an arriving interactive request (their chunks run again)", registry=r)
        self.tpot = Histogram("edge_llm_time_per_output_token_seconds", "Mean decode time per token after the first",
                              registry=r, buckets=LATENCY_BUCKETS)
        self.prompt_tokens = Counter("edge_llm_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.reused_tokens = Counter("edge_llm_prefix_reused_tokens", "Prompt tokens taken from the prefix cache",
                                     registry=r)
        self.generated_tokens = Counter("edge_llm_generated_tokens", "Tokens generated", registry=r)
        self.requests = Counter("edge_llm_requests_finished", "Finished requests", ["reason"], registry=r)
        self.rejected = Counter("edge_llm_requests_rejected", "Requests refused at admission", ["reason"], registry=r)
        self.preempted = Counter("edge_llm_requests_preempted", "Requests ended for memory pressure (nothing else "
                                 "could be freed)", registry=r)
        self.running = Gauge("edge_llm_requests_running", "Sequences in the running batch", registry=r)
        self.waiting = Gauge("edge_llm_requests_waiting", "Requests waiting for admission", registry=r)
        self.kv_used = Gauge("edge_llm_kv_tokens_reserved", "KV tokens reserved by running requests", registry=r)
        self.kv_cached = Gauge("edge_llm_kv_tokens_cached", "KV tokens held by the prefix cache", registry=r)
        self.kv_budget = Gauge("edge_llm_kv_tokens_budget", "KV tokens in the cache (the plan)", registry=r)
        self.step_seconds = Histogram("edge_llm_engine_step_seconds", "Duration of one engine step", registry=r,
                                      buckets=LATENCY_BUCKETS)
        self.batch_tokens = Histogram("edge_llm_engine_step_tokens", "Tokens in one engine step", registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.admission_paused = Gauge("edge_llm_admission_paused", "1 while admission is paused", registry=r)
        for priority in ("interactive", "background"):  # every series exported from the start, at 0
            for metric in (self.ttft, self.queue_time, self.preemptions):
                metric.labels(priority)
        self.ram_available = Gauge("edge_llm_ram_available_bytes", "Available RAM (telemetry)", registry=r)
        self.swap_used = Gauge("edge_llm_swap_used_bytes", "Swap in use (telemetry)", registry=r)

    def observe_finished(self, req) -> None:
        self.requests.labels(req.finish_reason).inc()
        if req.first_token_time is None:
            return
        self.ttft.labels(req.priority.name.lower()).observe(req.first_token_time - req.arrival_time)
        n = len(req.output_tokens)
        if n > 1 and req.finish_time is not None:
            self.tpot.observe((req.finish_time - req.first_token_time) / (n - 1))
