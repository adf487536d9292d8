"""Attention over the paged KV pool, in plain PyTorch (the reference and the CPU path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .forward_batch import ForwardBatch
from .kv_pool import TokenToKVPool


def paged_attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    fb: ForwardBatch, pool: TokenToKVPool, scale: float) -> torch.Tensor:
    """Write the new tokens' K/V into the pool, then attend over each request's whole sequence.

    q: (T, n_q, hd); k, v: (T, n_kv, hd). Returns (T, n_q, hd).
    """
    pool.set_kv(layer, fb.out_cache_loc, k, v)
    kbuf, vbuf = pool.k_buffer[layer], pool.v_buffer[layer]
    if fb.is_decode:
        return _decode(q, kbuf, vbuf, fb, scale)
    return _extend(q, kbuf, vbuf, fb, scale)


def _decode(q, kbuf, vbuf, fb: ForwardBatch, scale: float) -> torch.Tensor:
    """One query per request (q: (b, n_q, hd)) over 0-padded, masked key lists."""
    idx = fb.padded_kv_indices  # (b, L)
    keys = kbuf[idx].transpose(1, 2)  # (b, n_kv, L, hd)
    vals = vbuf[idx].transpose(1, 2)
    out = F.scaled_dot_product_attention(
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
        if fb.in_padded is not None and fb.in_padded[i]:
            start += ext
            continue
        qi = q[start:start + ext].transpose(0, 1).unsqueeze(0)  # (1, n_q, ext, hd)
        keys = kbuf[idx].transpose(0, 1).unsqueeze(0)  # (1, n_kv, prefix+ext, hd)
        vals = vbuf[idx].transpose(0, 1).unsqueeze(0)
        if prefix == 0:
            o = F.scaled_dot_product_attention(qi, keys, vals, is_causal=True, scale=scale,
                                               enable_gqa=True)
        else:
            # query i (absolute position prefix+i) sees keys 0..prefix+i
            mask = torch.ones(ext, prefix + ext, dtype=torch.bool, device=q.device).tril(prefix)
            o = F.scaled_dot_product_attention(qi, keys, vals, attn_mask=mask, scale=scale,
                                               enable_gqa=True)
        out[start:start + ext] = o.squeeze(0).transpose(0, 1)  # (ext, n_q, hd)
        start += ext
    return out
