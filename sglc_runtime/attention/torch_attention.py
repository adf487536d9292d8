"""Attention over the paged KV pool in plain PyTorch (`TorchAttention`'s math; the reference and
the CPU path).

Two implementations of the same math on the CPU for 16-bit floats, picked per machine
(`fastest_cpu_attention`, or --attention-backend sdpa|matmul): "sdpa", torch's fused flash
kernel (fast where oneDNN's brgemm has AMX), and "matmul", `attend`'s two batched matmuls with a
float32 softmax (fast on AVX-512-bf16 CPUs without AMX). float32 and CUDA always use SDPA
(decode on CUDA through the Triton kernel when the backend is "triton").

Three shapes of work:
- decode: one query per request, over 0-padded, masked key lists (one batched call);
- extend: causal attention per request over its cached prefix plus its new tokens;
- cascade: when every request of the batch starts with the same KV slots (a shared cached
  prefix, e.g. a few-shot prompt), the shared part is attended once by all queries together
  and each request's own suffix apart; the two partial results are merged by their
  log-sum-exp. This reads the shared keys once per batch instead of once per request.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .metadata import AttentionMetadata

logger = logging.getLogger(__name__)

_CHUNK_ELEMS = 1 << 23  # score-matrix elements computed at once by `attend`
# On CUDA, SDPA's cuDNN backend re-plans for every new sequence length (measured ~1.4 ms of
# CPU per call on an H100, 30x the kernel time); the flash / memory-efficient kernels do not.
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def use_sdpa(q: torch.Tensor, impl: str) -> bool:
    """SDPA for float32, on CUDA and where `impl` is "sdpa"; `attend` (matmul, float32 softmax)
    for 16-bit floats on the CPU under "matmul". Which is faster depends on the CPU: on an
    AVX-512-bf16 Zen 5, bf16, 64 decode rows over 80 keys took 2.2 ms in SDPA vs 0.60 ms in
    `attend`; on an AMX Sapphire Rapids 0.52 ms vs 1.1 ms, and a 1024-token causal prefill
    3.4 ms vs 33 ms (`python benchmarks/bench_cpu_ops.py`, cpu_ops.json)."""
    return q.is_cuda or q.dtype == torch.float32 or impl != "matmul"


@functools.cache
def fastest_cpu_attention(dtype: torch.dtype) -> str:
    """"sdpa" or "matmul": whichever runs a 16-row decode over 256 keys plus a 256-token causal
    prefill (each as the engine runs it: sdpa's prefill in float32 when PREFILL_IN_FLOAT32)
    faster on this CPU in `dtype` (timed once per process, ~0.1 s; the two differ by 2-10x
    either way, so the pick is stable). float32 always gets "sdpa"."""
    if dtype == torch.float32:
        return "sdpa"
    gen = torch.Generator().manual_seed(0)
    nq, nkv, hd, L = 9, 3, 64, 256

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    dq, pq, k, v = rand(16, 1, nq, hd), rand(1, L, nq, hd), rand(16, L, nkv, hd), rand(1, L, nkv, hd)
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None]
    pdt = torch.float32 if PREFILL_IN_FLOAT32 else dtype  # what prefill under sdpa runs in
    runs = {
        "sdpa": lambda: (_attend_flash(dq, k, k, 0.125, None, False),
                         _attend_flash(pq.to(pdt), v.to(pdt), v.to(pdt), 0.125, causal, False)),
        "matmul": lambda: (_attend_matmul(dq, k, k, 0.125, None, False),
                           _attend_matmul(pq, v, v, 0.125, causal, False)),
    }
    best = {}
    for name, run in runs.items():
        run()  # warm up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        best[name] = min(times)
    pick = min(best, key=best.get)
    logger.info("CPU attention in %s: %s (sdpa %.2f ms, matmul %.2f ms)", dtype, pick,
                best["sdpa"] * 1e3, best["matmul"] * 1e3)
    return pick


# a single decode row over at most this many keys runs SDPA's kernel in any dtype (measured
# 0.02-0.07 ms vs 0.06-0.07 for `attend` in bf16; beyond it `attend` wins)
_SDPA_ONE_ROW_MAX_KEYS = 128


def _sdpa(q, k, v, **kw) -> torch.Tensor:
    if q.is_cuda:
        with sdpa_kernel(_CUDA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def gather(buf: torch.Tensor, idx) -> torch.Tensor:
    """buf[idx] for a (slots, n_kv, hd) buffer and an index tensor of any shape (or a slice):
    index_select over flat rows copies each slot's row at once (3-4x faster than advanced
    indexing on the CPU)."""
    if isinstance(idx, slice):
        return buf[idx]
    rows = buf.view(buf.shape[0], -1).index_select(0, idx.reshape(-1))
    return rows.view(*idx.shape, *buf.shape[1:])



# Under "sdpa" on the CPU, prefill (extend) attention of 16-bit models runs in float32: with
# 16-bit probabilities meeting the values, greedy chat answers followed float32 HF on 34 of 40
# questions (either implementation), in float32 on 39 of 40; a 1024-token causal prefill costs
# 11.5 ms instead of 3.6 ms in bf16 (still 3x faster than `attend`'s 33 ms on an AMX CPU).
# Decode batches stay in the model's dtype (bench_precision.py measures both).
PREFILL_IN_FLOAT32 = True

# Scores in float32 even for 16-bit q and k: rounded to 16 bits (8 significant bits: +-0.06 at
# a score of 16) they moved greedy choices away from float32's (bench_precision.py measures
# both; False is the ablation)
SCORES_IN_FLOAT32 = True


def attend(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, scale: float,
           mask: torch.Tensor | None = None, need_lse: bool = True,
           impl: str = "matmul") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grouped-query attention that also returns the log-sum-exp of the scores.

    q: (B, Tq, n_q, hd); keys, vals: (B, L, n_kv, hd); mask: (B, Tq, L) bool, True = visible
    (every query must see at least one key). Returns out (B, Tq, n_q, hd) in q's dtype and
    lse (B, Tq, n_q) in float32 (None unless `need_lse`). Scores, softmax and log-sum-exp are
    float32 in both implementations; the probabilities meet the values in q's dtype, as in HF's
    eager attention. `impl` "sdpa" runs torch's fused CPU flash kernel (CPU tensors only).
    """
    if impl == "sdpa" and not q.is_cuda:
        return _attend_flash(q, keys, vals, scale, mask, need_lse)
    return _attend_matmul(q, keys, vals, scale, mask, need_lse)


def _grouped(q: torch.Tensor, nkv: int) -> torch.Tensor:
    """(B, Tq, n_q, hd) -> (B, n_kv, Tq * g, hd): each KV head's g query heads as extra rows."""
    B, Tq, nq, hd = q.shape
    g = nq // nkv
    return q.reshape(B, Tq, nkv, g, hd).permute(0, 2, 1, 3, 4).reshape(B, nkv, Tq * g, hd)


def _ungrouped(x: torch.Tensor, Tq: int, nq: int) -> torch.Tensor:
    """(B, n_kv, Tq * g, ...) -> (B, Tq, n_q, ...), the inverse of `_grouped`."""
    B, nkv = x.shape[:2]
    rest = x.shape[3:]
    x = x.view(B, nkv, Tq, nq // nkv, *rest).transpose(1, 2)
    return x.reshape(B, Tq, nq, *rest)


def _grouped_mask(mask: torch.Tensor, g: int) -> torch.Tensor:
    """(B, Tq, L) -> (B, 1, Tq * g, L): a query's visibility for each of its `_grouped` rows."""
    B, Tq, L = mask.shape
    return mask[:, :, None, :].expand(B, Tq, g, L).reshape(B, 1, Tq * g, L)


def _attend_flash(q, keys, vals, scale, mask, need_lse):
    """`attend` through aten's CPU flash kernel, which also returns the log-sum-exp; grouped
    query heads ride as extra query rows of their KV head (no K/V repeat)."""
    Tq, nq, nkv = q.shape[1], q.shape[2], keys.shape[2]
    bias = None
    if mask is not None:  # the kernel takes an additive mask in q's dtype
        visible = _grouped_mask(mask, nq // nkv)
        bias = torch.zeros(visible.shape, dtype=q.dtype).masked_fill_(~visible, float("-inf"))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _grouped(q, nkv), keys.transpose(1, 2), vals.transpose(1, 2), 0.0, False,
        attn_mask=bias, scale=scale)[:2]
    return _ungrouped(out, Tq, nq), _ungrouped(lse, Tq, nq) if need_lse else None


def _attend_matmul(q, keys, vals, scale, mask, need_lse):
    """`attend` as two batched matmuls around a float32 softmax, in chunks of queries."""
    B, Tq, nq = q.shape[:3]
    L, nkv = keys.shape[1], keys.shape[2]
    kt = keys.permute(0, 2, 3, 1)  # (B, n_kv, hd, L)
    vh = vals.permute(0, 2, 1, 3)  # (B, n_kv, L, hd)
    step = max(1, _CHUNK_ELEMS // max(1, B * nq * L))
    outs, lses = [], []
    for s in range(0, Tq, step):
        qh = _grouped(q[:, s:s + step], nkv)  # (B, n_kv, tq*g, hd)
        tq = min(step, Tq - s)
        if SCORES_IN_FLOAT32:
            scores = torch.matmul(qh.float(), kt.float()).mul_(scale)  # (B, n_kv, tq*g, L)
        else:
            scores = torch.matmul(qh, kt).mul_(scale).float()
        if mask is not None:
            scores.masked_fill_(~_grouped_mask(mask[:, s:s + step], nq // nkv), float("-inf"))
        if need_lse:
            lses.append(_ungrouped(scores.logsumexp(-1), tq, nq))  # float32
        o = torch.matmul(torch.softmax(scores, -1).to(vh.dtype), vh)  # (B, n_kv, tq*g, hd)
        outs.append(_ungrouped(o, tq, nq))
    if len(outs) == 1:  # one chunk (every decode step): no concatenating copy
        return outs[0], lses[0] if need_lse else None
    return torch.cat(outs, 1), torch.cat(lses, 1) if need_lse else None


def decode(q, kbuf, vbuf, md: AttentionMetadata, scale: float, impl: str) -> torch.Tensor:
    """One query per request (q: (b, n_q, hd)) over 0-padded, masked key lists."""
    idx = md.padded_kv_indices  # (b, L)
    one_short_row = q.shape[0] == 1 and idx.shape[1] <= _SDPA_ONE_ROW_MAX_KEYS
    if not use_sdpa(q, impl) and not one_short_row:
        mask = None if md.kv_mask is None else md.kv_mask[:, 0]  # (b, 1, L)
        out, _ = attend(q.unsqueeze(1), gather(kbuf, idx), gather(vbuf, idx), scale, mask,
                        need_lse=False)
        return out[:, 0]
    keys = gather(kbuf, idx).transpose(1, 2)  # (b, n_kv, L, hd)
    vals = gather(vbuf, idx).transpose(1, 2)
    out = _sdpa(
        q.unsqueeze(2), keys, vals, attn_mask=md.kv_mask, scale=scale,
        enable_gqa=True)  # (b, n_q, 1, hd)
    return out.squeeze(2)


def extend(q, kbuf, vbuf, md: AttentionMetadata, prefix_lens: list[int],
           extend_lens: list[int], scale: float, impl: str, decode_rows) -> torch.Tensor:
    """Causal attention per extending request; one-token requests of a mixed batch go
    through the padded decode call together (`decode_rows(q, kbuf, vbuf, md, scale)`)."""
    out = torch.empty_like(q)
    if md.padded_rows is not None:
        out[md.padded_rows] = decode_rows(q[md.padded_rows], kbuf, vbuf, md, scale)
    start = 0
    for i, (prefix, ext, idx) in enumerate(zip(prefix_lens, extend_lens, md.kv_indices)):
        if md.in_padded is None or not md.in_padded[i]:
            out[start:start + ext] = _causal(q[start:start + ext], gather(kbuf, idx),
                                             gather(vbuf, idx), prefix, scale, impl)
        start += ext
    return out


def _prefill_in_float32(q: torch.Tensor, impl: str) -> bool:
    return PREFILL_IN_FLOAT32 and impl == "sdpa" and not q.is_cuda and q.dtype != torch.float32


def _causal(q, keys, vals, prefix: int, scale: float, impl: str) -> torch.Tensor:
    """One request's new tokens q: (ext, n_q, hd) over its keys and values
    (prefix + ext, n_kv, hd): query i (absolute position prefix+i) sees keys 0..prefix+i."""
    if _prefill_in_float32(q, impl):
        return _causal(q.float(), keys.float(), vals.float(), prefix, scale, impl).to(q.dtype)
    ext = q.shape[0]
    sdpa = use_sdpa(q, impl)
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


def cascade(q, kbuf, vbuf, md: AttentionMetadata, is_decode: bool, scale: float,
            impl: str, own_kernel=None) -> torch.Tensor:
    """Shared prefix (md.shared_kv) once for all T queries, then each request's own keys
    (positions shared_len.. of its sequence), merged by log-sum-exp. `own_kernel(q, kbuf,
    vbuf, kv_indices, kv_lens, scale) -> (out, lse)` in float32, where given, attends the
    one-token rows' own keys in place (the CPU decode kernel) instead of gathering them."""
    dtype, q16 = q.dtype, q
    if not is_decode and _prefill_in_float32(q, impl):
        q = q.float()

    def kv(buf, idx):  # K or V in q's dtype
        return gather(buf, idx).to(q.dtype)

    o_sh, lse_sh = attend(q.unsqueeze(0), kv(kbuf, md.shared_kv).unsqueeze(0),
                          kv(vbuf, md.shared_kv).unsqueeze(0), scale, impl=impl)
    o_sh, lse_sh = o_sh[0], lse_sh[0]  # (T, n_q, hd), (T, n_q)
    o_own, lse_own = torch.empty_like(q), torch.empty_like(lse_sh)
    if md.padded_kv_indices is not None:  # the one-token requests, in one padded call
        rows = md.padded_rows if md.padded_rows is not None else slice(None)
        idx = md.padded_kv_indices  # (b, L_own)
        if own_kernel is not None:
            o, lse = own_kernel(q16[rows], kbuf, vbuf, idx, md.kv_lens, scale)
            o_own[rows], lse_own[rows] = o.to(q.dtype), lse
        else:
            mask = None if md.kv_mask is None else md.kv_mask[:, 0]
            o, lse = attend(q[rows].unsqueeze(1), kv(kbuf, idx), kv(vbuf, idx), scale, mask,
                            impl=impl)
            o_own[rows], lse_own[rows] = o[:, 0], lse[:, 0]
    if md.ext_q_rows is not None:  # the extending requests, padded into one call
        idx = md.ext_kv
        o, lse = attend(q[md.ext_q_rows], kv(kbuf, idx), kv(vbuf, idx), scale,
                        md.ext_mask, impl=impl)
        rows = md.ext_q_rows[md.ext_valid]
        o_own[rows], lse_own[rows] = o[md.ext_valid], lse[md.ext_valid]
    lse = torch.logaddexp(lse_sh, lse_own)  # float32
    return (o_sh * (lse_sh - lse).exp().unsqueeze(-1)
            + o_own * (lse_own - lse).exp().unsqueeze(-1)).to(dtype)
