"""Paged decode attention as a Triton kernel: each request's single query attends its KV slots
read straight from the pool through its row of slot indices, so K/V are never gathered into a
padded copy (the PyTorch path in attention/torch_attention.py gathers them, which costs a copy
of every key per layer). One program per (request, query head); keys stream in blocks with an
online softmax.

`decode_attention_ref` is the plain PyTorch statement of the same contract. The kernel runs on
CUDA, and on the CPU under TRITON_INTERPRET=1 (how the tests check it without a GPU)."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU path never needs it
    triton = None


def triton_available() -> bool:
    return triton is not None


def decode_attention_ref(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                         kv_indices: torch.Tensor, kv_lens: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """q: (b, n_q, hd); k_buf, v_buf: (slots, n_kv, hd); kv_indices: (b, L) slot of each
    position (entries past kv_lens[i] are ignored); kv_lens: (b,). Returns (b, n_q, hd)."""
    b, n_q, _ = q.shape
    group = n_q // k_buf.shape[1]
    out = torch.empty_like(q)
    for i in range(b):
        idx = kv_indices[i, :int(kv_lens[i])]
        k = k_buf[idx].float().repeat_interleave(group, dim=1)  # (n, n_q, hd)
        v = v_buf[idx].float().repeat_interleave(group, dim=1)
        s = torch.einsum("hd,nhd->hn", q[i].float(), k) * scale
        out[i] = torch.einsum("hn,nhd->hd", s.softmax(-1), v).to(q.dtype)
    return out


if triton is not None:
    @triton.jit
    def _decode_kernel(Q, K, V, Idx, Lens, Out, stride_qb, stride_qh, stride_kt, stride_kh,
                       stride_vt, stride_vh, stride_ib, stride_ob, stride_oh, scale,
                       GROUP: tl.constexpr, HD: tl.constexpr, BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        kvh = h // GROUP
        d = tl.arange(0, HD)
        q = tl.load(Q + b * stride_qb + h * stride_qh + d).to(tl.float32)
        n = tl.load(Lens + b)
        m_i = tl.full([], float("-inf"), tl.float32)
        l_i = tl.full([], 0.0, tl.float32)
        acc = tl.zeros([HD], dtype=tl.float32)
        for start in range(0, n, BLOCK_N):
            offs = start + tl.arange(0, BLOCK_N)
            valid = offs < n
            slots = tl.load(Idx + b * stride_ib + offs, mask=valid, other=0)
            k = tl.load(K + slots[:, None] * stride_kt + kvh * stride_kh + d[None, :],
                        mask=valid[:, None], other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], 1) * scale
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            v = tl.load(V + slots[:, None] * stride_vt + kvh * stride_vh + d[None, :],
                        mask=valid[:, None], other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * v, 0)
            l_i = l_i * alpha + tl.sum(p, 0)
            m_i = m_new
        tl.store(Out + b * stride_ob + h * stride_oh + d, (acc / l_i).to(Out.dtype.element_ty))


def decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                     kv_indices: torch.Tensor, kv_lens: torch.Tensor, scale: float,
                     block_n: int = 64) -> torch.Tensor:
    """Same contract as decode_attention_ref; every kv_lens[i] must be >= 1 and head_dim a
    power of two. Launches no host synchronisation (safe inside a CUDA graph)."""
    b, n_q, hd = q.shape
    assert hd & (hd - 1) == 0, f"head_dim {hd} must be a power of two"
    assert k_buf.stride(2) == 1 and v_buf.stride(2) == 1 and q.stride(2) == 1
    out = torch.empty(b, n_q, hd, dtype=q.dtype, device=q.device)
    idx = kv_indices if kv_indices.stride(1) == 1 else kv_indices.contiguous()
    _decode_kernel[(b, n_q)](
        q, k_buf, v_buf, idx, kv_lens, out, q.stride(0), q.stride(1), k_buf.stride(0),
        k_buf.stride(1), v_buf.stride(0), v_buf.stride(1), idx.stride(0), out.stride(0),
        out.stride(1), scale, GROUP=n_q // k_buf.shape[1], HD=hd, BLOCK_N=block_n)
    return out
