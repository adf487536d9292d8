"""The decoder's layers in one C call (`kernels/cpu_decoder.c`) for CPU steps of short rows.

At 1-128 rows a bf16 step on the CPU runs C kernels only (the 4-bit AMX linears, RoPE + KV
store, decode attention, RMSNorm, SwiGLU), yet a third of it went to Python and ATen between
them: module calls, checks, allocations, ctypes. `FusedDecoder.run` makes one call for all
layers instead, with the same kernels on the same inputs in the same order, so its output is
bit for bit `LlamaModel.forward`'s. It applies where that path would call exactly those
kernels: every projection on the 4-bit kernel at this row count, attention through the padded
one-query rows of the backend's C kernel (decode steps, and extends whose requests all add
few tokens), no cascade. Such a step with more rows (a user turn appended to 16 chats: 350
rows) runs in chunks of the kernel's rows: 93 -> 72-77 ms in the chat_short workload, where
the Python path's oneDNN linears were as fast as the chunks' but the rest was not.
`LlamaModel.forward` asks it first.
"""

from __future__ import annotations

import torch

from ..kernels.cpu_kernels import (
    cpu_decode_shape_ok,
    cpu_decoder_available,
    cpu_decoder_forward,
)
from .int4 import Q4_MAX_ROWS, Int4DecodeLinear


class FusedDecoder:
    """Per-layer weight addresses of a LlamaModel whose projections all carry 4-bit packings;
    `build` returns None for any other model."""

    def __init__(self, model, rows: tuple[int, int]):
        self.model = model
        self.min_rows, self.max_rows = rows[0], min(rows[1], Q4_MAX_ROWS)  # (rows per call)
        cfg = model.layers[0].self_attn
        self.n_q, self.n_kv, self.hd = cfg.n_q, cfg.n_kv, cfg.hd
        self.inter = model.layers[0].mlp.inter
        self.eps, self.scale = model.norm.eps, cfg.scale
        addrs, bits = [], []
        for layer in model.layers:
            projs = (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                     layer.mlp.gate_up_proj, layer.mlp.down_proj)
            addrs.append([p.q4.data_ptr() for p in projs] +
                         [layer.input_layernorm.weight.data_ptr(),
                          layer.post_attention_layernorm.weight.data_ptr()])
            bits.append([{320: 4, 544: 8}[p.q4.shape[-1]] for p in projs])
        # (the tensors behind the addresses are the model's: they live as long as it does)
        self.weights = torch.tensor(addrs, dtype=torch.int64)
        self.bits = torch.tensor(bits, dtype=torch.int32)
        self.times: torch.Tensor | None = None  # float64 (len(PARTS),): seconds per part

    #: the parts `times` adds up when set (cpu_decoder.c's order)
    PARTS = ("norms", "qkv proj", "rope+store", "attention", "o proj", "gate/up proj",
             "silu*mul", "down proj")

    def time_parts(self, on: bool = True) -> None:
        """Start (zeroed) or stop adding each part's seconds into `times` (profiling)."""
        self.times = torch.zeros(len(self.PARTS), dtype=torch.float64) if on else None

    @staticmethod
    def build(model) -> FusedDecoder | None:
        """A FusedDecoder for `model` (a LlamaModel) when its kernels are all on: the 4-bit
        packing on every projection, bf16 norms, the CPU kernel flags set by the loader."""
        if not cpu_decoder_available() or not model.layers:
            return None
        ranges = set()
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            projs = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if not all(isinstance(p, Int4DecodeLinear) and p.q4 is not None for p in projs) \
                    or not all(n.cpu_kernel and n.weight.dtype == torch.bfloat16 for n in norms) \
                    or not (attn.cpu_kernel and mlp.cpu_kernel):
                return None
            ranges |= {(p.max_rows + 1, p.q4_max_rows) for p in projs}
        if len(ranges) != 1 or model.norm.weight.dtype != torch.bfloat16 or \
                not model.norm.cpu_kernel:
            return None
        attn = model.layers[0].self_attn
        if not cpu_decode_shape_ok(attn.n_q, attn.n_kv, attn.hd):
            return None
        return FusedDecoder(model, ranges.pop())

    def applies(self, fb, T: int, pool) -> bool:
        """Whether the Python path would run the fused kernels on this batch: exactly, up to
        max_rows; past it (appended text in many requests at once) the same kernels in
        chunks, where the Python path multiplies the same bf16 weights with oneDNN."""
        md = fb.attn
        if T < self.min_rows or md.shared_len or md.padded_kv_indices is None:
            return False
        if not fb.is_decode and (md.padded_rows is None or md.padded_rows.numel() != T):
            return False  # (some request attends on its own)
        backend = fb.attention
        return getattr(backend, "cpu_kernel", False) and \
            pool.k_buffer[0].dtype == torch.bfloat16 and pool.k_buffer[0].device.type == "cpu"

    def run(self, x: torch.Tensor, rope_tables, fb, pool) -> torch.Tensor:
        """The final norm of the last layer's residual stream, (T, D) bf16, for embeddings x.
        Past max_rows, in chunks of max_rows rows in order: a chunk's rows read only keys of
        earlier positions, stored by the chunk itself or by the ones before it."""
        T = x.shape[0]
        cos, ssin = (t.reshape(T, self.hd).contiguous() for t in rope_tables)
        md, outs = fb.attn, []
        for a in range(0, T, self.max_rows):
            b = min(T, a + self.max_rows)
            outs.append(cpu_decoder_forward(
                x[a:b].contiguous(), self.weights, self.bits, pool.kv_pointers(),
                pool.k_buffer[0], cos[a:b], ssin[a:b], fb.out_cache_loc[a:b],
                md.padded_kv_indices[a:b], md.kv_lens[a:b], self.model.norm.weight, self.n_q,
                self.inter, self.eps, self.scale, self.times))
        return outs[0] if len(outs) == 1 else torch.cat(outs)
