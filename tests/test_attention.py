"""Attention over the paged KV pool: `attend` against SDPA, and cascade (shared-prefix)
attention against plain per-request attention on the same pool."""

import random
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sglc_runtime.attention import (
    MIN_SHARED_PREFIX,
    TorchAttention,
    attend,
    paged_attention,
    torch_attention,
)
from sglc_runtime.forward_batch import build_forward_batch
from sglc_runtime.kv_pool import TokenToKVPool

N_Q, N_KV, HD = 6, 2, 16


@pytest.mark.parametrize("impl", ["matmul", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attend_matches_sdpa_and_logsumexp(impl, dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, N_Q, HD, generator=g)
    k = torch.randn(2, 7, N_KV, HD, generator=g)
    v = torch.randn(2, 7, N_KV, HD, generator=g)
    mask = torch.rand(2, 5, 7, generator=g) > 0.4
    mask[..., 0] = True  # every query sees a key
    out, lse = attend(q.to(dtype), k.to(dtype), v.to(dtype), 0.3, mask, impl=impl)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask[:, None], scale=0.3, enable_gqa=True)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), ref.transpose(1, 2), atol=tol, rtol=tol)
    kk = k.repeat_interleave(N_Q // N_KV, dim=2)  # (B, L, n_q, hd)
    scores = torch.einsum("bqhd,blhd->bhql", q, kk) * 0.3
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    torch.testing.assert_close(lse, scores.logsumexp(-1).transpose(1, 2), atol=tol, rtol=tol)


def test_attend_in_query_chunks_is_the_same(monkeypatch):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 33, N_Q, HD, generator=g), torch.randn(1, 40, N_KV, HD, generator=g),
               torch.randn(1, 40, N_KV, HD, generator=g))
    whole = attend(q, k, v, 0.25)
    monkeypatch.setattr(torch_attention, "_CHUNK_ELEMS", 500)  # a few queries per chunk
    chunked = attend(q, k, v, 0.25)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def _setup(contiguous_prefix: bool, seed: int, hd: int = HD, dtype=torch.float32):
    """A pool whose first requests share a cached prefix of P slots, each with its own
    cached tokens after it."""
    rng = random.Random(seed)
    pool = TokenToKVPool(400, 1, N_KV, hd, dtype, "cpu")
    pool.k_buffer[0][1:].normal_()
    pool.v_buffer[0][1:].normal_()
    free = list(range(1, 401))
    if not contiguous_prefix:
        rng.shuffle(free)
    P = MIN_SHARED_PREFIX + 9
    prefix, free = free[:P], free[P:]
    table = torch.zeros(8, 200, dtype=torch.int64)
    reqs = []
    for row, own in enumerate([0, 3, 11, 1]):
        slots, free = free[:own], free[own:]
        table[row, :P + own] = torch.tensor(prefix + slots)
        reqs.append(SimpleNamespace(row=row, kv_len=P + own, fill_ids=list(range(P + own + 20))))
    return pool, table, reqs, free


@pytest.fixture
def any_cascade(monkeypatch):
    """Cascade for every shared prefix of MIN_SHARED_PREFIX slots, however few rows it saves."""
    from sglc_runtime.attention import backend

    for impl in backend.CPU_CASCADE_MIN_ROWS:
        monkeypatch.setitem(backend.CPU_CASCADE_MIN_ROWS, impl, 0)


@pytest.mark.parametrize("impl", ["matmul", "sdpa"])
@pytest.mark.parametrize("contiguous_prefix", [True, False])
@pytest.mark.parametrize("extend_lens", [[1, 1, 1, 1], [5, 1, 7, 1], [2, 3, 4, 9]])
def test_cascade_equals_per_request_attention(contiguous_prefix, extend_lens, impl, any_cascade):
    pool, table, reqs, free = _setup(contiguous_prefix, seed=sum(extend_lens))
    T = sum(extend_lens)
    out_loc = torch.tensor(free[:T])
    g = torch.Generator().manual_seed(T)
    q = torch.randn(T, N_Q, HD, generator=g)
    k, v = torch.randn(T, N_KV, HD, generator=g), torch.randn(T, N_KV, HD, generator=g)
    is_decode = all(n == 1 for n in extend_lens)
    outs = []
    for cascade in (True, False):
        fb = build_forward_batch(table.clone(), is_decode, reqs, extend_lens, out_loc, "cpu",
                                 cascade=cascade, attention=TorchAttention(impl))
        assert (fb.attn.shared_len == MIN_SHARED_PREFIX + 9) == cascade
        if cascade:
            assert isinstance(fb.attn.shared_kv, slice) == contiguous_prefix
        outs.append(paged_attention(0, q, k, v, fb, pool, HD ** -0.5))
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("extend_lens", [[1, 1, 1, 1], [5, 1, 7, 1]])
def test_cascade_own_keys_through_the_cpu_decode_kernel(extend_lens, any_cascade):
    """bf16: the one-token rows' own keys through the C kernel (float32 out + log-sum-exp),
    merged with the shared prefix, equal the cascade without it and plain attention."""
    from sglc_runtime.kernels import cpu_kernels

    if not cpu_kernels.cpu_kernels_available():
        pytest.skip("no AVX-512-BF16 CPU or no C compiler: the CPU decode kernel is not built")
    hd = 64
    pool, table, reqs, free = _setup(False, seed=len(extend_lens), hd=hd, dtype=torch.bfloat16)
    T = sum(extend_lens)
    out_loc = torch.tensor(free[:T])
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(T, n, hd, generator=g).bfloat16() for n in (N_Q, N_KV, N_KV))
    is_decode = all(n == 1 for n in extend_lens)
    calls = []
    real = cpu_kernels.cpu_decode_attention_lse

    def counted(*a):
        calls.append(a[0].shape[0])
        return real(*a)

    from sglc_runtime.attention import backend
    outs = {}
    for name, cascade, kernel in (("kernel", True, True), ("torch", True, False),
                                  ("plain", False, False)):
        att = TorchAttention("sdpa", cpu_kernel=kernel, heads=(N_Q, N_KV, hd))
        fb = build_forward_batch(table.clone(), is_decode, reqs, extend_lens, out_loc, "cpu",
                                 cascade=cascade, attention=att)
        assert bool(fb.attn.shared_len) == cascade
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(backend, "cpu_decode_attention_lse", counted)
            outs[name] = paged_attention(0, q, k, v, fb, pool, hd ** -0.5).float()
    assert calls == [T]  # every row is a one-token row here, all through the kernel
    torch.testing.assert_close(outs["kernel"], outs["torch"], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(outs["kernel"], outs["plain"], atol=1e-2, rtol=1e-2)


def test_cpu_decode_kernel_log_sum_exp_matches_reference():
    from sglc_runtime.kernels import cpu_kernels

    if not cpu_kernels.cpu_kernels_available():
        pytest.skip("no AVX-512-BF16 CPU or no C compiler: the CPU decode kernel is not built")
    g = torch.Generator().manual_seed(3)
    b, n_q, n_kv, hd, L = 5, 9, 3, 64, 300
    kb, vb = (torch.randn(700, n_kv, hd, generator=g).bfloat16() for _ in range(2))
    q = torch.randn(b, n_q, hd, generator=g).bfloat16()
    idx = torch.randint(1, 700, (b, L), generator=g)
    lens = torch.tensor([300, 1, 77, 150, 2])
    out, lse = cpu_kernels.cpu_decode_attention_lse(q, kb, vb, idx, lens, hd ** -0.5)
    for i in range(b):
        keys = kb[idx[i, :lens[i]]].float().repeat_interleave(n_q // n_kv, 1)  # (l, n_q, hd)
        vals = vb[idx[i, :lens[i]]].float().repeat_interleave(n_q // n_kv, 1)
        s = torch.einsum("hd,lhd->hl", q[i].float(), keys) * hd ** -0.5
        torch.testing.assert_close(lse[i], s.logsumexp(-1), atol=1e-4, rtol=1e-5)
        ref = torch.einsum("hl,lhd->hd", s.softmax(-1), vals)
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=1e-4)
    assert out.dtype == lse.dtype == torch.float32


@pytest.mark.parametrize("impl", ["matmul", "sdpa"])
def test_cascade_only_where_it_saves_enough_rows(impl):
    """On the CPU a shared prefix is attended once only when the rows it saves reading,
    (b - 1) * S, reach the implementation's measured break-even."""
    from sglc_runtime.attention.backend import CPU_CASCADE_MIN_ROWS

    need = CPU_CASCADE_MIN_ROWS[impl]
    for S, want in ((need // 3 - 1, False), (need // 3 + 1, True)):  # 4 requests: 3 * S saved
        table = torch.zeros(4, S + 8, dtype=torch.int64)
        table[:, :S] = torch.arange(1, S + 1)
        reqs = [SimpleNamespace(row=r, kv_len=S + r, fill_ids=list(range(S + 8))) for r in range(4)]
        for r in range(4):
            table[r, S:S + r] = torch.arange(S + 1 + 8 * r, S + 1 + 8 * r + r)
        fb = build_forward_batch(table, True, reqs, [1] * 4, torch.arange(5000, 5004), "cpu",
                                 attention=TorchAttention(impl))
        assert (fb.attn.shared_len == S) == want, (S, need)


def test_no_cascade_when_prefixes_differ_or_are_short(any_cascade):
    _, table, reqs, free = _setup(True, seed=0)
    table[2, 5] = free[-1]  # request 2 diverges at position 5: common prefix < minimum
    fb = build_forward_batch(table, True, reqs, [1] * 4, torch.tensor(free[:4]), "cpu")
    assert fb.attn.shared_len == 0
    fb = build_forward_batch(table, True, reqs[:1], [1], torch.tensor(free[4:5]), "cpu")
    assert fb.attn.shared_len == 0  # a single request has nothing to share


def _requests_on_pool(dtype, extend_lens, prefix_lens, seed, heads=(N_Q, N_KV, HD)):
    """A pool in `dtype` holding random K/V for requests with these cached prefix lengths, the
    KV table and requests, the new tokens' slots, and their q, k, v (heads: n_q, n_kv, hd)."""
    n_q, n_kv, hd = heads
    g = torch.Generator().manual_seed(seed)
    pool = TokenToKVPool(600, 1, n_kv, hd, dtype, "cpu")
    pool.k_buffer[0][1:] = torch.randn(600, n_kv, hd, generator=g).to(dtype)
    pool.v_buffer[0][1:] = torch.randn(600, n_kv, hd, generator=g).to(dtype)
    free = torch.randperm(600, generator=g).add(1).tolist()
    table = torch.zeros(8, 300, dtype=torch.int64)
    reqs = []
    for row, p in enumerate(prefix_lens):
        slots, free = free[:p], free[p:]
        table[row, :p] = torch.tensor(slots, dtype=torch.int64)
        reqs.append(SimpleNamespace(row=row, kv_len=p, fill_ids=list(range(p + 50))))
    T = sum(extend_lens)
    out_loc = torch.tensor(free[:T])
    q = torch.randn(T, n_q, hd, generator=g)
    k, v = torch.randn(T, n_kv, hd, generator=g), torch.randn(T, n_kv, hd, generator=g)
    return pool, table, reqs, out_loc, q.to(dtype), k.to(dtype), v.to(dtype)


def _batch_on_pool(dtype, extend_lens, prefix_lens, seed):
    """`_requests_on_pool`'s pool and the batch adding `extend_lens` tokens to each request
    (no shared prefix)."""
    pool, table, reqs, out_loc, q, k, v = _requests_on_pool(dtype, extend_lens, prefix_lens,
                                                            seed)
    fb = build_forward_batch(table, all(n == 1 for n in extend_lens), reqs, extend_lens,
                             out_loc, "cpu", cascade=False)
    return pool, fb, q, k, v


@pytest.mark.parametrize("extend_lens, prefix_lens", [
    ([1, 1, 1], [5, 140, 37]),  # decode, masked rows
    ([1], [200]),  # one long decode row
    ([6, 1, 9], [0, 30, 12]),  # extend (causal, over cached prefixes) with a decode row
])
@pytest.mark.parametrize("impl", ["matmul", "sdpa"])
def test_bfloat16_attention_matches_float32(extend_lens, prefix_lens, impl, monkeypatch):
    """bf16 on the CPU under "matmul" runs `attend` (float32 softmax) instead of SDPA, under
    "sdpa" torch's fused kernel: both give float32 SDPA's result to bf16 precision."""
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        pool, fb, q, k, v = _batch_on_pool(dtype, extend_lens, prefix_lens, seed=len(prefix_lens))
        if dtype == torch.bfloat16:
            fb.attention = TorchAttention(impl)
            if impl == "matmul":
                monkeypatch.setattr(torch_attention, "_sdpa", None)  # must not be reached
        outs[dtype] = paged_attention(0, q, k, v, fb, pool, HD ** -0.5)
    assert outs[torch.bfloat16].dtype == torch.bfloat16
    torch.testing.assert_close(outs[torch.bfloat16].float(), outs[torch.float32],
                               atol=3e-2, rtol=3e-2)


def test_fastest_cpu_attention_picks_one_of_the_two():
    assert torch_attention.fastest_cpu_attention(torch.float32) == "sdpa"
    assert torch_attention.fastest_cpu_attention(torch.bfloat16) in ("sdpa", "matmul")


def test_unknown_attention_backend_is_named():
    from sglc_runtime.config import EngineConfig
    from sglc_runtime.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="attention_backend must be one of.*'flash'"):
        EngineConfig(attention_backend="flash")


def test_one_short_decode_row_uses_sdpa_in_bfloat16(monkeypatch):
    pool, fb, q, k, v = _batch_on_pool(torch.bfloat16, [1], [20], seed=0)
    fb.attention = TorchAttention("matmul")
    calls = []
    real = torch_attention._sdpa
    monkeypatch.setattr(torch_attention, "_sdpa",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    paged_attention(0, q, k, v, fb, pool, HD ** -0.5)
    assert calls == [1]


@pytest.mark.parametrize("impl", ["matmul", "sdpa"])
def test_graph_metadata_replays_a_decode_batch_padded_to_its_bucket(impl):
    """What a CUDA graph replays (cuda_graph.py), on the CPU: a decode batch's metadata copied
    into the backend's static buffers and the batch padded to a bucket of rows and keys
    (padding rows write and see only the scratch slot 0) gives the live batch's output."""
    from sglc_runtime.forward_batch import ForwardBatch

    backend = TorchAttention(impl)
    pool, fb, q, k, v = _batch_on_pool(torch.bfloat16, [1, 1, 1], [5, 140, 37], seed=3)
    fb.attention = backend
    live = paged_attention(0, q, k, v, fb, pool, HD ** -0.5)
    backend.init_graph_state(8, 512, "cpu")
    assert backend.can_capture(fb.attn, 8, 512) and not backend.can_capture(fb.attn, 2, 512)
    assert not backend.can_capture(fb.attn, 8, 128)  # 141 keys do not fit
    bs, L = 4, 256
    backend.load_graph_metadata(fb.attn, bs, L)

    def pad(x):  # padding rows hold garbage: it must not reach the real rows
        return torch.cat([x, torch.full((bs - 3, *x.shape[1:]), 7.0, dtype=x.dtype)])

    static = ForwardBatch(True, torch.zeros(bs, dtype=torch.int64), torch.zeros(bs),
                          torch.cat([fb.out_cache_loc, torch.zeros(bs - 3, dtype=torch.int64)]),
                          [0] * bs, [1] * bs, backend, backend.graph_metadata(bs, L))
    replayed = paged_attention(0, pad(q), pad(k), pad(v), static, pool, HD ** -0.5)
    torch.testing.assert_close(replayed[:3], live, atol=2e-3, rtol=2e-2)  # (bf16 blocking)
    assert bool((replayed[3:] == 7.0).all())  # a padding row saw only its own slot-0 value


def test_cascade_batches_are_not_captured(any_cascade):
    _, table, reqs, free = _setup(True, seed=0)
    fb = build_forward_batch(table, True, reqs, [1] * 4, torch.tensor(free[:4]), "cpu")
    assert fb.attn.shared_len and not fb.attention.can_capture(fb.attn, 8, 512)


@pytest.mark.parametrize("dtype, impl, kernel", [
    (torch.float32, "sdpa", False), (torch.float32, "matmul", False),
    (torch.bfloat16, "sdpa", True),  # the C decode kernel where the CPU has AVX-512-BF16
])
def test_short_extends_attend_as_padded_rows(dtype, impl, kernel, monkeypatch):
    """Requests adding a few tokens attend as one row per new token in the padded call (row j
    sees prefix + j + 1 keys): the same as causal attention per request."""
    from sglc_runtime.attention import metadata

    hd, extend_lens, prefix_lens = 64, [3, 1, 20, 40], [10, 50, 0, 7]
    pool, table, reqs, out_loc, q, k, v = _requests_on_pool(dtype, extend_lens, prefix_lens,
                                                            seed=7, heads=(6, 2, hd))
    outs = {}
    for short in (metadata.SHORT_EXTEND, 1):
        monkeypatch.setattr(TorchAttention, "short_extend", lambda self, device, s=short: s)
        fb = build_forward_batch(table.clone(), False, reqs, extend_lens, out_loc, "cpu",
                                 cascade=False, attention=TorchAttention(impl, kernel))
        if short > 1:
            assert fb.attn.in_padded == [True, True, True, False]
            assert fb.attn.kv_lens.tolist()[:4] == [11, 12, 13, 51]
            assert fb.attn.padded_rows.tolist()[:5] == [0, 1, 2, 3, 4]
        else:
            assert fb.attn.padded_rows is None  # one one-token request: all per request
        outs[short] = paged_attention(0, q, k, v, fb, pool, hd ** -0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outs[metadata.SHORT_EXTEND].float(), outs[1].float(), atol=tol,
                               rtol=tol)


def test_short_extends_only_where_decode_rows_read_the_pool_in_place(monkeypatch):
    """A backend that gathers padded keys per row would copy a prefix per new token."""
    from sglc_runtime.attention import create_attention_backend, metadata

    heads = (6, 2, 64)
    assert TorchAttention("sdpa", cpu_kernel=False, heads=heads).short_extend("cpu") == 1
    assert create_attention_backend("sdpa", torch.float32, heads=heads).short_extend("cpu") == 1
    bf16 = create_attention_backend("sdpa", torch.bfloat16, heads=heads)
    from sglc_runtime.kernels.cpu_kernels import cpu_kernels_available

    assert bf16.short_extend("cpu") == (metadata.SHORT_EXTEND if cpu_kernels_available() else 1)
    # a head shape the kernel refuses (head_dim 100) falls back to gathering: no short extends
    odd = create_attention_backend("sdpa", torch.bfloat16, heads=(32, 32, 100))
    assert odd.short_extend("cpu") == 1
    # and never past MAX_PADDED_SLOTS padded slots: a long prefix keeps its extend per request
    table = torch.arange(1, 4 * 9000 + 1).view(4, 9000)
    md = metadata.build_metadata(table, False, [0, 1], [8000, 10], [32, 1], "cpu",
                                 cascade=False, short_extend=32,
                                 max_padded_slots=100_000)  # 33 rows x 8032 slots here
    assert md.in_padded is None  # one one-token request left: every request on its own
    md = metadata.build_metadata(table, False, [0, 1], [100, 10], [32, 1], "cpu",
                                 cascade=False, short_extend=32, max_padded_slots=100_000)
    assert md.in_padded == [True, True] and md.kv_lens.numel() == 33
    # (deterministic inference: no limit, every extend a padded row)
    md = metadata.build_metadata(table, False, [0, 1], [8000, 10], [32, 1], "cpu",
                                 cascade=False, short_extend=sys.maxsize, max_padded_slots=None)
    assert md.in_padded == [True, True] and md.kv_lens.numel() == 33
