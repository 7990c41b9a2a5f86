"""Named devices and models, so `edge-llm plan` can show what fits before flashing.
Memory after boot with the desktop disabled, per NVIDIA's RAM tips (JETSON.md); model
shapes from their published configs; INT4 weight sizes of TensorRT-LLM engines."""

from __future__ import annotations

from edge_llm.profile import ModelProfile
from edge_llm.telemetry.snapshot import Snapshot

GiB = 1 << 30
MiB = 1 << 20


def _jetson(name: str, total_gib: float, os_gib: float) -> Snapshot:
    total = int(total_gib * GiB)
    return Snapshot(
        source=f"profile:{name}",
        ram_total_bytes=total,
        ram_available_bytes=total - int(os_gib * GiB),
        ram_used_bytes=int(os_gib * GiB),
        unified_memory=True,
        gpu_name=name,
    )


DEVICES = {
    # usable RAM as the kernel reports it (carve-outs removed), minus a headless JetPack's use
    "agx-orin-64gb": _jetson("agx-orin-64gb", 61.4, 1.6),
    "agx-orin-32gb": _jetson("agx-orin-32gb", 30.6, 1.6),
    "orin-nx-16gb": _jetson("orin-nx-16gb", 15.3, 1.3),
    "orin-nx-8gb": _jetson("orin-nx-8gb", 7.4, 1.1),
    "orin-nano-8gb": _jetson("orin-nano-8gb", 7.4, 1.1),
}

MODELS = {
    "smollm2-135m-q4_1": ModelProfile(
        "SmolLM2-135M-Instruct Q4_1",
        n_layers=30,
        n_kv_heads=3,
        head_dim=64,
        n_ctx_train=8192,
        weights_bytes=96_576_768,
        n_embd=576,
        n_vocab=49152,
    ),
    "llama-2-7b-int4": ModelProfile(
        "Llama-2-7B INT4",
        n_layers=32,
        n_kv_heads=32,
        head_dim=128,
        n_ctx_train=4096,
        weights_bytes=int(3.9 * GiB),
        n_embd=4096,
        n_vocab=32000,
    ),
    "llama-3-8b-int4": ModelProfile(
        "Llama-3-8B INT4",
        n_layers=32,
        n_kv_heads=8,
        head_dim=128,
        n_ctx_train=8192,
        weights_bytes=int(5.6 * GiB),
        n_embd=4096,
        n_vocab=128256,
    ),
}
