"""Small-batch decode through int4 weights: on a CPU, decode at 1-64 rows is bound by reading
the weights from memory. Where a GGUF file's own Q4_0/Q4_1 weights and AMX are there, rows up
to `q4_max_rows` use `kernels/cpu_q4_linear.c` on those exact weights; elsewhere rows <=
`max_rows` use torch's packed-int4 matmul (4.5 bits/weight, group-32 scale + zero, bf16
activations). Larger batches keep the float path.

`quantize_int4` below is the plain PyTorch reference of what torch's packed kernel computes;
`kernels/q4_linear.q4_linear_ref` is the 4-bit kernel's."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.cpu_kernels import cpu_q4_linear, cpu_q4_linear_available
from ..kernels.q4_linear import pack_q4, pack_q8

GROUP = 32


def int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-32 min/max quantization: w ~= scale * (q - 8) + zero, q in [0, 15].
    Returns q (N, K) int32, scale (N, K/G), zero (N, K/G). Exact for Q4_1 blocks whose codes
    span 0..15 (the usual case), since Q4_1 stores w = d * q + m."""
    n, k = w.shape
    g = w.float().reshape(n, k // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-10)
    q = ((g - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).round().clamp(0, 15).to(torch.int32)
    zero = lo + 8 * scale
    return q.reshape(n, k), scale, zero


def dequantize_int4(q, scale, zero) -> torch.Tensor:
    n, k = q.shape
    g = (q.reshape(n, k // GROUP, GROUP).float() - 8) * scale.unsqueeze(-1) + zero.unsqueeze(-1)
    return g.reshape(n, k)


#: the 4-bit kernel's rows, up to where bf16 linears catch up: it dequantizes once per 64 rows,
#: and still beat oneDNN's bf16 at 100-128 rows (17.8 vs 21.8 ms over 30 layers' projections),
#: not from ~166 on
Q4_MAX_ROWS = 128


class Int4DecodeLinear(nn.Module):
    """Wraps an nn.Linear: rows <= max_rows go through torch's packed int4, rows up to
    q4_max_rows through the 4-bit kernel when `q4` (codes, d, m of these exact weights, see
    kernels/q4_linear.py) is given, others through the float weight. The float weight stays
    the source of truth (prefill, large batches).
    With `bf16_out`, small-batch results stay in bfloat16 (saves a conversion where the next
    op is a residual add, which promotes, or another int4 linear)."""

    def __init__(self, linear: nn.Linear, max_rows: int = 8, bf16_out: bool = False,
                 q4: tuple[torch.Tensor, ...] | None = None, q4_max_rows: int = Q4_MAX_ROWS):
        super().__init__()
        assert linear.bias is None and linear.in_features % GROUP == 0
        self.linear = linear
        self.max_rows = max_rows
        self.bf16_out = bf16_out
        self.packed = self.scales_zeros = None  # (max_rows 0: torch's int4 never runs)
        if max_rows > 0:
            q, scale, zero = quantize_int4(linear.weight.data)
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)  # (N, K/2)
            self.scales_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous() \
                .to(torch.bfloat16)  # (K/G, N, 2)
        self.q4 = pack_q4(*q4) if q4 is not None else None
        self.q4_max_rows = q4_max_rows if q4 is not None else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows > self.max_rows and rows <= self.q4_max_rows and x.dtype == torch.bfloat16 \
                and x.dim() == 2 and x.stride(1) == 1:
            return cpu_q4_linear(x, self.q4, self.linear.out_features)
        if rows > self.max_rows:
            return self.linear(x)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, GROUP,
                                                       self.scales_zeros)
        return y if self.bf16_out else y.to(x.dtype)


class Bf16DecodeLinear(nn.Module):
    """Rows <= max_rows use a bfloat16 copy of the weight (half the memory traffic); used for
    the LM head, whose Q8_0 source would lose too much at 4 bits."""

    def __init__(self, linear: nn.Linear, max_rows: int = 8):
        super().__init__()
        self.linear = linear
        self.max_rows = max_rows
        self.weight_bf16 = linear.weight.data.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_rows:
            return self.linear(x)
        return F.linear(x.to(torch.bfloat16), self.weight_bf16).to(x.dtype)


#: the 8-bit LM head's rows: at 64 rows oneDNN's bf16 head was faster (cpu_quant_linear.json)
Q8_HEAD_MAX_ROWS = 32


class Q8DecodeHead(nn.Module):
    """The LM head: rows up to `max_rows` through the AMX kernel on the checkpoint's own Q8_0
    codes (`kernels/q4_linear.pack_q8`; bit for bit the bf16 weights' values, half the bytes
    read per step; held beside the bf16 weight), others through `head`, which keeps the
    weight (tied to the embedding)."""

    def __init__(self, head: nn.Module, q8: tuple[torch.Tensor, torch.Tensor],
                 max_rows: int = Q8_HEAD_MAX_ROWS):
        super().__init__()
        self.head, self.max_rows = head, max_rows
        self.q8 = pack_q8(*q8)

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """bf16 logits through `head`; float32 ones, unrounded, through the kernel (the
        caller takes float32 logits: `LlamaForCausalLM.forward` converts the former)."""
        if x.shape[0] <= self.max_rows and x.dtype == torch.bfloat16 and x.dim() == 2 \
                and x.stride(1) == 1:
            return cpu_q4_linear(x, self.q8, self.head.out_features, out_dtype=torch.float32)
        return self.head(x)


def enable_int4_decode(model: nn.Module, max_rows: int | None = None,
                       q4: dict[str, tuple] | None = None,
                       head_q8: tuple[torch.Tensor, torch.Tensor] | None = None,
                       all_rows: bool = False) -> None:
    """Swap the decoder's projections for the small-batch int4 paths, and a float32 model's LM
    head for a bf16 copy (a bf16 model's head is bf16 already).

    q4: the projections' own 4-bit weights by HF name (`loader.gguf_q4_projections`); in a
    bf16 model where `cpu_q4_linear_available()`, rows above max_rows up to Q4_MAX_ROWS run
    the 4-bit kernel on them. head_q8: the LM head's own Q8_0 codes and scales
    (`loader.gguf_q8_head`); there, its rows up to Q8_HEAD_MAX_ROWS run the kernel's 8-bit path.

    max_rows (None: by what runs): torch's int4 kernel's cost grows with the rows, so it wins
    only while reading weights dominates. In a bf16 model on an AVX-512-bf16 CPU decode steps
    measured 1.5x faster at 2-4 rows, even at 6 and slower at 8 (against oneDNN's packed
    bf16); in a float32 model on an AVX2 CPU int4 still won at 8 rows. With the 4-bit packings
    it is 0: every row count up to Q4_MAX_ROWS takes the 4-bit kernel (the file's exact
    weights; torch's int4 requantizes them), which the fused decoder (fused_decoder.py) runs
    with no Python between layers: 1-4-row decode steps 10.8-13.7 -> 7.6-9.5 ms there, where
    called from Python it was 20% slower than torch's int4 at those rows.

    all_rows: the 4-bit kernel (and the 8-bit head) at every row count, not only up to
    Q4_MAX_ROWS / Q8_HEAD_MAX_ROWS: a row's sums then never depend on how many rows share
    the call (deterministic inference)."""
    if (q4 is not None or head_q8 is not None) and not (
            model.lm_head.weight.dtype == torch.bfloat16 and cpu_q4_linear_available()):
        q4 = head_q8 = None
    if max_rows is None:
        max_rows = 0 if q4 is not None else \
            4 if model.lm_head.weight.dtype == torch.bfloat16 else 8
    q4_rows, head_rows = (sys.maxsize, sys.maxsize) if all_rows else (Q4_MAX_ROWS,
                                                                      Q8_HEAD_MAX_ROWS)
    if head_q8 is not None and model.lm_head.out_features % 16 == 0:
        model.lm_head = Q8DecodeHead(model.lm_head, head_q8, head_rows)

    def fused(i: int, *names: str):  # the parts' codes, d, m stacked along rows as fused
        if q4 is None:
            return None
        parts = [q4[f"model.layers.{i}.{n}.weight"] for n in names]
        return tuple(torch.cat(p, 0) for p in zip(*parts))

    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = Int4DecodeLinear(
            attn.qkv_proj, max_rows,
            q4=fused(i, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            q4_max_rows=q4_rows)
        attn.o_proj = Int4DecodeLinear(attn.o_proj, max_rows, bf16_out=True,
                                       q4=fused(i, "self_attn.o_proj"), q4_max_rows=q4_rows)
        mlp.gate_up_proj = Int4DecodeLinear(mlp.gate_up_proj, max_rows, bf16_out=True,
                                            q4=fused(i, "mlp.gate_proj", "mlp.up_proj"),
                                            q4_max_rows=q4_rows)
        mlp.down_proj = Int4DecodeLinear(mlp.down_proj, max_rows, bf16_out=True,
                                         q4=fused(i, "mlp.down_proj"), q4_max_rows=q4_rows)
    if model.lm_head.weight.dtype != torch.bfloat16:
        model.lm_head = Bf16DecodeLinear(model.lm_head, max_rows)
