"""Greedy tokens picked on the device (llama.cpp's backend sampling: an argmax in the step's own
graph, no row of logits copied to the host), as the daemon does with llama.cpp on a GPU when
model.gpu_greedy is set (off by default: no faster on an H200). Here the CPU backend runs the
same sampler graph, forced on: every request's tokens must be what the same engine gives with
every row's logits on the host, greedy ones and seeded sampling and logprobs beside them, as the
slots switch between the two kinds."""

from dataclasses import replace

from conftest import make_config

from edge_llm import appliance, planner
from edge_llm.engine.backends.llamacpp import LlamaCppBackend
from edge_llm.engine.request import SamplingParams
from edge_llm.telemetry.host import HostSource

PROMPTS = ["Once upon a time", "List the days of the week.", "What is 2 + 2?", "Name three colors."]
GREEDY = SamplingParams(temperature=0)
KINDS = [GREEDY, GREEDY, SamplingParams(temperature=0.8, seed=7), SamplingParams(temperature=0, logprobs=2)]


def _engine(tmp_path, device_greedy: bool, monkeypatch):
    cfg = make_config(
        **{
            "daemon.state_dir": str(tmp_path),
            "model.kv_layout": "per_slot",
            "model.gpu_greedy": str(device_greedy).lower(),
            "limits.max_batch_size": 4,
            "limits.prefix_cache_slots": 4,
            "limits.kv_cache_tokens": 8 * 512,
            "limits.max_seq_len": 512,
        }
    )
    real_plan, real_create = planner.plan, LlamaCppBackend.create_context
    # two lanes (contexts), so a sequence's local id in its lane is what the sampler is attached by
    monkeypatch.setattr(planner, "plan", lambda *a: replace(real_plan(*a), lanes=2, lane_size=2))
    if device_greedy:  # as on a GPU (appliance turns it on only where the model runs on one)
        monkeypatch.setattr(
            LlamaCppBackend, "create_context", lambda self, shape: real_create(self, replace(shape, device_greedy=True))
        )
    try:
        return appliance.build_engine(cfg, HostSource().read())
    finally:
        monkeypatch.setattr(planner, "plan", real_plan)
        monkeypatch.setattr(LlamaCppBackend, "create_context", real_create)


def _rounds(engine, backend) -> list[list]:
    """Two rounds of the four prompts together; in the second the kinds move one slot on."""
    outputs = []
    for shift in (0, 1):
        kinds = KINDS[shift:] + KINDS[:shift]
        reqs = [
            engine.make_request(backend.tokenize(f"{t} ({shift})", True), k, 24)[0]
            for t, k in zip(PROMPTS, kinds, strict=True)
        ]
        # submitted from the engine thread in one call: the loop takes all four before its next
        # step, so both engines batch them alike (threads racing to submit made batches differ,
        # and greedy text can part at a near-tie)
        engine.call(lambda reqs=reqs: [engine.submit(r) for r in reqs])
        for r in reqs:
            list(engine.stream(r))
        outputs.append([(r.output_tokens, [lp.token for lp in r.logprobs]) for r in reqs])
    return outputs


def test_device_greedy_gives_the_host_argmax_and_leaves_other_sampling_alone(tmp_path, monkeypatch):
    backend, _, engine = _engine(tmp_path / "host", False, monkeypatch)
    try:
        assert not any(c.device for c in backend.contexts)
        host = _rounds(engine, backend)
    finally:
        engine.stop()
        backend.close()
    backend, _, engine = _engine(tmp_path / "device", True, monkeypatch)
    try:
        contexts = backend.contexts
        assert len(contexts) == 2 and all(c.device and all(c.attached) for c in contexts)
        device = _rounds(engine, backend)
        switches = sum(c.num_switches for c in contexts)
        attached, slots = sum(sum(c.attached) for c in contexts), sum(len(c.chains) for c in contexts)
    finally:
        engine.stop()
        backend.close()
    assert all(tokens for rnd in device for tokens, _ in rnd)
    assert device == host  # greedy, seeded sampling and logprobs alike, token for token
    for rnd in device:  # the logprobs request got its logprobs (its logits came to the host)
        assert sum(1 for tokens, lps in rnd if lps and lps == tokens[: len(lps)] and len(lps) >= len(tokens) - 1) == 1
    # every slot started attached; the sampling and logprobs requests' slots were detached, and a
    # slot that served one kind then the other switched back (a new chain: llama.cpp inits one once)
    assert switches >= 3 and 2 <= attached <= slots - 2, (switches, attached, slots)
