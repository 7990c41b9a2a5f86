"""FAKE tensorrt_llm.runtime (see tests/fakes/README.md)."""

from tensorrt_llm.runtime.model_runner_cpp import ModelRunnerCpp  # noqa: F401 (the real package's export)
