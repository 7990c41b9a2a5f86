"""Sampling defaults for requests that leave them out: from the configuration, else from the
model (a generation_config.json beside it, GGUF general.sampling.* keys, or its model card),
else OpenAI's (temperature 1, top_p 1). At temperature 1 SmolLM2-135M rambles (a code
question once gave 1,024 tokens of a sea story); its card recommends 0.2 and 0.9."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
FIELDS = ("temperature", "top_p", "top_k")
OPENAI = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
# Model cards' recommendations, matched against the model's name (lower case).
CARDS = {"smollm2": ({"temperature": 0.2, "top_p": 0.9}, "SmolLM2's model card")}
GGUF_KEYS = {
    "temperature": "general.sampling.temp",
    "top_p": "general.sampling.top_p",
    "top_k": "general.sampling.top_k",
}


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    sources: dict[str, str] = field(default_factory=dict)  # field -> where its value came from

    def to_dict(self) -> dict:
        return asdict(self)


def _valid(name: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return {"temperature": 0 <= value <= 2, "top_p": 0 < value <= 1, "top_k": value >= 0}[name]


def resolve(configured: dict, generation_config: dict | None, gguf: dict, name: str) -> SamplingDefaults:
    """Pure: the first of configured (negative = unset), generation_config.json, GGUF metadata,
    a known model card, OpenAI's; each field on its own."""
    card, card_source = next(((v, src) for key, (v, src) in CARDS.items() if key in name.lower()), ({}, ""))
    layers = [
        (configured, "configuration [sampling]"),
        (generation_config or {}, "the model's generation_config.json"),
        (gguf, "the model's GGUF metadata"),
        (card, card_source),
        (OPENAI, "OpenAI's default"),
    ]
    values, sources = {}, {}
    for f in FIELDS:
        for layer, source in layers:
            v = layer.get(f)
            if v is not None and not (layer is configured and v < 0) and _valid(f, v):
                values[f], sources[f] = (int(v) if f == "top_k" else float(v)), source
                break
    return SamplingDefaults(**values, sources=sources)


def generation_config(model_path: Path) -> dict | None:
    """generation_config.json of a TensorRT-LLM engine dir (its tokenizer/ or itself) or beside a GGUF."""
    paths = (
        [model_path / "tokenizer" / "generation_config.json", model_path / "generation_config.json"]
        if model_path.is_dir()
        else [model_path.parent / "generation_config.json"]
    )
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None


def gguf_metadata(backend) -> dict:
    """general.sampling.* from a llama.cpp model (llama.cpp writes them since 2025), as numbers."""
    meta = getattr(backend, "_meta", None)
    out = {}
    for f, key in GGUF_KEYS.items():
        try:
            raw = meta(key) if meta else None
            if raw is not None:
                out[f] = float(raw)
        except (ValueError, TypeError):
            pass
    return out


def for_runtime(rt) -> SamplingDefaults:
    """The running model's defaults, resolved once its backend is loaded (kept in rt.extensions)."""
    cached = rt.extensions.get("sampling_defaults")
    if cached is not None:
        return cached
    cfg = getattr(rt.config, "sampling", None)
    configured = {f: getattr(cfg, f) for f in FIELDS} if cfg is not None else {}
    if rt.backend is None:  # still loading: not cached, asked again once loaded
        return resolve(configured, None, {}, rt.model_id)
    d = resolve(configured, generation_config(rt.config.model_path), gguf_metadata(rt.backend), rt.model_id)
    log.info("sampling defaults: %s", ", ".join(f"{f} {getattr(d, f)} ({d.sources[f]})" for f in FIELDS))
    rt.extensions["sampling_defaults"] = d
    return d
