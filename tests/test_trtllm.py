"""Contract tests of the TensorRT-LLM backend against a FAKE tensorrt_llm (tests/fakes/),
built from the documented v0.12.0-jetson signatures. They check our side of the contract
only; nothing here proves the real TensorRT-LLM behaves the same."""

import importlib.util
import inspect
import json
import sys
import time
from pathlib import Path

import pytest

from edge_llm.engine.request import SamplingParams

FAKES = Path(__file__).parent / "fakes"
FAKED = ("tensorrt_llm", "transformers", "torch")
REAL_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None and not str(
    importlib.util.find_spec("tensorrt_llm").origin).startswith(str(FAKES))


@pytest.fixture()
def fake_trtllm(monkeypatch):
    if REAL_TRTLLM:
        pytest.skip("the real tensorrt_llm is installed: the contract is checked against it below")
    monkeypatch.syspath_prepend(str(FAKES))
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in FAKED:
            del sys.modules[name]


def make_engine_dir(tmp_path: Path, **manifest_overrides) -> Path:
    d = tmp_path / "llama-3-8b-int4"
    (d / "tokenizer").mkdir(parents=True)
    (d / "rank0.engine").write_bytes(b"\0" * 4096)
    (d / "config.json").write_text(json.dumps({
        "pretrained_config": {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                              "hidden_size": 4096, "vocab_size": 128256, "max_position_embeddings": 8192},
        "build_config": {"max_batch_size": 4, "max_input_len": 2048, "max_seq_len": 3072,
                         "max_num_tokens": 2304}}))
    manifest = {"complete": True, "tensorrt_llm_version": "0.12.0", "gpu_arch": "sm_87",
                "source_model": "/models/Meta-Llama-3-8B-Instruct", **manifest_overrides}
    (d / "edge-llm-manifest.json").write_text(json.dumps(manifest))
    return d


def start_engine(engine_dir):
    from edge_llm import appliance, config, profiles
    cfg = config.load(env={}, overrides=[("model.backend", "trtllm"), ("model.path", str(engine_dir)),
                                         ("model.warmup", "false")])
    return appliance.build_engine(cfg, profiles.DEVICES["agx-orin-64gb"])


def test_plan_maps_to_runner_kwargs_and_engine_limits_cap_it(fake_trtllm, tmp_path):
    from tensorrt_llm import runtime
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        (engine_dir, kwargs), = runtime.CALLS[-1:]
        assert engine_dir == str(tmp_path / "llama-3-8b-int4")
        assert kwargs["use_mmap"] is True
        assert kwargs["max_tokens_in_paged_kv_cache"] == plan.kv_cache_tokens
        assert kwargs["kv_cache_enable_block_reuse"] is True and kwargs["enable_chunked_context"] is True
        assert (kwargs["max_batch_size"], kwargs["max_input_len"], kwargs["max_output_len"]) == (
            plan.max_batch_size, plan.max_input_len, plan.max_output_len)
        # runtime limits never exceed the engine's build limits
        assert plan.max_batch_size <= 4 and plan.max_input_len <= 2048 and plan.max_seq_len <= 3072
        assert backend.profile.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
        assert backend.profile.activation_bytes > 0  # fixed at build time, taken as such
    finally:
        engine.stop()


def test_streamed_outputs_become_deltas_and_cancel_reaches_the_executor(fake_trtllm, tmp_path):
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        req, _ = engine.make_request(backend.tokenize("hello there"), SamplingParams(temperature=0), 5)
        outs = list(engine.generate(req))
        assert "".join(o.text for o in outs) == " w100 w101 w102 w103 w104"
        assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 5
        sent = backend.executor.enqueued[-1]
        assert sent.streaming and sent.max_new_tokens == 5 and sent.sampling_config.top_k == 1

        long, _ = engine.make_request(backend.tokenize("tell me more"), SamplingParams(temperature=0.7), 400)
        engine.submit(long)
        stream = engine.stream(long)
        next(stream)
        stream.close()  # the consumer went away
        deadline = time.monotonic() + 5
        while long.seq_id not in backend.executor.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert long.seq_id in backend.executor.cancelled and long.finish_reason == "cancelled"
        assert engine.num_running == 0
    finally:
        engine.stop()


def test_stop_string_ends_the_request_in_the_executor_too(fake_trtllm, tmp_path):
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0, stop=("w102",)), 50)
        outs = list(engine.generate(req))
        assert "".join(o.text for o in outs) == " w100 w101 " and outs[-1].finish_reason == "stop"
        assert req.seq_id in backend.executor.cancelled
    finally:
        engine.stop()


@pytest.mark.parametrize("override, message", [
    ({"tensorrt_llm_version": "0.11.0"}, "built with TensorRT-LLM 0.11.0, this device has 0.12.0"),
    ({"gpu_arch": "sm_90"}, "built for sm_90, this GPU is sm_87"),
    ({"complete": False}, "did not finish"),
])
def test_engine_manifest_mismatch_is_refused_with_how_to_rebuild(fake_trtllm, tmp_path, override, message):
    from edge_llm.engine.backends.trtllm import ManifestError, TrtLlmBackend
    with pytest.raises(ManifestError, match=message) as e:
        TrtLlmBackend(make_engine_dir(tmp_path, **override))
    assert "tools/build_engine.py" in str(e.value)


def test_engine_without_manifest_is_refused(fake_trtllm, tmp_path):
    from edge_llm.engine.backends.trtllm import ManifestError, TrtLlmBackend
    d = make_engine_dir(tmp_path)
    (d / "edge-llm-manifest.json").unlink()
    with pytest.raises(ManifestError, match="has no edge-llm-manifest.json"):
        TrtLlmBackend(d)


def test_daemon_serves_the_same_api_on_the_trtllm_engine(fake_trtllm, tmp_path):
    """The server, planner, admission and metrics do not know which engine runs."""
    import openai
    from conftest import RunningDaemon, make_config
    d = RunningDaemon(make_config(**{"model.backend": "trtllm", "model.path": str(make_engine_dir(tmp_path)),
                                     "limits.kv_cache_tokens": 0, "limits.max_seq_len": 0,
                                     "daemon.state_dir": str(tmp_path / "state")}))
    try:
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(model=d.model_id, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3, temperature=0)
        assert r.choices[0].message.content == " w100 w101 w102" and r.choices[0].finish_reason == "length"
        assert d.daemon.runtime.plan.max_batch_size <= 4
    finally:
        d.stop()


def test_llamacpp_daemon_never_imports_tensorrt_llm(server):
    assert "tensorrt_llm" not in sys.modules


@pytest.mark.skipif(not REAL_TRTLLM, reason="the real tensorrt_llm is not installed here (Jetson only)")
def test_fake_signatures_match_the_real_package():
    sys.path.insert(0, str(FAKES))
    try:
        spec = importlib.util.spec_from_file_location("fake_runtime", FAKES / "tensorrt_llm/runtime/__init__.py")
        fake = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fake)
    finally:
        sys.path.remove(str(FAKES))
    from tensorrt_llm.runtime import ModelRunnerCpp
    real = inspect.signature(ModelRunnerCpp.from_dir).parameters
    for name in inspect.signature(fake.ModelRunnerCpp.from_dir).parameters:
        assert name in real, name


# -- tools/build_engine.py --dry-run -----------------------------------------------------------

def hf_checkpoint(tmp_path: Path) -> Path:
    m = tmp_path / "Meta-Llama-3-8B-Instruct"
    m.mkdir()
    (m / "config.json").write_text(json.dumps({"num_hidden_layers": 32, "num_attention_heads": 32,
                                               "num_key_value_heads": 8, "hidden_size": 4096, "vocab_size": 128256,
                                               "max_position_embeddings": 8192}))
    return m


@pytest.mark.parametrize("device, quant, expect", [
    ("agx-orin-64gb", "int4_awq", ["--qformat int4_awq", "--awq_block_size 128", "--max_batch_size 8",
                                   "--max_seq_len 4096", "--max_input_len 4095", "--max_num_tokens 264"]),
    ("agx-orin-32gb", "int4", ["--use_weight_only --weight_only_precision int4", "--max_batch_size 8",
                               "--max_seq_len 4096"]),
])
def test_build_engine_dry_run_for_two_devices(tmp_path, capsys, device, quant, expect):
    from tools import build_engine
    model = hf_checkpoint(tmp_path)
    assert build_engine.main(["--model", str(model), "--output", str(tmp_path / "engine"), "--device", device,
                              "--quant", quant, "--dry-run"]) == 0
    out = capsys.readouterr().out
    for flag in expect + ["--gemm_plugin float16", "--use_paged_context_fmha enable", "trtllm-build"]:
        assert flag in out, flag
    assert f"--output_dir {tmp_path / 'engine.partial'}" in out  # renamed only when complete
    assert not (tmp_path / "engine").exists() and not (tmp_path / "engine.partial").exists()


def test_doctor_reports_this_machine(capsys):
    from edge_llm.cli import main
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checks"]["llama_cpp"] == "0.3.36"
    assert report["checks"]["l4t_release"] is None and report["checks"]["tensorrt_llm"] is None
    assert any("not a Jetson" in a for a in report["advice"])
