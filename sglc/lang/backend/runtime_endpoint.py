"""`RuntimeEndpoint` at SGLang's import path (`sglang.lang.backend.runtime_endpoint`)."""

from ...backend.endpoint import RuntimeEndpoint

__all__ = ["RuntimeEndpoint"]
