"""FAKE tensorrt_llm (see tests/fakes/README.md)."""

__version__ = "0.12.0"
FAKE = True
