"""Attention over the paged KV pool, in plain PyTorch (the reference and the CPU path).

Three shapes of work:
- decode: one query per request, over 0-padded, masked key lists (one batched call);
- extend: causal attention per request over its cached prefix plus its new tokens;
- cascade: when every request of the batch starts with the same KV slots (a shared cached
  prefix, e.g. a few-shot prompt), the shared part is attended once by all queries together
  and each request's own suffix apart; the two partial results are merged by their
  log-sum-exp. This reads the shared keys once per batch instead of once per request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .forward_batch import ForwardBatch
from .kv_pool import TokenToKVPool

_CHUNK_ELEMS = 1 << 23  # score-matrix elements computed at once by `attend`
# On CUDA, SDPA's cuDNN backend re-plans for every new sequence length (measured ~1.4 ms of
# CPU per call on an H100, 30x the kernel time); the flash / memory-efficient kernels do not.
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def use_sdpa(q: torch.Tensor) -> bool:
    """SDPA for float32 and on CUDA; `attend` (matmul, float32 softmax) for 16-bit floats on the
    CPU, where SDPA's flash kernel is slow: measured on an AVX-512-bf16 CPU, bf16, 64 decode rows
    over 80 keys 2.2 ms vs 0.60 ms, a 512-token causal prefill 4.1 ms vs 2.8 ms; in float32
    SDPA is faster (`python benchmarks/bench_cpu_ops.py`, cpu_ops.json)."""
    return q.is_cuda or q.dtype == torch.float32


# a single decode row over at most this many keys runs SDPA's kernel in any dtype (measured
# 0.02-0.07 ms vs 0.06-0.07 for `attend` in bf16; beyond it `attend` wins)
_SDPA_ONE_ROW_MAX_KEYS = 128


def _sdpa(q, k, v, **kw) -> torch.Tensor:
    if q.is_cuda:
        with sdpa_kernel(_CUDA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def paged_attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    fb: ForwardBatch, pool: TokenToKVPool, scale: float) -> torch.Tensor:
    """Write the new tokens' K/V into the pool, then attend over each request's whole sequence.

    q: (T, n_q, hd); k, v: (T, n_kv, hd). Returns (T, n_q, hd).
    """
    pool.set_kv(layer, fb.out_cache_loc, k, v)
    kbuf, vbuf = pool.k_buffer[layer], pool.v_buffer[layer]
    if fb.shared_len:
        return _cascade(q, kbuf, vbuf, fb, scale)
    if fb.is_decode:
        return _decode(q, kbuf, vbuf, fb, scale)
    return _extend(q, kbuf, vbuf, fb, scale)


def gather(buf: torch.Tensor, idx) -> torch.Tensor:
    """buf[idx] for a (slots, n_kv, hd) buffer and an index tensor of any shape (or a slice):
    index_select over flat rows copies each slot's row at once (3-4x faster than advanced
    indexing on the CPU)."""
    if isinstance(idx, slice):
        return buf[idx]
    rows = buf.view(buf.shape[0], -1).index_select(0, idx.reshape(-1))
    return rows.view(*idx.shape, *buf.shape[1:])


# Scores in float32 even for 16-bit q and k: rounded to 16 bits (8 significant bits: +-0.06 at
# a score of 16) they moved greedy choices away from float32's (bench_precision.py measures
# both; False is the ablation)
SCORES_IN_FLOAT32 = True


def attend(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, scale: float,
           mask: torch.Tensor | None = None,
           need_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grouped-query attention that also returns the log-sum-exp of the scores.

    q: (B, Tq, n_q, hd); keys, vals: (B, L, n_kv, hd); mask: (B, Tq, L) bool, True = visible
    (every query must see at least one key). Returns out (B, Tq, n_q, hd) in q's dtype and
    lse (B, Tq, n_q) in float32 (None unless `need_lse`). Scores, softmax and log-sum-exp are
    float32 (as in SDPA's fused CPU kernel, which accumulates in float32); the probabilities
    meet the values in q's dtype, as in HF's eager attention.
    """
    B, Tq, nq, hd = q.shape
    L, nkv = keys.shape[1], keys.shape[2]
    g = nq // nkv
    kt = keys.permute(0, 2, 3, 1)  # (B, n_kv, hd, L)
    vh = vals.permute(0, 2, 1, 3)  # (B, n_kv, L, hd)
    step = max(1, _CHUNK_ELEMS // max(1, B * nq * L))
    outs, lses = [], []
    for s in range(0, Tq, step):
        qc = q[:, s:s + step]
        tq = qc.shape[1]
        qh = qc.reshape(B, tq, nkv, g, hd).permute(0, 2, 1, 3, 4).reshape(B, nkv, tq * g, hd)
        if SCORES_IN_FLOAT32:
            scores = torch.matmul(qh.float(), kt.float()).mul_(scale)  # (B, n_kv, tq*g, L)
        else:
            scores = torch.matmul(qh, kt).mul_(scale).float()
        if mask is not None:
            visible = mask[:, s:s + step, None, :].expand(B, tq, g, L).reshape(B, 1, tq * g, L)
            scores.masked_fill_(~visible, float("-inf"))
        if need_lse:
            lse = scores.logsumexp(-1)  # (B, n_kv, tq*g), float32
            lses.append(lse.view(B, nkv, tq, g).permute(0, 2, 1, 3).reshape(B, tq, nq))
        o = torch.matmul(torch.softmax(scores, -1).to(vh.dtype), vh)  # (B, n_kv, tq*g, hd)
        outs.append(o.view(B, nkv, tq, g, hd).permute(0, 2, 1, 3, 4).reshape(B, tq, nq, hd))
    if len(outs) == 1:  # one chunk (every decode step): no concatenating copy
        return outs[0], lses[0] if need_lse else None
    return torch.cat(outs, 1), torch.cat(lses, 1) if need_lse else None


def _decode(q, kbuf, vbuf, fb: ForwardBatch, scale: float) -> torch.Tensor:
    """One query per request (q: (b, n_q, hd)) over 0-padded, masked key lists."""
    idx = fb.padded_kv_indices  # (b, L)
    if fb.triton_decode:  # reads the pool in place instead of gathering K/V
        from .kernels.decode_attention import decode_attention

        return decode_attention(q, kbuf, vbuf, idx, fb.kv_lens, scale)
    one_short_row = q.shape[0] == 1 and idx.shape[1] <= _SDPA_ONE_ROW_MAX_KEYS
    if not use_sdpa(q) and not one_short_row:
        mask = None if fb.kv_mask is None else fb.kv_mask[:, 0]  # (b, 1, L)
        out, _ = attend(q.unsqueeze(1), gather(kbuf, idx), gather(vbuf, idx), scale, mask,
                        need_lse=False)
        return out[:, 0]
    keys = gather(kbuf, idx).transpose(1, 2)  # (b, n_kv, L, hd)
    vals = gather(vbuf, idx).transpose(1, 2)
    out = _sdpa(
        q.unsqueeze(2), keys, vals, attn_mask=fb.kv_mask, scale=scale,
        enable_gqa=True)  # (b, n_q, 1, hd)
    return out.squeeze(2)


def _extend(q, kbuf, vbuf, fb: ForwardBatch, scale: float) -> torch.Tensor:
    """Causal attention per extending request; one-token requests of a mixed batch go
    through the padded decode call together."""
    out = torch.empty_like(q)
    if fb.padded_rows is not None:
        out[fb.padded_rows] = _decode(q[fb.padded_rows], kbuf, vbuf, fb, scale)
    start = 0
    for i, (prefix, ext, idx) in enumerate(zip(fb.prefix_lens, fb.extend_lens, fb.kv_indices)):
        if fb.in_padded is None or not fb.in_padded[i]:
            out[start:start + ext] = _causal(q[start:start + ext], gather(kbuf, idx),
                                             gather(vbuf, idx), prefix, scale)
        start += ext
    return out


def _causal(q, keys, vals, prefix: int, scale: float) -> torch.Tensor:
    """One request's new tokens q: (ext, n_q, hd) over its keys and values
    (prefix + ext, n_kv, hd): query i (absolute position prefix+i) sees keys 0..prefix+i."""
    ext = q.shape[0]
    sdpa = use_sdpa(q)
    mask = None if sdpa and prefix == 0 else \
        torch.ones(ext, prefix + ext, dtype=torch.bool, device=q.device).tril(prefix)
    if not sdpa:
        o, _ = attend(q.unsqueeze(0), keys.unsqueeze(0), vals.unsqueeze(0), scale, mask[None],
                      need_lse=False)
        return o[0]
    causal = {"is_causal": True} if mask is None else {"attn_mask": mask}
    o = _sdpa(q.transpose(0, 1).unsqueeze(0), keys.transpose(0, 1).unsqueeze(0),
              vals.transpose(0, 1).unsqueeze(0), scale=scale, enable_gqa=True, **causal)
    return o.squeeze(0).transpose(0, 1)  # (ext, n_q, hd)


def _cascade(q, kbuf, vbuf, fb: ForwardBatch, scale: float) -> torch.Tensor:
    """Shared prefix (fb.shared_kv) once for all T queries, then each request's own keys
    (positions shared_len.. of its sequence), merged by log-sum-exp."""
    o_sh, lse_sh = attend(q.unsqueeze(0), gather(kbuf, fb.shared_kv).unsqueeze(0),
                          gather(vbuf, fb.shared_kv).unsqueeze(0), scale)
    o_sh, lse_sh = o_sh[0], lse_sh[0]  # (T, n_q, hd), (T, n_q)
    o_own, lse_own = torch.empty_like(q), torch.empty_like(lse_sh)
    if fb.padded_kv_indices is not None:  # the one-token requests, in one padded call
        rows = fb.padded_rows if fb.padded_rows is not None else slice(None)
        idx = fb.padded_kv_indices  # (b, L_own)
        mask = None if fb.kv_mask is None else fb.kv_mask[:, 0]
        o, lse = attend(q[rows].unsqueeze(1), gather(kbuf, idx), gather(vbuf, idx), scale, mask)
        o_own[rows], lse_own[rows] = o[:, 0], lse[:, 0]
    if fb.ext_q_rows is not None:  # the extending requests, padded into one call
        idx = fb.ext_kv
        o, lse = attend(q[fb.ext_q_rows], gather(kbuf, idx), gather(vbuf, idx), scale,
                        fb.ext_mask)
        rows = fb.ext_q_rows[fb.ext_valid]
        o_own[rows], lse_own[rows] = o[fb.ext_valid], lse[fb.ext_valid]
    lse = torch.logaddexp(lse_sh, lse_own)  # float32
    return (o_sh * (lse_sh - lse).exp().unsqueeze(-1)
            + o_own * (lse_own - lse).exp().unsqueeze(-1)).to(q.dtype)
