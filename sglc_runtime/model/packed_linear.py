"""CPU linear layers whose weight is reordered once, at load, into oneDNN's blocked layout.

torch's own CPU `F.linear` hands a bfloat16 weight to oneDNN in plain layout on every call, and
sends float32 to MKL, whose AVX-512 code paths do not run on AMD CPUs. Calling oneDNN directly
with a weight reordered once (`mkldnn._reorder_linear_weight` + `mkldnn._linear_pointwise`, the
pair inductor's CPU freezing uses) measured, on an AVX-512-bf16 AMD CPU over the default model's
four projections and LM head: bfloat16 1.7-2.0x faster at 1-8 rows, 1.3x at 64, bit-identical
to `F.linear`; float32 2.1-3.5x faster, equal within float32 rounding, and unlike torch's float32
path a row's result does not depend on how many rows share the call
(`python benchmarks/bench_cpu_ops.py`, cpu_ops.json).

`F.linear(x, weight)` is the reference of what `PackedLinear` computes.
"""

from __future__ import annotations

import torch
from torch import nn


def prepacked_linear_available() -> bool:
    """oneDNN's packed linear ops exist in this torch build."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """A bias-free nn.Linear on the CPU through a oneDNN-packed copy of its weight.

    The packed tensor is opaque (no indexing, no views); when `keep_weight` the plain weight
    stays reachable as `.weight` (a tied embedding or another wrapper still reads it), otherwise
    only the packed copy is kept."""

    def __init__(self, linear: nn.Linear, keep_weight: bool = False):
        super().__init__()
        assert linear.bias is None, "PackedLinear takes bias-free linears"
        assert linear.weight.device.type == "cpu", "PackedLinear is for the CPU"
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.weight = linear.weight if keep_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) in the weight's dtype -> (..., out_features)."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def prepack_linears(model: nn.Module) -> int:
    """Replace every plain nn.Linear under `model` (also those inside other wrappers) by a
    PackedLinear; a linear whose weight is shared with another module (a tied LM head) keeps
    its plain weight. Returns how many were replaced."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                shared = uses.get(id(child.weight), 0) > 1
                setattr(parent, name, PackedLinear(child, keep_weight=shared))
                replaced += 1
    return replaced
