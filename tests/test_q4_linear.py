"""The 4-bit decode linear (kernels/cpu_q4_linear.c) against its PyTorch reference on each of
its instruction sets (AMX where it runs; AVX-512, forced on an AMX machine too), and GGUF's own
4-bit blocks against gguf-py's dequantization."""

import gguf
import numpy as np
import pytest
import torch
from torch import nn

from sglc_runtime.kernels.cpu_kernels import (
    cpu_q4_linear,
    cpu_q4_linear_available,
    cpu_q4_linear_isa,
    set_cpu_q4_isa,
)
from sglc_runtime.kernels.q4_linear import (
    pack_q4,
    pack_q8,
    q4_dequantize,
    q4_from_gguf,
    q4_linear_ref,
    q8_dequantize,
    q8_from_gguf,
    q8_linear_ref,
)
from sglc_runtime.model.int4 import Q4_MAX_ROWS, Int4DecodeLinear, Q8DecodeHead, int4_available

needs_kernel = pytest.mark.skipif(not cpu_q4_linear_available(),
                                  reason="the 4-bit kernel needs AVX-512-BF16 and a C compiler")


def random_blocks(type_name: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Rows of GGUF blocks with random codes and plausible float16 scales and offsets."""
    rng = np.random.default_rng(seed)
    g = k // 32
    d = (rng.random((rows, g, 1)) * 0.02 + 1e-4).astype(np.float16).view(np.uint8)
    qs = rng.integers(0, 256, (rows, g, 16), dtype=np.uint8)
    if type_name == "Q4_0":
        return np.concatenate([d, qs], -1).reshape(rows, -1)
    m = (-rng.random((rows, g, 1)) * 0.1).astype(np.float16).view(np.uint8)
    return np.concatenate([d, m, qs], -1).reshape(rows, -1)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1"])
def test_gguf_blocks_dequantize_bit_for_bit_as_gguf_py(type_name):
    raw = random_blocks(type_name, 48, 256)
    codes, d, m = q4_from_gguf(type_name, raw)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name])
    assert torch.equal(q4_dequantize(codes, d, m), torch.from_numpy(np.asarray(ref, np.float32)))


def test_other_gguf_types_are_not_taken():
    assert q4_from_gguf("Q8_0", np.zeros((16, 34), np.uint8)) is None


def random_q4(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    d = (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).half()
    m = (-torch.rand(n, k // 32, generator=g) * 0.1).half()
    return codes, d, m


def test_packing_keeps_every_code_scale_and_offset():
    codes, d, m = random_q4(32, 64)
    p = pack_q4(codes, d, m)
    assert p.shape == (2, 2, 320) and p.dtype == torch.uint8
    # block 1, group 0: scales of columns 16..31, then B row 0's byte 0 = columns 16 and 24
    assert torch.equal(p[1, 0, :32].view(torch.float16), d[16:, 0])
    assert torch.equal(p[1, 0, 32:64].view(torch.float16), m[16:, 0])
    assert p[1, 0, 64].item() == codes[16, 0].item() | codes[24, 0].item() << 4
    assert p[1, 0, 65].item() == codes[16, 1].item() | codes[24, 1].item() << 4


@pytest.mark.parametrize("rows", [1, 5, 6, 7, 16, 17, 40, 64, 65, 130])
@pytest.mark.parametrize("n,k", [(16, 32), (48, 96), (192, 576)])
def test_q4_kernel_matches_reference(isa, rows, n, k):
    codes, d, m = random_q4(n, k, seed=rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1)).bfloat16()
    ref = q4_linear_ref(x, codes, d, m).float()
    out = cpu_q4_linear(x, pack_q4(codes, d, m), n)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, n)
    # the same bf16 products, summed in another order: one bf16 step of the output at most
    assert torch.allclose(out.float(), ref, rtol=2 ** -7, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("bits", [4, 8])
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(isa, bits):
    """Deterministic inference rests on this: each output sums its products in one order at
    any row count (AMX's row tiles and pair mode, AVX-512's row passes), so a row computed
    alone, among 7, 40 or 200 rows, or at another place of the call gives the same bits."""
    n, k = 96, 576
    if bits == 4:
        codes, d, m = random_q4(n, k, seed=5)
        packed = pack_q4(codes, d, m)
    else:
        packed = pack_q8(*random_q8(n, k, seed=5))
    x = torch.randn(200, k, generator=torch.Generator().manual_seed(9)).bfloat16()
    alone = cpu_q4_linear(x[3:4].contiguous(), packed, n, out_dtype=torch.float32)
    for rows in (7, 16, 17, 40, 200):
        out = cpu_q4_linear(x[:rows], packed, n, out_dtype=torch.float32)
        assert torch.equal(out[3:4], alone), rows
    shifted = cpu_q4_linear(x[1:40], packed, n, out_dtype=torch.float32)  # row 3 at place 2
    assert torch.equal(shifted[2:3], alone)


def test_zero_rows_give_an_empty_result(isa):
    """(A chunked-prefill step that samples nothing hands the LM head no rows.)"""
    codes, d, m = random_q4(32, 64)
    for packed in (pack_q4(codes, d, m), pack_q8(*random_q8(32, 64))):
        out = cpu_q4_linear(torch.zeros(0, 64).bfloat16(), packed, 32, out_dtype=torch.float32)
        assert out.shape == (0, 32)


def test_isa_can_be_forced_and_reported():
    with pytest.raises(ValueError, match="isa"):
        set_cpu_q4_isa("sse2")
    if not cpu_q4_linear_available():
        assert cpu_q4_linear_isa() is None
        return
    before = cpu_q4_linear_isa()
    try:
        assert set_cpu_q4_isa("avx512") == "avx512" == cpu_q4_linear_isa()
    finally:
        set_cpu_q4_isa(before)
    assert cpu_q4_linear_isa() == before


def test_q4_kernel_reads_strided_rows(isa):
    codes, d, m = random_q4(64, 128)
    x = torch.randn(20, 256).bfloat16()[:, 64:192]  # row stride 256
    ref = q4_linear_ref(x.contiguous(), codes, d, m).float()
    out = cpu_q4_linear(x, pack_q4(codes, d, m), 64).float()
    assert torch.allclose(out, ref, rtol=2 ** -7, atol=1e-3 * ref.abs().max().item())


@needs_kernel
@pytest.mark.skipif(not int4_available(), reason="no packed int4 matmul in torch")
def test_int4_decode_linear_routes_rows_by_count():
    codes, d, m = random_q4(96, 128)
    lin = nn.Linear(128, 96, bias=False)
    lin.weight.data = q4_dequantize(codes, d, m).bfloat16()
    fast = Int4DecodeLinear(lin, max_rows=4, q4=(codes, d, m))
    for rows in (5, Q4_MAX_ROWS):  # the 4-bit kernel: the bf16 weights' products
        x = torch.randn(rows, 128).bfloat16()
        ref = q4_linear_ref(x, codes, d, m).float()
        assert torch.allclose(fast(x).float(), ref, rtol=2 ** -7,
                              atol=1e-3 * ref.abs().max().item())
    x = torch.randn(Q4_MAX_ROWS + 1, 128).bfloat16()
    assert torch.equal(fast(x), lin(x))  # above: the float path itself


def test_default_model_projections_are_its_float_weights(tmp_path):
    from sglc_runtime.loader import gguf_q4_projections, load_gguf
    from sglc_runtime.model_source import default_model_path

    cfg, weights, reader = load_gguf(default_model_path())
    q4 = gguf_q4_projections(reader, cfg)
    assert len(q4) == 7 * cfg.num_hidden_layers
    for name, parts in q4.items():  # q and k rows unpermuted for RoPE like the float weights
        assert torch.equal(q4_dequantize(*parts), weights[name]), name


def test_q8_blocks_dequantize_bit_for_bit_as_gguf_py():
    rng = np.random.default_rng(3)
    d = (rng.random((40, 8, 1)) * 0.02 + 1e-4).astype(np.float16).view(np.uint8)
    raw = np.concatenate([d, rng.integers(0, 256, (40, 8, 32), dtype=np.uint8)], -1)
    raw = raw.reshape(40, -1)
    codes, dd = q8_from_gguf("Q8_0", raw)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    assert codes.dtype == torch.int8 and q8_from_gguf("Q4_1", raw) is None
    assert torch.equal(q8_dequantize(codes, dd), torch.from_numpy(np.asarray(ref, np.float32)))


def random_q8(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    return codes, (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).half()


@pytest.mark.parametrize("rows", [1, 5, 16, 33, 64, 70])
@pytest.mark.parametrize("n,k", [(16, 32), (48, 96), (160, 576)])
def test_q8_kernel_matches_reference(isa, rows, n, k):
    codes, d = random_q8(n, k, seed=rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(2)).bfloat16()
    ref = q8_linear_ref(x, codes, d).float()
    out = cpu_q4_linear(x, pack_q8(codes, d), n)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, n)
    assert torch.allclose(out.float(), ref, rtol=2 ** -7, atol=1e-3 * ref.abs().max().item())
    out32 = cpu_q4_linear(x, pack_q8(codes, d), n, out_dtype=torch.float32)
    assert out32.dtype == torch.float32 and torch.equal(out32.bfloat16(), out)  # unrounded


@needs_kernel
def test_q8_head_routes_rows_and_keeps_the_weight():
    codes, d = random_q8(64, 96)
    head = nn.Linear(96, 64, bias=False)
    head.weight.data = q8_dequantize(codes, d).bfloat16()
    q8 = Q8DecodeHead(head, (codes, d), max_rows=8)
    assert q8.weight is head.weight  # (tied to the embedding)
    x = torch.randn(8, 96).bfloat16()
    ref = q8_linear_ref(x, codes, d).float()
    logits = q8(x)
    assert logits.dtype == torch.float32  # (the kernel's sums, not rounded to bf16)
    assert torch.allclose(logits, ref, rtol=2 ** -7, atol=1e-3 * ref.abs().max().item())
    x = torch.randn(9, 96).bfloat16()
    assert torch.equal(q8(x), head(x))


def test_mismatched_packing_is_refused():
    if not cpu_q4_linear_available():
        pytest.skip("no 4-bit kernel here")
    with pytest.raises(ValueError, match="do not match"):
        cpu_q4_linear(torch.zeros(2, 64).bfloat16(), pack_q4(*random_q4(32, 96)), 32)
