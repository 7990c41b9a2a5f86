"""What a model costs, as plain data: the planner sizes memory from it and the engines report it.
Below both, so that neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelProfile:
    """The numbers the memory planner needs about a model."""

    name: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    n_ctx_train: int  # tokens the model was trained for
    weights_bytes: int  # resident weights (mapped file for GGUF, engine file for TensorRT-LLM)
    n_embd: int = 0  # hidden size (for the workspace estimate)
    n_vocab: int = 0  # logits row length (for the workspace estimate)
    kv_bytes_per_elem: int = 2  # f16 KV cache
    activation_bytes: int = 0  # fixed workspace (TensorRT-LLM: set at build time); 0 = estimate

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.kv_bytes_per_elem
