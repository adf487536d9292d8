"""Attention over the paged KV pool: the backend interface and its implementations
(`backend.py`), each batch's KV layout (`metadata.py`) and the PyTorch math (`torch_attention.py`;
the Triton decode kernel is in `kernels/`)."""

from .backend import (
    AttentionBackend,
    TorchAttention,
    TritonAttention,
    create_attention_backend,
    paged_attention,
)
from .metadata import MIN_SHARED_PREFIX, AttentionMetadata
from .torch_attention import attend, fastest_cpu_attention

__all__ = ["MIN_SHARED_PREFIX", "AttentionBackend", "AttentionMetadata", "TorchAttention",
           "TritonAttention", "attend", "create_attention_backend", "fastest_cpu_attention",
           "paged_attention"]
