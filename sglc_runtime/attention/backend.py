"""The attention backend interface and its two implementations: `TorchAttention` (PyTorch:
SDPA or `attend`, CPU and CUDA) and `TritonAttention` (decode rows through the Triton kernel).
A backend builds each batch's `AttentionMetadata`, computes attention from it, and owns the
static buffers CUDA graphs replay decode batches with."""

from __future__ import annotations

import sys

import torch

from ..kernels.cpu_kernels import (
    cpu_decode_attention,
    cpu_decode_attention_lse,
    cpu_decode_shape_ok,
    cpu_decode_supports,
    cpu_kernels_available,
)
from ..kv_pool import TokenToKVPool
from . import torch_attention
from .metadata import MAX_PADDED_SLOTS, SHORT_EXTEND, AttentionMetadata, build_metadata


class AttentionBackend:
    """How one engine computes attention over the paged KV pool.

    Per step: `init_metadata` lays a batch out (called by `build_forward_batch` after the new
    tokens' slots are in the KV table) and `forward` (called by every attention layer through
    `paged_attention`) writes the new K/V and attends. CUDA graphs (decode batches without a
    shared prefix): `init_graph_state` allocates static buffers once, `graph_metadata(bs, L)`
    is the metadata a graph is captured with (views of those buffers), and before each replay
    `load_graph_metadata` copies a live batch's metadata into them."""

    name = "base"

    def min_cascade_rows(self, device) -> int:
        """Shared-prefix KV rows a cascade must save reading, (b - 1) * S, to pay for its extra
        attention call and merge (0: any shared prefix of MIN_SHARED_PREFIX slots)."""
        return 0

    def is_deterministic(self, device) -> bool:
        """Whether every query attends in one summation order however the batch is laid out."""
        return False

    def short_extend(self, device) -> int:
        """Requests adding at most this many tokens attend as one-query rows of the padded
        call (metadata.SHORT_EXTEND where decode rows read the pool in place; 1 where they
        gather a padded copy of every row's keys, which would copy a prefix per new token)."""
        return 1

    def max_padded_slots(self, device) -> int | None:
        """Past this many padded slots short extends attend per request (None: never)."""
        return MAX_PADDED_SLOTS

    def masks_padding(self, device) -> bool:
        """Whether padded rows need `kv_mask` and padding pointed at slot 0 (a reader that
        gathers them does; one that reads only each row's `kv_lens` does not)."""
        return True

    def init_metadata(self, table: torch.Tensor, is_decode: bool, rows: list[int],
                      prefix_lens: list[int], extend_lens: list[int], device,
                      cascade: bool = True) -> AttentionMetadata:
        return build_metadata(table, is_decode, rows, prefix_lens, extend_lens, device, cascade,
                              self.min_cascade_rows(device), self.short_extend(device),
                              self.max_padded_slots(device), self.masks_padding(device))

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor | None,
                v: torch.Tensor | None, fb, pool: TokenToKVPool, scale: float) -> torch.Tensor:
        """Write the new tokens' K/V (k, v: (T, n_kv, hd); None when the caller has written
        them to their slots `fb.out_cache_loc` already) into `pool`, then attend each query
        of q (T, n_q, hd) over its request's whole sequence. Returns (T, n_q, hd)."""
        raise NotImplementedError

    # ---- CUDA graphs --------------------------------------------------------------------------
    def init_graph_state(self, max_bs: int, max_len: int, device) -> None:
        self.g_kv_indices = torch.zeros(max_bs, max_len, dtype=torch.int64, device=device)
        self.g_kv_mask = torch.zeros(max_bs, 1, 1, max_len, dtype=torch.bool, device=device)
        self.g_kv_lens = torch.ones(max_bs, dtype=torch.int64, device=device)

    def can_capture(self, md: AttentionMetadata, max_bs: int, max_len: int) -> bool:
        """Whether a decode batch with this metadata fits the graphs' buffers."""
        return (not md.shared_len and md.padded_kv_indices.shape[0] <= max_bs
                and md.padded_kv_indices.shape[1] <= max_len)

    def graph_metadata(self, bs: int, L: int) -> AttentionMetadata:
        """Metadata over the static buffers, for `bs` rows of up to `L` keys."""
        return AttentionMetadata([], padded_kv_indices=self.g_kv_indices[:bs, :L],
                                 kv_mask=self.g_kv_mask[:bs, :, :, :L],
                                 kv_lens=self.g_kv_lens[:bs])

    def load_graph_metadata(self, md: AttentionMetadata, bs: int, L: int) -> None:
        """Copy a decode batch's metadata (b <= bs rows, <= L keys) into the static buffers;
        padding rows b..bs-1 see only the scratch slot 0."""
        b, cur = md.padded_kv_indices.shape
        self.g_kv_indices[:bs, :L].zero_()
        self.g_kv_indices[:b, :cur] = md.padded_kv_indices
        self.g_kv_mask[:bs, ..., :L].zero_()
        self.g_kv_mask[:b, ..., :cur] = True if md.kv_mask is None else md.kv_mask
        self.g_kv_mask[b:bs, ..., 0] = True
        self.g_kv_lens[:bs].fill_(1)
        self.g_kv_lens[:b] = md.kv_lens

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


#: CPU break-even of cascade attention, in shared KV rows saved ((b - 1) * S), per
#: implementation: bf16 decode on a 2-core Sapphire Rapids, cascade vs plain per layer call
#: (b=16: S=128 0.65-0.82x, S=512 1.16-1.86x under sdpa; matmul: b=4 S=512 1.04-1.25x,
#: b=16 S=128 1.0-1.1x). Below it the extra call and the log-sum-exp merge cost more than
#: reading the shared keys once per request.
CPU_CASCADE_MIN_ROWS = {"sdpa": 4096, "matmul": 1536}


class TorchAttention(AttentionBackend):
    """PyTorch attention (`torch_attention.py`): `impl` "sdpa" (torch's fused kernels) or
    "matmul" (`attend`: two matmuls around a float32 softmax; CPU 16-bit only)."""

    def __init__(self, impl: str = "sdpa", cpu_kernel: bool = False,
                 heads: tuple[int, int, int] | None = None, deterministic: bool = False):
        assert impl in ("sdpa", "matmul"), f"unknown PyTorch attention {impl!r}"
        self.name = self.impl = impl
        self.cpu_kernel = cpu_kernel  # bf16 decode rows through kernels/cpu_kernels.py
        self.heads = heads  # (n_q, n_kv, head_dim) of the model, where known
        # every query through the decode kernel's rows (each reads its keys in one order
        # however the batch is laid out), no cascade: only where the kernel takes the rows
        self.deterministic = deterministic

    def _kernel_rows(self, device) -> bool:
        """Whether decode rows go through the C kernel here (it reads the pool in place)."""
        return (self.cpu_kernel and torch.device(device).type == "cpu" and self.heads is not None
                and cpu_decode_shape_ok(*self.heads) and cpu_kernels_available())

    def is_deterministic(self, device) -> bool:
        """Whether every query here attends in one summation order (deterministic inference
        asked for, and the C kernel takes the rows on this device)."""
        return self.deterministic and self._kernel_rows(device)

    def min_cascade_rows(self, device) -> int:
        if self.is_deterministic(device):
            return sys.maxsize  # (a cascade merges two partial softmaxes: other roundings)
        return CPU_CASCADE_MIN_ROWS[self.impl] if torch.device(device).type == "cpu" else 0

    def short_extend(self, device) -> int:
        if not self._kernel_rows(device):
            return 1
        return sys.maxsize if self.is_deterministic(device) else SHORT_EXTEND

    def max_padded_slots(self, device) -> int | None:
        # (deterministic: the scheduler bounds a step's padded slots, Scheduler._extend_batch)
        return None if self.is_deterministic(device) else MAX_PADDED_SLOTS

    def masks_padding(self, device) -> bool:
        return not self.is_deterministic(device)  # (the kernel reads kv_lens[i] slots only)

    def forward(self, layer, q, k, v, fb, pool, scale):
        if k is not None:  # (None: the caller stored them, see LlamaAttention)
            pool.set_kv(layer, fb.out_cache_loc, k, v)
        kbuf, vbuf, md = pool.k_buffer[layer], pool.v_buffer[layer], fb.attn
        if md.shared_len:
            own = cpu_decode_attention_lse if self.cpu_kernel and \
                cpu_decode_supports(q, kbuf) and md.kv_lens is not None else None
            return torch_attention.cascade(q, kbuf, vbuf, md, fb.is_decode, scale, self.impl,
                                           own)
        if fb.is_decode:
            return self.decode(q, kbuf, vbuf, md, scale)
        return torch_attention.extend(q, kbuf, vbuf, md, fb.prefix_lens, fb.extend_lens, scale,
                                      self.impl, self.decode)

    def decode(self, q, kbuf, vbuf, md: AttentionMetadata, scale: float) -> torch.Tensor:
        """The padded one-token rows: q (b, n_q, hd) -> (b, n_q, hd)."""
        if self.cpu_kernel and cpu_decode_supports(q, kbuf):
            return cpu_decode_attention(q, kbuf, vbuf, md.padded_kv_indices, md.kv_lens, scale)
        return torch_attention.decode(q, kbuf, vbuf, md, scale, self.impl)


class TritonAttention(TorchAttention):
    """CUDA: decode rows through the Triton kernel (reads the pool in place, no K/V gather);
    extend and cascade batches through PyTorch's SDPA."""

    def __init__(self):
        super().__init__("sdpa")
        self.name = "triton"

    def short_extend(self, device) -> int:
        return SHORT_EXTEND  # the Triton decode kernel reads the pool in place

    def decode(self, q, kbuf, vbuf, md, scale):
        from ..kernels.decode_attention import decode_attention

        return decode_attention(q, kbuf, vbuf, md.padded_kv_indices, md.kv_lens, scale)


def create_attention_backend(name: str, dtype: torch.dtype, cpu_kernel: bool = True,
                             heads: tuple[int, int, int] | None = None,
                             deterministic: bool = False) -> AttentionBackend:
    """The backend `name` names ("auto": the CPU's faster PyTorch implementation in `dtype`,
    timed once per process by `fastest_cpu_attention`); with `cpu_kernel`, bf16 decode rows on
    the CPU go through the C kernel where the machine runs it; with `deterministic` every
    query does, where it can (`TorchAttention.deterministic` says)."""
    if name == "triton":
        return TritonAttention()
    if name == "auto":
        name = torch_attention.fastest_cpu_attention(dtype)
    return TorchAttention(name, cpu_kernel and dtype == torch.bfloat16, heads, deterministic)


def paged_attention(layer: int, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, fb,
                    pool: TokenToKVPool, scale: float) -> torch.Tensor:
    """What an attention layer calls: `fb.attention.forward(...)` (see AttentionBackend)."""
    return fb.attention.forward(layer, q, k, v, fb, pool, scale)
