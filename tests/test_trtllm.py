"""Contract tests of the TensorRT-LLM backend against a FAKE tensorrt_llm (tests/fakes/),
built from the documented v0.12.0-jetson signatures. They check our side of the contract
only; nothing here proves the real TensorRT-LLM behaves the same."""

import importlib.util
import inspect
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from edge_llm.engine.request import SamplingParams

FAKES = Path(__file__).parent / "fakes"
FAKED = ("tensorrt_llm", "transformers", "torch", "jtop")  # jtop: a daemon started here imports it too
REAL_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None and not str(
    importlib.util.find_spec("tensorrt_llm").origin
).startswith(str(FAKES))


def _forget(names) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            del sys.modules[name]


@pytest.fixture()
def fake_trtllm(monkeypatch):
    if REAL_TRTLLM:
        pytest.skip("the real tensorrt_llm is installed: the contract is checked against it below")
    _forget(FAKED)  # a real transformers imported by another test would shadow the fake
    monkeypatch.syspath_prepend(str(FAKES))
    yield
    _forget(FAKED)


@pytest.fixture()
def fake_trtllm_real_tokenizer(monkeypatch):
    """The FAKE tensorrt_llm with the REAL transformers (imported before the fakes' path)."""
    if REAL_TRTLLM:
        pytest.skip("the real tensorrt_llm is installed")
    pytest.importorskip("gguf")
    _forget(FAKED)
    transformers = pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(FAKES))
    yield transformers
    _forget(FAKED)


def make_engine_dir(tmp_path: Path, **manifest_overrides) -> Path:
    d = tmp_path / "llama-3-8b-int4"
    (d / "tokenizer").mkdir(parents=True)
    (d / "rank0.engine").write_bytes(b"\0" * 4096)
    (d / "config.json").write_text(
        json.dumps(
            {
                "pretrained_config": {
                    "num_hidden_layers": 32,
                    "num_attention_heads": 32,
                    "num_key_value_heads": 8,
                    "hidden_size": 4096,
                    "vocab_size": 128256,
                    "max_position_embeddings": 8192,
                },
                "build_config": {
                    "max_batch_size": 4,
                    "max_input_len": 2048,
                    "max_seq_len": 3072,
                    "max_num_tokens": 2304,
                    "plugin_config": {"use_paged_context_fmha": True},
                },
            }
        )
    )
    manifest = {
        "complete": True,
        "tensorrt_llm_version": "0.12.0",
        "gpu_arch": "sm_87",
        "source_model": "/models/Meta-Llama-3-8B-Instruct",
        **manifest_overrides,
    }
    (d / "edge-llm-manifest.json").write_text(json.dumps(manifest))
    return d


def start_engine(engine_dir, **overrides):
    from edge_llm import appliance, config, profiles

    items = {"model.backend": "trtllm", "model.path": str(engine_dir), "model.warmup": "false", **overrides}
    cfg = config.load(env={}, overrides=list(items.items()))
    return appliance.build_engine(cfg, profiles.DEVICES["agx-orin-64gb"])


def test_plan_maps_to_runner_kwargs_that_pass_from_dirs_checks(fake_trtllm, tmp_path):
    """from_dir asserts max_input_len + max_output_len <= the engine's max_seq_len (the old
    kwargs, input = seq - 1 and output = 1024, failed it on every load)."""
    from tensorrt_llm import runtime

    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        ((engine_dir, kwargs),) = runtime.model_runner_cpp.CALLS[-1:]
        assert engine_dir == str(tmp_path / "llama-3-8b-int4")
        assert kwargs["use_mmap"] is True
        assert kwargs["max_tokens_in_paged_kv_cache"] == plan.kv_cache_tokens
        assert 0 < kwargs["kv_cache_free_gpu_memory_fraction"] <= 0.95
        assert kwargs["kv_cache_enable_block_reuse"] is True and kwargs["enable_chunked_context"] is True
        assert kwargs["max_input_len"] == plan.max_input_len
        assert kwargs["max_input_len"] + kwargs["max_output_len"] == plan.max_seq_len <= 3072
        # runtime limits never exceed the engine's build limits; the output cap stays ours
        assert plan.max_batch_size <= 4 and plan.max_input_len <= 2048 and plan.max_output_len == 1024
        assert backend.profile.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
        assert backend.profile.activation_bytes > 0  # fixed at build time, taken as such
    finally:
        engine.stop()


def test_a_smaller_planned_batch_is_enforced_by_admission(fake_trtllm, tmp_path):
    """The executor schedules up to the engine's build-time batch (4): the plan's 2 is ours."""
    backend, plan, engine = start_engine(make_engine_dir(tmp_path), **{"limits.max_batch_size": "2"})
    try:
        reqs = [
            engine.make_request(backend.tokenize(f"question {i}"), SamplingParams(temperature=0), 20)[0]
            for i in range(5)
        ]
        for r in reqs:
            engine.submit(r)
        for r in reqs:
            assert list(engine.stream(r))[-1].finish_reason == "length"
        assert plan.max_batch_size == 2 and backend.executor.max_active == 2
        assert engine.scheduler.kv.num_reserved == 0  # every reservation returned
    finally:
        engine.stop()


def test_kv_pool_is_exactly_the_plan_when_the_default_fraction_would_shrink_it(fake_trtllm, tmp_path, monkeypatch):
    """KvCacheConfig takes the smaller of max_tokens and fraction x free memory (0.9 when not
    given): with 93% of the free memory planned for KV, only a computed fraction gives it all."""
    from tensorrt_llm.runtime import model_runner_cpp

    from edge_llm.engine.backends import trtllm

    d = make_engine_dir(tmp_path)
    backend, plan, engine = start_engine(d)
    engine.stop()
    free_after_load = int(plan.kv_cache_bytes / 0.93)
    monkeypatch.setattr(model_runner_cpp, "FREE_GPU_MEMORY_BYTES", free_after_load)
    monkeypatch.setattr(
        trtllm, "free_device_memory", lambda: free_after_load + plan.weights_bytes + plan.workspace_bytes
    )
    backend, plan2, engine = start_engine(d)
    try:
        assert plan2.kv_cache_tokens == plan.kv_cache_tokens
        assert abs(backend.executor.kv_pool_tokens - plan.kv_cache_tokens) <= 1
    finally:
        engine.stop()


def test_natural_stop_is_stop_and_the_cap_is_length(fake_trtllm, tmp_path):
    """EOS is never in output_token_ids: the finish reason comes from the count."""
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        backend.executor.eos_after = 3  # the model samples end_id as its third token
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 10)
        outs = list(engine.generate(req))
        assert "".join(o.text for o in outs) == " w100 w101" and outs[-1].finish_reason == "stop"
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 2)
        assert list(engine.generate(req))[-1].finish_reason == "length"
    finally:
        engine.stop()


def test_negative_seed_reaches_the_executor_as_uint64(fake_trtllm, tmp_path):
    from tensorrt_llm.bindings import executor as fake_executor

    with pytest.raises(TypeError):  # what the old code sent
        fake_executor.SamplingConfig(random_seed=-1)
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0.7, seed=-1), 2)
        assert list(engine.generate(req))[-1].finish_reason == "length"
        assert backend.executor.enqueued[-1].sampling_config.random_seed == 2**64 - 1
    finally:
        engine.stop()


def test_executor_error_ends_the_request_with_its_message(fake_trtllm, tmp_path):
    from edge_llm.engine.request import Request

    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        # past the engine's max_seq_len: only a hand-made request can ask for it
        req = Request(backend.tokenize("hi"), SamplingParams(temperature=0, max_tokens=5000))
        outs = list(engine.generate(req))
        assert outs[-1].finish_reason == "error" and "exceeds max_seq_len" in outs[-1].error
        assert engine.num_running == 0 and engine.scheduler.kv.num_reserved == 0
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


@pytest.mark.parametrize(
    "override, message",
    [
        ({"tensorrt_llm_version": "0.11.0"}, "built with TensorRT-LLM 0.11.0, this device has 0.12.0"),
        ({"gpu_arch": "sm_90"}, "built for sm_90, this GPU is sm_87"),
        ({"complete": False}, "did not finish"),
    ],
)
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

    d = RunningDaemon(
        make_config(
            **{
                "model.backend": "trtllm",
                "model.path": str(make_engine_dir(tmp_path)),
                "limits.kv_cache_tokens": 0,
                "limits.max_seq_len": 0,
                "daemon.state_dir": str(tmp_path / "state"),
            }
        )
    )
    try:
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model=d.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
        )
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
        path = FAKES / "tensorrt_llm/runtime/model_runner_cpp.py"
        spec = importlib.util.spec_from_file_location("fake_runtime", path)
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
    (m / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "hidden_size": 4096,
                "vocab_size": 128256,
                "max_position_embeddings": 8192,
            }
        )
    )
    return m


def trtllm_checkout(tmp_path: Path) -> Path:
    """The two scripts build_engine runs from a v0.12.0-jetson checkout (empty here)."""
    src = tmp_path / "TensorRT-LLM"
    for script in ("examples/llama/convert_checkpoint.py", "examples/quantization/quantize.py"):
        (src / script).parent.mkdir(parents=True, exist_ok=True)
        (src / script).write_text("")
    return src


@pytest.mark.parametrize(
    "device, quant, expect, absent",
    [
        (
            "agx-orin-64gb",
            None,
            [
                "examples/llama/convert_checkpoint.py",
                "--use_weight_only --weight_only_precision int4",
                "--max_batch_size 8",
                "--max_seq_len 4096",
                "--max_input_len 4095",
                "--max_num_tokens 264",
            ],
            ["quantize.py", "--qformat"],
        ),
        (
            "agx-orin-32gb",
            "int4_gptq",
            ["--weight_only_precision int4_gptq --per_group", "--max_seq_len 4096"],
            ["--quant_ckpt_path"],
        ),
    ],
)
def test_build_engine_dry_run_defaults_to_the_documented_int4_path(tmp_path, capsys, device, quant, expect, absent):
    from tools import build_engine

    model = hf_checkpoint(tmp_path)
    argv = [
        "--model",
        str(model),
        "--output",
        str(tmp_path / "engine"),
        "--device",
        device,
        "--dry-run",
        "--trtllm-src",
        str(trtllm_checkout(tmp_path)),
    ]
    assert build_engine.main(argv + (["--quant", quant] if quant else [])) == 0
    out = capsys.readouterr().out
    for flag in expect + ["--gemm_plugin float16", "--use_paged_context_fmha enable", "trtllm-build"]:
        assert flag in out, flag
    for flag in absent:
        assert flag not in out, flag
    assert f"--output_dir {tmp_path / 'engine.partial'}" in out  # renamed only when complete
    assert not (tmp_path / "engine").exists() and not (tmp_path / "engine.partial").exists()


def test_build_engine_awq_is_opt_in_with_a_local_calibration_set(tmp_path, capsys):
    from tools import build_engine

    argv = [
        "--model",
        str(hf_checkpoint(tmp_path)),
        "--output",
        str(tmp_path / "engine"),
        "--quant",
        "int4_awq",
        "--dry-run",
        "--trtllm-src",
        str(trtllm_checkout(tmp_path)),
    ]
    with pytest.raises(SystemExit):
        build_engine.main(argv)
    assert "needs --calib-dataset" in capsys.readouterr().err
    calib = tmp_path / "calib"
    calib.mkdir()
    assert build_engine.main(argv + ["--calib-dataset", str(calib)]) == 0
    assert f"--qformat int4_awq --awq_block_size 128 --calib_size 32 --calib_dataset {calib}" in capsys.readouterr().out


def test_build_engine_needs_a_v0_12_jetson_checkout_for_its_examples(tmp_path, capsys):
    """convert_checkpoint.py and quantize.py are in the repository's examples/, not the wheel;
    the old default, /opt/TensorRT-LLM, was installed by nothing."""
    from tools import build_engine

    argv = ["--model", str(hf_checkpoint(tmp_path)), "--output", str(tmp_path / "engine"), "--dry-run"]
    with pytest.raises(SystemExit):
        build_engine.main(argv)
    assert "--trtllm-src" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="git clone --branch v0.12.0-jetson"):
        build_engine.main(argv + ["--trtllm-src", str(tmp_path / "wheel-only")])


def test_build_engine_checks_disk_and_memory_before_it_starts(tmp_path, monkeypatch, capsys):
    """An 8B build takes ~27 GB of disk beside the swap file, and its conversion can run a 32 GB
    Orin out of memory: both are checked, with numbers, before anything runs."""
    from tools import build_engine

    model = hf_checkpoint(tmp_path)  # 32 layers x 4096: ~12 GiB of fp16 weights by the formula
    ckpt = build_engine.checkpoint_bytes(model)
    monkeypatch.setattr(build_engine.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(0, 0, 2 * ckpt))
    assert build_engine.check_resources(model, tmp_path / "engine", {"MemAvailable": 2 * ckpt, "SwapFree": 0}) == []
    monkeypatch.setattr(build_engine.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(0, 0, 5 << 30))
    problems = build_engine.check_resources(model, tmp_path / "engine", {"MemAvailable": 20 << 30, "SwapFree": 0})
    assert len(problems) == 2
    assert problems[0].startswith("5.0 GiB free under") and "swap file" in problems[0]
    assert "20.0 GiB RAM available + 0.0 GiB swap free" in problems[1] and "systemctl stop edge-llm" in problems[1]
    monkeypatch.setattr(build_engine, "meminfo_bytes", lambda: {"MemAvailable": 20 << 30, "SwapFree": 0})
    argv = ["--model", str(model), "--output", str(tmp_path / "engine"), "--trtllm-src", str(trtllm_checkout(tmp_path))]
    with pytest.raises(SystemExit, match="would fail partway"):
        build_engine.main(argv)
    assert "GiB free under" in capsys.readouterr().err
    assert not (tmp_path / "engine.partial").exists()


def test_build_engine_finds_trtllm_build_in_the_venv_or_says_how(tmp_path, monkeypatch):
    from tools import build_engine

    bindir = tmp_path / "venv/bin"
    bindir.mkdir(parents=True)
    monkeypatch.setattr(build_engine.sys, "executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="trtllm-build not found"):
        build_engine.trtllm_build()
    (bindir / "trtllm-build").write_text("#!/bin/sh\n")
    assert build_engine.trtllm_build() == str(bindir / "trtllm-build")


def test_doctor_reports_this_machine(capsys):
    from edge_llm.cli import main

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checks"]["llama_cpp"] == "0.3.36"
    assert report["checks"]["l4t_release"] is None and report["checks"]["tensorrt_llm"] is None
    assert any("not a Jetson" in a for a in report["advice"])


def test_llama_cpp_was_built_for_this_cpu_and_never_with_amx():
    """tools/setup.sh pins each instruction set to what /proc/cpuinfo has: AVX-512 only where
    the CPU has it ("Illegal instruction" otherwise), AMX never (it segfaults on some CPUs)."""
    import platform

    from edge_llm.doctor import llama_cpu_features

    if platform.machine() != "x86_64":
        pytest.skip("the x86-64 flags are checked on x86-64")
    cpu = set(
        next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        .split(":")[1]
        .split()
    )
    built = set(llama_cpu_features().split())
    assert ("AVX512" in built) == ("avx512f" in cpu) and ("AVX2" in built) == ("avx2" in cpu)
    assert not any(f.startswith("AMX") for f in built)


# -- issue 20: end ids, chunked context, detokenization ------------------------------------------


def test_every_end_id_of_generation_config_ends_the_text(fake_trtllm, tmp_path):
    """Llama-3-Instruct's generation_config.json lists eos_token_id [128001, 128009]; Request takes
    one end_id, so the rest go as stop words, which the executor writes to the output."""
    d = make_engine_dir(tmp_path)
    (d / "tokenizer/generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    backend, plan, engine = start_engine(d)
    try:
        assert backend.end_ids == [128001, 128009, 2]  # and the tokenizer's own EOS
        backend.executor.script = [100, 101, 128009, 102, 103]  # <|eot_id|> as the third token
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 10)
        outs = list(engine.generate(req))
        assert "".join(o.text for o in outs) == " w100 w101" and outs[-1].finish_reason == "stop"
        sent = backend.executor.enqueued[-1]
        assert sent.end_id == 128001 and sent.stop_words == [[128009], [2]]
        assert req.output_tokens == [100, 101] and engine.scheduler.kv.num_reserved == 0
    finally:
        engine.stop()


def test_chunked_context_only_for_an_engine_with_paged_context_fmha(fake_trtllm, tmp_path):
    """A TLLM_CHECK in the batch manager refuses chunked context on an engine built without
    --use_paged_context_fmha enable (one not built by tools/build_engine.py)."""
    from tensorrt_llm import runtime

    d = make_engine_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["build_config"]["plugin_config"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="paged context FMHA"):  # what asking for it anyway does
        runtime.ModelRunnerCpp.from_dir(str(d), enable_chunked_context=True)
    backend, plan, engine = start_engine(d)
    try:
        assert runtime.model_runner_cpp.CALLS[-1][1]["enable_chunked_context"] is False
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 3)
        assert list(engine.generate(req))[-1].finish_reason == "length"
    finally:
        engine.stop()


def test_fakes_refuse_what_the_v0_12_bindings_refuse(fake_trtllm):
    from tensorrt_llm.bindings import executor as t

    with pytest.raises(TypeError):
        t.SamplingConfig(min_tokens=1)  # v0.12 calls it min_length
    assert t.SamplingConfig(min_length=1).min_length == 1
    with pytest.raises(TypeError):
        t.Request([1, 2], 5, priority=0.5)  # not a keyword of the branch's binding
    with pytest.raises(TypeError):
        t.Request([1, 2], 5, stop_words=[128009])  # a list of token lists
    with pytest.raises(TypeError):  # positional order: (max_beam_width, scheduler_config, kv_cache_config, ...)
        t.ExecutorConfig(1, None, "not a KvCacheConfig")


TEXT = "Héllo wörld, naïve café — 日本語のテキストです。 Emoji: 🎉🚀👩‍💻 done."


def gguf_tokenizer_dir(transformers, dest: Path) -> Path:
    """SmolLM2's vocabulary from the embedded GGUF, saved as a Hugging Face tokenizer folder.
    transformers 4.x refuses any GGUF read without torch, though the tokenizer path
    (return_tensors=False) never touches it: the check is lifted for this one load."""
    from unittest import mock

    from edge_llm.config import embedded_model_path

    gguf = embedded_model_path()
    with mock.patch("transformers.modeling_gguf_pytorch_utils.is_torch_available", return_value=True):
        tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(dest)
    return dest


def test_real_tokenizer_text_survives_token_by_token_streaming(fake_trtllm_real_tokenizer, tmp_path):
    """Byte-level BPE splits accented letters, CJK and emoji over several tokens, each of which
    decodes alone to U+FFFD: decoded one token at a time (the old code) the text is garbled;
    incrementally, every streamed delta is whole text and they join to the original."""
    d = make_engine_dir(tmp_path)
    gguf_tokenizer_dir(fake_trtllm_real_tokenizer, d / "tokenizer")
    backend, plan, engine = start_engine(d)
    try:
        ids = backend.tokenize(TEXT, add_special=False)
        one_by_one = "".join(backend.tokenizer.decode([i]) for i in ids)
        assert "\ufffd" in one_by_one and one_by_one != TEXT  # the defect, with this vocabulary
        backend.executor.script = ids
        req, _ = engine.make_request(backend.tokenize("Say it."), SamplingParams(temperature=0), len(ids))
        deltas = [o.text for o in engine.generate(req)]
        assert "".join(deltas) == TEXT
        assert not any("\ufffd" in t for t in deltas)
    finally:
        engine.stop()


def test_the_executor_engine_meters_energy_per_request(fake_trtllm, tmp_path):
    """Each read of the executor's responses is a metered step (jtop's power on a Jetson, here a
    jtop-shaped snapshot): its joules are shared by the tokens each request took meanwhile."""
    from edge_llm.telemetry import heat
    from edge_llm.telemetry.snapshot import Snapshot

    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        meter = heat.attach_energy(engine, backend, Snapshot("jtop", 1, 1, 0, power_total_mw=15_000))
        assert meter.source_name == "jtop-power" and meter.disabled is None
        reqs = [
            engine.make_request(backend.tokenize(f"question {i}"), SamplingParams(temperature=0), 40)[0]
            for i in range(2)
        ]
        for r in reqs:
            engine.submit(r)
        for r in reqs:
            assert list(engine.stream(r))[-1].finish_reason == "length"
        joules = [meter.joules(r) for r in reqs]
        assert all(j > 0 for j in joules) and sum(joules) <= meter.total_j + 1e-9, (joules, meter.total_j)
    finally:
        engine.stop()


def test_a_request_the_executor_refuses_ends_alone_and_the_engine_goes_on(fake_trtllm, tmp_path):
    """SamplingConfig's checks (checkTopP) refuse a top_p past 1 when the request is built: that
    request ends with the error, where it was lost (popped from the queue, never ended)."""
    from edge_llm.engine.request import Request

    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        bad = Request(backend.tokenize("hi"), SamplingParams(temperature=0.7, top_p=1.5, max_tokens=5))
        engine.submit(bad)
        deadline = time.monotonic() + 30  # it was never ended: a deadline, not a hang
        outs = [o for o in engine.stream(bad, 0.05, lambda: time.monotonic() > deadline) if o is not None]
        assert outs and outs[-1].finish_reason == "error" and "topP" in outs[-1].error, outs
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 3)
        assert list(engine.generate(req))[-1].finish_reason == "length"
        assert engine.num_running == 0 and engine.scheduler.kv.num_reserved == 0
    finally:
        engine.stop()


def _slowed(executor, monkeypatch, seconds: float, empty_reads: int = 0):
    """The fake executor's reads take `seconds`; the first `empty_reads` bring no response (a
    prompt's context phase: the executor works and says nothing)."""
    real, calls = executor.await_responses, []

    def await_responses(timeout=None):
        time.sleep(seconds)
        calls.append(1)
        return [] if len(calls) <= empty_reads else real(timeout)

    monkeypatch.setattr(executor, "await_responses", await_responses)


def test_an_executor_request_streaming_past_the_queue_timeout_is_not_cut(fake_trtllm, tmp_path, monkeypatch):
    """The HTTP Watch ends a request not admitted within server.queue_timeout_s: the executor
    engine never set admitted_time, so every reply longer than it was cut mid-stream."""
    import types

    from edge_llm.server import openai_api

    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        monkeypatch.setattr(openai_api, "POLL_S", 0.02)
        _slowed(backend.executor, monkeypatch, 0.005)
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 60)
        engine.submit(req)
        rt = types.SimpleNamespace(
            cut_off=types.SimpleNamespace(is_set=lambda: False),
            config=types.SimpleNamespace(server=types.SimpleNamespace(queue_timeout_s=0.1)),
        )
        watch = openai_api.Watch(rt, req, {})
        outs = [o for o in openai_api._outputs(engine, req, watch) if o is not None]
        assert watch.reason is None and outs[-1].finish_reason == "length" and len(req.output_tokens) == 60
        assert req.finish_time - req.arrival_time > 0.1  # it did run past the timeout
        assert req.arrival_time <= req.admitted_time <= req.first_token_time
        queued = engine.metrics.registry.get_sample_value("edge_llm_queue_seconds_count", {"priority": "interactive"})
        assert queued == 1
    finally:
        engine.stop()


class _Drawing:
    """A made-up energy counter of a device drawing 100 W all the time."""

    name = "made-up-counter"

    def read(self):
        from edge_llm.telemetry.energy import Reading

        now = time.monotonic()
        return Reading(now, energy_j=100.0 * now)


def test_a_prefill_the_executor_says_nothing_about_is_charged_to_its_request(fake_trtllm, tmp_path, monkeypatch):
    """Reads with no response (the context phase) were metered as steps of no tokens: their
    joules went to nobody. Every joule metered is some request's, whatever the reads bring."""
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        engine.energy.use(_Drawing())
        _slowed(backend.executor, monkeypatch, 0.02, empty_reads=15)  # 0.3 s of prefill at 100 W
        reqs = [
            engine.make_request(backend.tokenize(f"question {i}"), SamplingParams(temperature=0), 5)[0]
            for i in range(2)
        ]
        for r in reqs:
            engine.submit(r)
        for r in reqs:
            assert list(engine.stream(r))[-1].finish_reason == "length"
        cancelled, _ = engine.make_request(backend.tokenize("never mind"), SamplingParams(temperature=0), 50)
        _slowed(backend.executor, monkeypatch, 0.02, empty_reads=10**6)  # its prefill never ends
        engine.submit(cancelled)
        time.sleep(0.2)
        engine.cancel(cancelled)
        assert list(engine.stream(cancelled))[-1].finish_reason == "cancelled"
        meter = engine.energy
        joules = [meter.joules(r) for r in (*reqs, cancelled)]
        assert meter.unattributed_j == 0 and sum(joules) == pytest.approx(meter.total_j, abs=1e-6), joules
        assert sum(joules[:2]) >= 100 * 0.3 * 0.9 and joules[2] >= 100 * 0.2 * 0.9, joules
    finally:
        engine.stop()


def test_a_response_that_fails_to_apply_ends_its_request_alone(fake_trtllm, tmp_path, monkeypatch):
    """The executor delivers each response once: a failure applying one (here the detokenizer)
    dropped the rest of the read, so a request whose final response was lost hung for ever."""
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    real = backend.detokenizer

    class Broken:
        def step(self, token):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "test")

    try:
        bad, _ = engine.make_request(backend.tokenize("bad"), SamplingParams(temperature=0), 5)
        good, _ = engine.make_request(backend.tokenize("good"), SamplingParams(temperature=0), 5)
        monkeypatch.setattr(
            backend, "detokenizer", lambda prompt: Broken() if prompt == bad.prompt_tokens else real(prompt)
        )
        for r in (bad, good):  # bad's responses come first in each read
            engine.submit(r)
        deadline = time.monotonic() + 10  # a deadline, not a hang
        outs = {
            r: [o for o in engine.stream(r, 0.05, lambda: time.monotonic() > deadline) if o is not None]
            for r in (bad, good)
        }
        assert outs[bad][-1].finish_reason == "error" and "engine error" in outs[bad][-1].error, outs[bad]
        assert outs[good][-1].finish_reason == "length" and len(good.output_tokens) == 5
        assert bad.seq_id in backend.executor.cancelled
        assert engine.call(lambda: (engine._by_id, engine.scheduler.kv.num_reserved)) == ({}, 0)
    finally:
        engine.stop()


def test_a_failing_energy_meter_loses_no_response(fake_trtllm, tmp_path, monkeypatch):
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        engine.energy.use(_Drawing())

        def finish(shares):
            raise ZeroDivisionError("meter")

        monkeypatch.setattr(engine.energy, "finish", finish)
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 5)
        engine.submit(req)
        deadline = time.monotonic() + 10
        outs = [o for o in engine.stream(req, 0.05, lambda: time.monotonic() > deadline) if o is not None]
        assert outs and outs[-1].finish_reason == "length" and len(req.output_tokens) == 5, outs
    finally:
        engine.stop()


@pytest.mark.parametrize("broken", ["detokenizer", "reserve"])
def test_a_request_failing_after_the_executor_took_it_is_cancelled_there(fake_trtllm, tmp_path, monkeypatch, broken):
    """enqueue_request succeeded, then our side failed: the executor generated for nobody."""
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))

    def fail(*args):
        raise RuntimeError(f"{broken} failed")

    try:
        monkeypatch.setattr(
            *((backend, "detokenizer") if broken == "detokenizer" else (engine.scheduler.kv, "reserve")), fail
        )
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 5)
        deadline = time.monotonic() + 10
        engine.submit(req)
        outs = [o for o in engine.stream(req, 0.05, lambda: time.monotonic() > deadline) if o is not None]
        assert outs[-1].finish_reason == "error" and f"{broken} failed" in outs[-1].error
        ex = backend.executor
        assert len(ex.enqueued) == 1 and ex.cancelled == [1] and not ex._active  # the fake's first id
        assert engine.call(lambda: (engine._by_id, engine.scheduler.kv.num_reserved)) == ({}, 0)
    finally:
        engine.stop()
