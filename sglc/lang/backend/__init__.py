"""Backends programs run on; laid out as SGLang's `sglang.lang.backend` package
(`base_backend`, `runtime_endpoint`, `openai`), whose implementations live in `sglc.backend`."""

from .base_backend import BaseBackend, TokenUsage

__all__ = ["BaseBackend", "TokenUsage"]
