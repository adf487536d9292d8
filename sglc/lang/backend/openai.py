"""`OpenAI` at SGLang's import path (`sglang.lang.backend.openai`)."""

from ...backend.openai import OpenAI

__all__ = ["OpenAI"]
