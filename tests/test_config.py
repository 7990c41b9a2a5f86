import os
from pathlib import Path

import pytest

from edge_llm import cli
from edge_llm import config as config_mod
from edge_llm import daemon as daemon_mod
from edge_llm.config import ConfigError, load


def test_defaults_use_the_embedded_model():
    cfg = load(env={})
    assert cfg.model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert cfg.model_path.is_file()
    assert cfg.model_id == "SmolLM2-135M-Instruct.Q4_1"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8000)


def test_toml_then_env_then_cli(tmp_path: Path):
    f = tmp_path / "edge.toml"
    f.write_text("[server]\nport = 9000\nthreads = 4\n[limits]\nmax_batch_size = 2\n")
    cfg = load(
        f, env={"EDGE_LLM_SERVER_PORT": "9100", "EDGE_LLM_LIMITS_MAX_QUEUE": "7"}, overrides=[("server.port", "9200")]
    )
    assert (cfg.server.port, cfg.server.threads) == (9200, 4)
    assert (cfg.limits.max_batch_size, cfg.limits.max_queue) == (2, 7)


def test_config_file_from_environment(tmp_path: Path):
    f = tmp_path / "edge.toml"
    f.write_text('[daemon]\nlog_level = "debug"\n')
    assert load(env={"EDGE_LLM_CONFIG": str(f)}).daemon.log_level == "debug"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[server]\nprot = 1\n", "unknown key 'prot' (did you mean 'port'?)"),
        ("[sever]\nport = 1\n", "unknown key 'sever' (did you mean 'server'?)"),
        ('[server]\nport = "80"\n', "server.port: expected int, got '80'"),
        ("[model]\nwarmup = 1\n", "model.warmup: expected bool, got 1"),
        ('[server]\nallowed_hosts = "x"\n', "server.allowed_hosts: expected list"),
        ("server = 3\n", "'server' must be a [table]"),
        ("[server\n", "is not valid TOML"),
        ("[limits]\nmax_batch_size = -1\n", "limits.max_batch_size must be >= 0"),
        ("[limits]\nchat_slowdown = 0.5\n", "limits.chat_slowdown must be negative (the plan's), 0 (off) or >= 1"),
        ("[limits]\nchat_slowdown = nan\n", "limits.chat_slowdown must be negative (the plan's), 0 (off) or >= 1"),
        ("[limits]\nstream_interval_ms = 5000\n", "limits.stream_interval_ms must be 0 (every token) to 1000"),
        ("[limits]\nstream_interval_ms = -1\n", "limits.stream_interval_ms must be >= 0"),
        ("[limits]\nbackground_finish_ms = 1500\n", "limits.background_finish_ms must be 0 (always stop) to 1000"),
        ("[limits]\nbackground_finish_ms = -5\n", "limits.background_finish_ms must be >= 0"),
        ('[model]\noverlap_steps = "yes"\n', "model.overlap_steps must be 'auto', 'on' or 'off', got 'yes'"),
        # TOML has nan and inf literals of its own
        ("[daemon]\ntelemetry_interval_s = nan\n", "daemon.telemetry_interval_s must be >= 0.1, got nan"),
        ("[server]\nchannel_timeout_s = inf\n", "server.channel_timeout_s must be a finite number, got inf"),
        ("[limits]\nchat_slowdown = inf\n", "limits.chat_slowdown must be negative (the plan's), 0 (off) or >= 1 and"),
        ("[summarize]\nretention_days = -1\n", "summarize.retention_days must be >= 0 (0 = keep forever), got -1"),
        ("[thermal]\nhold_s = nan\n", "thermal.hold_s must be >= 0, got nan"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        load(f, env={})
    assert message in str(e.value)


def test_bad_environment_and_flags():
    with pytest.raises(ConfigError, match="EDGE_LLM_SERVER_PORT.*expected int"):
        load(env={"EDGE_LLM_SERVER_PORT": "eighty"})
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load(env={"EDGE_LLM_MODEL_NOPE": "1"})
    with pytest.raises(ConfigError, match="option server.port.*expected int"):
        load(env={}, overrides=[("server.port", "x")])
    with pytest.raises(ConfigError, match="server.port must be 0..65535"):
        load(env={}, overrides=[("server.port", "70000")])


def test_setup_switches_are_not_taken_for_config():
    cfg = load(env={"EDGE_LLM_CUDA": "1", "EDGE_LLM_WHEEL_DIR": "/tmp/w", "EDGE_LLM_SCREENSHOTS": "/tmp/s"})
    assert cfg.server.port == 8000
    with pytest.raises(ConfigError, match="unknown key 'sever'"):
        load(env={"EDGE_LLM_SEVER_PORT": "1"})


def test_missing_model_file_and_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="model file .*nope.gguf does not exist"):
        load(env={}, overrides=[("model.path", str(tmp_path / "nope.gguf"))])
    with pytest.raises(ConfigError, match="config file .* does not exist"):
        load(tmp_path / "absent.toml", env={})


def test_non_loopback_bind_needs_an_api_key():
    with pytest.raises(ConfigError, match="not loopback: set server.api_key"):
        load(env={}, overrides=[("server.host", "0.0.0.0")])
    cfg = load(env={}, overrides=[("server.host", "0.0.0.0"), ("server.api_key", "k")])
    assert cfg.server.api_key == "k"
    assert config_mod.is_loopback("::1") and config_mod.is_loopback("127.0.0.5")
    assert not config_mod.is_loopback("192.168.1.2")


@pytest.mark.parametrize(
    "key, value, message",
    [
        # negative retention put the purge's cut-off in the future: every finished job deleted at start
        ("summarize.retention_days", "-1", "summarize.retention_days must be >= 0 (0 = keep forever), got -1.0"),
        ("summarize.extract_timeout_s", "0", "summarize.extract_timeout_s must be > 0, got 0.0"),
        ("summarize.extract_timeout_s", "-1", "summarize.extract_timeout_s must be > 0, got -1.0"),
        ("summarize.max_pdf_pages", "-5", "summarize.max_pdf_pages must be >= 0, got -5"),
        ("summarize.chunk_tokens", "100", "summarize.chunk_tokens must be 0 (from the plan) or >= 416"),
        ("summarize.summary_tokens", "4", "summarize.summary_tokens must be >= 8, got 4"),
        ("summarize.max_jobs", "0", "summarize.max_jobs must be >= 1, got 0"),
        ("summarize.parallel", "-1", "summarize.parallel must be >= 0, got -1"),
        ("summarize.max_chunks", "-1", "summarize.max_chunks must be >= 0, got -1"),
        ("daemon.telemetry_interval_s", "nan", "daemon.telemetry_interval_s must be >= 0.1, got nan"),
        ("daemon.telemetry_interval_s", "0.001", "daemon.telemetry_interval_s must be >= 0.1, got 0.001"),
        ("daemon.telemetry_interval_s", "inf", "daemon.telemetry_interval_s must be a finite number, got inf"),
        ("daemon.drain_timeout_s", "nan", "daemon.drain_timeout_s must be >= 0, got nan"),
        ("daemon.drain_timeout_s", "inf", "daemon.drain_timeout_s must be a finite number, got inf"),
        ("server.channel_timeout_s", "nan", "server.channel_timeout_s must be > 0, got nan"),
        ("server.channel_timeout_s", "inf", "server.channel_timeout_s must be a finite number, got inf"),
        ("server.queue_timeout_s", "inf", "server.queue_timeout_s must be a finite number, got inf"),
        ("server.queue_timeout_s", "0", "server.queue_timeout_s must be > 0, got 0.0"),
        ("sampling.temperature", "nan", "sampling.temperature must be negative (the model's own) or 0..2, got nan"),
        ("sampling.temperature", "3", "sampling.temperature must be negative (the model's own) or 0..2, got 3.0"),
        ("sampling.top_p", "nan", "sampling.top_p must be negative (the model's own) or in (0, 1], got nan"),
        ("sampling.top_p", "0", "sampling.top_p must be negative (the model's own) or in (0, 1], got 0.0"),
        ("model.kv_layout", "bogus", "model.kv_layout must be 'auto', 'unified' or 'per_slot', got 'bogus'"),
        (
            "limits.chat_slowdown",
            "inf",
            "limits.chat_slowdown must be negative (the plan's), 0 (off) or >= 1 and finite, got",
        ),
        ("thermal.throttle_c", "-100", "thermal.throttle_c must be 0 (the device's) or in (0, 150] C, got -100.0"),
        ("thermal.throttle_c", "1e400", "thermal.throttle_c must be 0 (the device's) or in (0, 150] C, got inf"),
        ("thermal.margin_c", "-5", "thermal.margin_c must be >= 0, got -5.0"),
        ("thermal.hysteresis_c", "-1", "thermal.hysteresis_c must be >= 0, got -1.0"),
        ("thermal.hold_s", "nan", "thermal.hold_s must be >= 0, got nan"),
        ("thermal.hold_s", "-1", "thermal.hold_s must be >= 0, got -1.0"),
    ],
)
def test_out_of_range_values_name_the_key(key: str, value: str, message: str):
    with pytest.raises(ConfigError) as e:
        load(env={}, overrides=[(key, value)])
    assert message in str(e.value)


def test_non_finite_values_from_the_environment_are_refused():
    with pytest.raises(ConfigError, match="daemon.telemetry_interval_s must be"):
        load(env={"EDGE_LLM_DAEMON_TELEMETRY_INTERVAL_S": "NaN"})
    with pytest.raises(ConfigError, match="server.queue_timeout_s must be a finite number"):
        load(env={"EDGE_LLM_SERVER_QUEUE_TIMEOUT_S": "Infinity"})


def test_documented_special_values_are_accepted():
    cfg = load(
        env={},
        overrides=[
            ("summarize.retention_days", "0"),  # keep forever
            ("summarize.max_pdf_pages", "0"),  # no bound
            ("summarize.chunk_tokens", "416"),  # the least a 200-token summary leaves room for
            ("sampling.top_k", "0"),  # off
            ("sampling.temperature", "0"),  # greedy
            ("limits.chat_slowdown", "0"),  # background always rides along
            ("model.kv_layout", "unified"),
            ("thermal.throttle_c", "85"),
            ("thermal.margin_c", "0"),
            ("thermal.hold_s", "0"),
        ],
    )
    assert (cfg.summarize.retention_days, cfg.summarize.max_pdf_pages, cfg.summarize.chunk_tokens) == (0.0, 0, 416)
    assert (cfg.sampling.temperature, cfg.sampling.top_k, cfg.limits.chat_slowdown) == (0.0, 0, 0.0)
    assert (cfg.model.kv_layout, cfg.thermal.throttle_c, cfg.thermal.margin_c) == ("unified", 85.0, 0.0)
    assert load(env={}).sampling.top_k == -1  # the default: the model's own
    own = load(env={}, overrides=[("sampling.top_k", "-5"), ("sampling.temperature", "-0.5")])
    assert (own.sampling.top_k, own.sampling.temperature) == (-5, -0.5)  # negative: the model's own (README)
    assert load(env={}).limits.chat_slowdown < 0  # the default: the plan's (calibration.choose_chat_slowdown)
    assert load(env={}, overrides=[("limits.chat_slowdown", "-2")]).limits.chat_slowdown == -2.0


def test_a_margin_past_the_throttle_point_is_refused():
    with pytest.raises(ConfigError, match=r"thermal.margin_c must be below thermal.throttle_c \(50.0\)"):
        load(env={}, overrides=[("thermal.throttle_c", "50"), ("thermal.margin_c", "60")])


def test_unreadable_config_files_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load(tmp_path, env={})
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load(env={"EDGE_LLM_CONFIG": str(tmp_path)})
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[model]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load(latin1, env={})
    locked = tmp_path / "locked.toml"
    locked.write_text("[server]\nport = 9000\n")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ConfigError, match="cannot be read: Permission denied"):
            load(locked, env={})
    finally:
        locked.chmod(0o600)


def test_a_model_path_that_is_a_directory_says_so(tmp_path: Path):
    with pytest.raises(ConfigError, match=f"model file {tmp_path} is a directory, not a GGUF file"):
        load(env={}, overrides=[("model.path", str(tmp_path))])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "summarize.retention_days=-1"], "summarize.retention_days must be >= 0"),
        (["--set", "server.channel_timeout_s=nan"], "server.channel_timeout_s must be > 0, got nan"),
        (["--model", "{tmp}"], "is a directory, not a GGUF file"),
        (["--config", "{tmp}"], "is a directory, not a TOML file"),
    ],
)
def test_serve_refuses_a_bad_value_with_exit_2(tmp_path: Path, monkeypatch, capsys, args: list, message: str):
    """The daemon never starts: exit 2 and one line naming the key, before any model is loaded."""
    for name in [n for n in os.environ if n.startswith(config_mod.ENV_PREFIX)]:
        monkeypatch.delenv(name)
    started = []
    # a fake daemon: a config let through returns at once (0) instead of serving until killed
    monkeypatch.setattr(daemon_mod, "serve", lambda cfg, reload_config=None: started.append(cfg) or 0)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(["serve", "--set", f"daemon.state_dir={tmp_path}", *args]) == 2
    assert not started
    err = capsys.readouterr().err
    assert err.startswith("edge-llm: configuration error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
