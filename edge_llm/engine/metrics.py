"""Prometheus metrics of one engine, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EngineMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "edge_llm_time_to_first_token_seconds",
            "Arrival to first token",
            ["priority"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_time = Histogram(
            "edge_llm_queue_seconds", "Arrival to first admission", ["priority"], registry=r, buckets=LATENCY_BUCKETS
        )
        self.preemptions = Counter(
            "edge_llm_preemptions", "Sequences preempted (KV kept as a prefix, resumed later)", ["priority"], registry=r
        )
        self.resumptions = Counter("edge_llm_resumptions", "Preempted sequences admitted again", registry=r)
        self.interrupted_steps = Counter(
            "edge_llm_interrupted_steps",
            "Steps of background prefill stopped for an arriving interactive request (their chunks run again)",
            registry=r,
        )
        self.tpot = Histogram(
            "edge_llm_time_per_output_token_seconds",
            "Mean decode time per token after the first",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.prompt_tokens = Counter("edge_llm_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.reused_tokens = Counter(
            "edge_llm_prefix_reused_tokens", "Prompt tokens taken from the prefix cache", registry=r
        )
        self.generated_tokens = Counter("edge_llm_generated_tokens", "Tokens generated", registry=r)
        self.requests = Counter("edge_llm_requests_finished", "Finished requests", ["reason"], registry=r)
        self.rejected = Counter("edge_llm_requests_rejected", "Requests refused at admission", ["reason"], registry=r)
        self.preempted = Counter(
            "edge_llm_requests_preempted",
            "Requests ended for memory pressure (nothing else could be freed)",
            registry=r,
        )
        self.running = Gauge("edge_llm_requests_running", "Sequences in the running batch", registry=r)
        self.waiting = Gauge("edge_llm_requests_waiting", "Requests waiting for admission", registry=r)
        self.kv_used = Gauge("edge_llm_kv_tokens_reserved", "KV tokens reserved by running requests", registry=r)
        self.kv_cached = Gauge("edge_llm_kv_tokens_cached", "KV tokens held by the prefix cache", registry=r)
        self.kv_budget = Gauge("edge_llm_kv_tokens_budget", "KV tokens in the cache (the plan)", registry=r)
        self.step_seconds = Histogram(
            "edge_llm_engine_step_seconds", "Duration of one engine step", registry=r, buckets=LATENCY_BUCKETS
        )
        self.batch_tokens = Histogram(
            "edge_llm_engine_step_tokens",
            "Tokens in one engine step",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.admission_paused = Gauge("edge_llm_admission_paused", "1 while admission is paused", registry=r)
        for priority in ("interactive", "background"):  # every series exported from the start, at 0
            for metric in (self.ttft, self.queue_time, self.preemptions):
                metric.labels(priority)
        self.ram_available = Gauge("edge_llm_ram_available_bytes", "Available RAM (telemetry)", registry=r)
        self.swap_used = Gauge("edge_llm_swap_used_bytes", "Swap in use (telemetry)", registry=r)
        self._init_energy_and_heat(r)

    def _init_energy_and_heat(self, r: CollectorRegistry) -> None:
        """Issue 24: energy per step shared by tokens (telemetry/energy.py), thermal admission
        (telemetry/thermal.py)."""
        self.energy = Counter(
            "edge_llm_energy_joules",
            "Energy of engine steps, shared among their sequences by tokens processed",
            ["priority"],
            registry=r,
        )
        self.energy_tokens = Counter(
            "edge_llm_energy_tokens",
            "Tokens processed in metered steps (prompt and generated)",
            ["priority"],
            registry=r,
        )
        self.energy_unattributed = Counter(
            "edge_llm_energy_unattributed_joules", "Energy of steps with no sequence in them", registry=r
        )
        self.tokens_per_joule = Gauge(
            "edge_llm_tokens_per_joule",
            "Tokens processed per joule over the metered steps of the last minute",
            registry=r,
        )
        self.energy_source = Gauge(
            "edge_llm_energy_source_info",
            '1 for the energy source in use (source="unavailable" when there is none)',
            ["source"],
            registry=r,
        )
        self._energy_by_priority = {
            p: (self.energy.labels(p), self.energy_tokens.labels(p))  # per step: no lookups
            for p in ("interactive", "background")
        }
        self.thermal_level = Gauge(
            "edge_llm_thermal_level",
            "Thermal admission: 0 normal, 1 warm (batch cap lowered, background deferred), 2 hot (batch cap 1)",
            registry=r,
        )
        self.thermal_batch_cap = Gauge(
            "edge_llm_thermal_batch_cap",
            "Sequences admission allows now (the plan's batch, lowered near the throttle temperature)",
            registry=r,
        )
        self.thermal_background_deferred = Gauge(
            "edge_llm_thermal_background_deferred", "1 while background work waits for the device to cool", registry=r
        )
        self.thermal_headroom = Gauge(
            "edge_llm_thermal_headroom_celsius",
            "Degrees below the nearest throttle temperature (the hottest sensor against its limit)",
            registry=r,
        )

    def set_energy_source(self, name: str) -> None:
        self.energy_source.clear()
        self.energy_source.labels(name).set(1)

    def observe_energy(self, priority: str, joules: float, tokens: int) -> None:
        energy, energy_tokens = self._energy_by_priority[priority]
        energy.inc(joules)
        energy_tokens.inc(tokens)

    def observe_finished(self, req) -> None:
        self.requests.labels(req.finish_reason).inc()
        if req.first_token_time is None:
            return
        self.ttft.labels(req.priority.name.lower()).observe(req.first_token_time - req.arrival_time)
        n = len(req.output_tokens)
        if n > 1 and req.finish_time is not None:
            self.tpot.observe((req.finish_time - req.first_token_time) / (n - 1))
