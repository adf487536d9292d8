"""Triton kernels against their PyTorch references: on the CPU through Triton's interpreter at
small sizes (TRITON_INTERPRET=1, set before triton is imported), on a GPU at the model's sizes."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from sglc_runtime.kernels.decode_attention import decode_attention, decode_attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(b, n_q, n_kv, hd, slots, max_len, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(slots, n_kv, hd, generator=g).to(dtype)
    v = torch.randn(slots, n_kv, hd, generator=g).to(dtype)
    q = torch.randn(b, n_q, hd, generator=g).to(dtype)
    lens = torch.randint(1, max_len + 1, (b,), generator=g)
    lens[0] = max_len  # one full row
    idx = torch.randint(1, slots, (b, max_len), generator=g)
    idx[torch.arange(max_len)[None, :] >= lens[:, None]] = 0  # padding reads slot 0
    return [t.to(DEVICE) for t in (q, k, v, idx, lens)]


@pytest.mark.parametrize("b,n_q,n_kv,max_len,block", [(3, 6, 2, 37, 16), (2, 4, 4, 5, 16),
                                                       (1, 3, 1, 64, 32)])
def test_decode_attention_matches_reference_small(b, n_q, n_kv, max_len, block):
    q, k, v, idx, lens = _case(b, n_q, n_kv, 16, 200, max_len, torch.float32, seed=max_len)
    out = decode_attention(q, k, v, idx, lens, 0.25, block_n=block)
    ref = decode_attention_ref(q, k, v, idx, lens, 0.25)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_decode_attention_ignores_slots_past_each_length():
    q, k, v, idx, lens = _case(2, 4, 2, 16, 100, 20, torch.float32, seed=3)
    before = decode_attention(q, k, v, idx, lens, 0.3, block_n=16)
    past = torch.arange(20, device=DEVICE)[None, :] >= lens[:, None]
    idx2 = idx.clone()
    idx2[past] = 99  # garbage beyond the length must not matter
    torch.testing.assert_close(decode_attention(q, k, v, idx2, lens, 0.3, block_n=16), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model-sized run needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_model_sizes_gpu(dtype):
    """SmolLM2's heads (9 query, 3 KV, 64 wide), 64 requests, up to 4096 positions."""
    q, k, v, idx, lens = _case(64, 9, 3, 64, 300_000, 4096, dtype, seed=0)
    out = decode_attention(q, k, v, idx, lens, 0.125)
    ref = decode_attention_ref(q, k, v, idx, lens, 0.125)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
