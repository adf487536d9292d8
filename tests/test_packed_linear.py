"""oneDNN-packed CPU linears against their reference, F.linear."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sglc_runtime.model.packed_linear import (
    PackedLinear,
    prepack_linears,
    prepacked_linear_available,
)

pytestmark = pytest.mark.skipif(not prepacked_linear_available(), reason="no oneDNN in torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 64, 300])
def test_packed_matches_f_linear(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    lin = nn.Linear(576, 960, bias=False).to(dtype)
    x = torch.randn(rows, 576, generator=g).to(dtype)
    ref, out = F.linear(x, lin.weight), PackedLinear(lin)(x)
    assert out.dtype == dtype and out.shape == (rows, 960)
    if dtype == torch.bfloat16:  # the same oneDNN kernel F.linear reaches, minus the reorder
        assert torch.equal(out, ref)
    else:  # another float32 kernel: equal within rounding
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_does_not_depend_on_the_batch(dtype):
    # batch-invariance: greedy text must not change with what else runs in the step. Measured
    # on an AMX CPU (Sapphire Rapids): oneDNN's bf16 AMX kernels round a row differently with
    # the row count (up to one bf16 step, 0.004 here), so there bf16 is only close.
    lin = PackedLinear(nn.Linear(576, 1536, bias=False).to(dtype))
    x = torch.randn(200, 576, generator=torch.Generator().manual_seed(1)).to(dtype)
    full = lin(x)
    for rows in (1, 3, 8, 64):
        if dtype == torch.bfloat16 and _cpu_has_amx():
            torch.testing.assert_close(lin(x[:rows]), full[:rows], rtol=2 ** -7, atol=2 ** -9)
        else:
            assert torch.equal(lin(x[:rows]), full[:rows]), rows


def test_prepack_keeps_a_tied_weight_and_drops_the_rest():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.proj = nn.Linear(32, 32, bias=False)
            self.head = nn.Linear(32, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.proj(self.embed(ids)))

    model = Tiny().eval()
    ids = torch.tensor([1, 7, 49])
    with torch.no_grad():
        ref = model(ids)
        assert prepack_linears(model) == 2
        out = model(ids)
    assert isinstance(model.proj, PackedLinear) and model.proj.weight is None
    assert model.head.weight is model.embed.weight  # the embedding still reads it
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["C kernel", "PyTorch"])
def test_refined_top_logits_are_the_float32_products(path, monkeypatch):
    """A bfloat16 LM head's logits with each row's top k recomputed from the float32 weight:
    those k equal the float32 products (where bfloat16 had rounded near-ties together), the
    rest keep the bfloat16 values, and the row's argmax is float32's. (Ties at the k-th place
    may be broken either way.) Through kernels/cpu_refine_logits.c where it runs, and the
    PyTorch lines it replaces."""
    from sglc_runtime.kernels.cpu_kernels import cpu_kernels_available
    from sglc_runtime.model import llama
    from sglc_runtime.model.llama import refine_top_logits

    if path == "C kernel" and not cpu_kernels_available():
        pytest.skip("no CPU kernels here")
    if path == "PyTorch":
        monkeypatch.setattr(llama, "cpu_refine_supports", lambda *a: False)
    torch.manual_seed(0)
    for V in (5000, 49152, 37):
        w32 = torch.randn(V, 64) * 0.3
        h = torch.randn(6, 64).bfloat16()
        logits = (h @ w32.bfloat16().t()).float()
        exact = h.float() @ w32.t()
        before = logits.clone()
        refine_top_logits(logits, h, w32, k=8)
        kth = before.topk(8, dim=-1).values[:, -1:]
        changed = logits != before
        assert (changed.sum(-1) <= 8).all()
        above, below = before > kth, before < kth  # (between: tied with the k-th)
        assert torch.allclose(logits[above], exact[above], rtol=1e-5, atol=1e-5)
        assert not changed[below].any()
        picked = changed | above  # (a refined value can equal the rounded one)
        assert ((before >= kth) | ~picked).all()
        assert torch.equal(logits.argmax(-1), exact.argmax(-1))
        assert not torch.equal(before[above], exact[above])  # rounding was real


@pytest.mark.parametrize("vocab", [49152, 5000])  # in blocks of 128, and not
def test_top_k_indices_finds_the_k_largest(vocab):
    from sglc_runtime.model.llama import top_k_indices

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(7, vocab, generator=g) * 4
    logits[0, 300:340] = 50.0  # ties spanning blocks: any 16 of them are the top 16
    logits[1, :] = -1.0
    logits[1, vocab - 3] = 2.0  # the top sits in the last block
    got = top_k_indices(logits, 16)
    want = logits.topk(16, dim=-1).values
    assert got.shape == (7, 16) and all(len(set(r.tolist())) == 16 for r in got)
    assert torch.equal(logits.gather(1, got).sort(-1, descending=True).values, want)


@pytest.mark.parametrize("vocab", [49152, 37, 1])
def test_greedy_ids_are_argmax_first_of_ties(vocab):
    """torch's max along a row, through the C scan where it runs: the first of equal maxima,
    a NaN's index where a row has one; rows of any width, non-contiguous ones through torch."""
    from sglc_runtime.kernels.cpu_kernels import cpu_argmax_rows, cpu_kernels_available
    from sglc_runtime.sampler import greedy_ids

    logits = torch.randn(9, vocab)
    logits[3, [i for i in (0, vocab // 3, vocab - 1)]] = 99.0
    logits[5, vocab // 2] = float("nan")
    logits[6] = float("-inf")
    want = logits.max(-1).indices
    assert torch.equal(greedy_ids(logits), want)
    assert int(greedy_ids(logits)[3]) == 0 and int(want[5]) == vocab // 2
    if cpu_kernels_available():
        assert torch.equal(cpu_argmax_rows(logits), want)
    assert torch.equal(greedy_ids(logits[:, :vocab]), want)
    assert cpu_argmax_rows(logits.t().contiguous().t()) is None or vocab == 1
