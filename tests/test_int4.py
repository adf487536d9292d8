"""The packed-int4 decode path against its plain PyTorch reference."""

import pytest
import torch
from torch import nn

from sglc_runtime.model.int4 import (
    Bf16DecodeLinear,
    Int4DecodeLinear,
    dequantize_int4,
    int4_available,
    quantize_int4,
)

pytestmark = pytest.mark.skipif(not int4_available(), reason="no packed int4 matmul in torch")


def test_quantize_is_exact_for_q4_1_blocks():
    # Q4_1 stores w = d * q + m per 32-block; with codes spanning 0..15 it round-trips exactly
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (64, 128), generator=g)
    q[:, ::32] = 0
    q[:, 1::32] = 15
    d = torch.rand(64, 4, generator=g).repeat_interleave(32, 1) * 0.01 + 1e-3
    m = torch.randn(64, 4, generator=g).repeat_interleave(32, 1) * 0.05
    w = d * q + m
    qq, scale, zero = quantize_int4(w)
    assert torch.allclose(dequantize_int4(qq, scale, zero), w, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_int4_linear_matches_reference(rows):
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=False)
    fast = Int4DecodeLinear(lin, max_rows=8)
    x = torch.randn(rows, 256)
    q, scale, zero = quantize_int4(lin.weight.data)
    # the kernel keeps scales in bf16 and multiplies in bf16: compare at that precision
    ref = x @ dequantize_int4(q, scale.bfloat16().float(), zero.bfloat16().float()).T
    out = fast(x)
    assert out.dtype == x.dtype and out.shape == (rows, 96)
    assert torch.allclose(out, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_large_batches_use_exact_weights():
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(20, 64)
    assert torch.equal(Int4DecodeLinear(lin, max_rows=8)(x), lin(x))
    assert torch.equal(Bf16DecodeLinear(lin, max_rows=8)(x), lin(x))
    small = Bf16DecodeLinear(lin, max_rows=8)(x[:2])
    assert torch.allclose(small, lin(x[:2]), atol=5e-2)
