from pathlib import Path

import pytest

from edge_llm import config as config_mod
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
        ("[limits]\nchat_slowdown = 0.5\n", "limits.chat_slowdown must be 0 (off) or >= 1"),
        ("[limits]\nchat_slowdown = nan\n", "limits.chat_slowdown must be 0 (off) or >= 1"),
        ("[limits]\nstream_interval_ms = 5000\n", "limits.stream_interval_ms must be 0 (every token) to 1000"),
        ("[limits]\nstream_interval_ms = -1\n", "limits.stream_interval_ms must be >= 0"),
        ("[limits]\nbackground_finish_ms = 1500\n", "limits.background_finish_ms must be 0 (always stop) to 1000"),
        ("[limits]\nbackground_finish_ms = -5\n", "limits.background_finish_ms must be >= 0"),
        ('[model]\noverlap_steps = "yes"\n', "model.overlap_steps must be 'auto', 'on' or 'off', got 'yes'"),
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
