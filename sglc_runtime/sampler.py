"""Pick each request's next token from its logits: penalties, constraint mask, then greedy or
temperature / top-k / top-p / min-p sampling; also returns the raw log-probabilities."""

from __future__ import annotations

import torch

from .kernels.cpu_kernels import cpu_argmax_rows
from .request import Req


def apply_penalties(logits: torch.Tensor, req: Req) -> None:
    """In place on one request's (V,) logits: repetition, frequency and presence penalties."""
    p = req.params
    counts = req.token_counts
    if counts is None:
        return
    seen = counts > 0
    if p.repetition_penalty != 1.0:
        sel = logits[seen]
        logits[seen] = torch.where(sel > 0, sel / p.repetition_penalty, sel * p.repetition_penalty)
    if p.frequency_penalty:
        logits -= p.frequency_penalty * counts
    if p.presence_penalty:
        logits -= p.presence_penalty * seen.float()


def needs_penalties(req: Req) -> bool:
    p = req.params
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0 or p.presence_penalty != 0


def _plain_greedy(r: Req, eos_ids) -> bool:
    p = r.params
    return (p.is_greedy and r.constraint is None and not needs_penalties(r)
            and (len(r.output_ids) >= p.min_new_tokens or not (eos_ids or p.stop_token_ids)))


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax (the first of equal maxima): `max` along the row, which on the CPU
    runs ~3x faster than `argmax` over a 49k vocabulary (0.18 vs 0.58 ms for 16 rows), and
    the C kernel's scan faster still where it runs."""
    ids = cpu_argmax_rows(logits)
    return ids if ids is not None else logits.max(dim=-1).indices


def sample(logits: torch.Tensor, reqs: list[Req], eos_ids: tuple[int, ...],
           need_logprobs: bool) -> tuple[list[int], torch.Tensor | None]:
    """logits: (B, V) float32 on any device, one row per request. Returns (next token ids,
    (B, V) raw log-softmax on the CPU, or None). Plain greedy batches take the argmax where the
    logits are (on a GPU only the ids cross to the host); the rest runs on the CPU."""
    if not need_logprobs and all(_plain_greedy(r, eos_ids) for r in reqs):
        return greedy_ids(logits).tolist(), None
    logits = logits.cpu()
    logprobs = torch.log_softmax(logits, dim=-1) if need_logprobs else None
    logits = logits.clone()
    for i, r in enumerate(reqs):
        p = r.params
        if needs_penalties(r):
            apply_penalties(logits[i], r)
        if len(r.output_ids) < p.min_new_tokens:
            banned = list(eos_ids) + list(p.stop_token_ids or [])
            logits[i, banned] = float("-inf")
        if r.constraint is not None:
            left = p.max_new_tokens - len(r.output_ids)  # (this token included)
            logits[i].masked_fill_(~_fit(r.constraint.allowed_mask(r.fsm_state, left),
                                         logits.shape[1]), float("-inf"))
    greedy = torch.tensor([r.params.is_greedy for r in reqs])
    out = greedy_ids(logits)
    if not bool(greedy.all()):
        rows = (~greedy).nonzero().squeeze(1)
        sampled = _sample_rows(logits[rows], [reqs[i] for i in rows.tolist()])
        out[rows] = sampled
    return out.tolist(), logprobs


def _fit(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A constraint's mask over the tokenizer's vocabulary fitted to the logits' width (a model
    may pad its vocabulary: the padding ids are never allowed)."""
    n = mask.numel()
    if n == width:
        return mask
    if n > width:
        return mask[:width]
    return torch.cat([mask, torch.zeros(width - n, dtype=torch.bool)])


def _sample_rows(logits: torch.Tensor, reqs: list[Req]) -> torch.Tensor:
    temps = torch.tensor([r.params.temperature for r in reqs], dtype=logits.dtype).unsqueeze(1)
    probs = torch.softmax(logits / temps, dim=-1)  # (b, V)
    top_k = [r.params.top_k for r in reqs]
    top_p = [r.params.top_p for r in reqs]
    min_p = [r.params.min_p for r in reqs]
    if any(k > 0 for k in top_k) or any(p < 1 for p in top_p) or any(m > 0 for m in min_p):
        sorted_p, sorted_idx = probs.sort(dim=-1, descending=True)
        ranks = torch.arange(probs.shape[1]).unsqueeze(0)
        k = torch.tensor([kk if kk > 0 else probs.shape[1] for kk in top_k]).unsqueeze(1)
        drop = ranks >= k
        cum = sorted_p.cumsum(dim=-1)
        drop |= (cum - sorted_p) > torch.tensor(top_p, dtype=probs.dtype).unsqueeze(1)
        drop |= sorted_p < sorted_p[:, :1] * torch.tensor(min_p, dtype=probs.dtype).unsqueeze(1)
        drop[:, 0] = False  # always keep the most likely token
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = _multinomial(sorted_p, reqs)
        return sorted_idx.gather(1, choice.unsqueeze(1)).squeeze(1)
    return _multinomial(probs, reqs)


def _multinomial(probs: torch.Tensor, reqs: list[Req]) -> torch.Tensor:
    if all(r.params.seed is None for r in reqs):
        return torch.multinomial(probs, 1).squeeze(1)
    out = []
    for row, r in zip(probs, reqs):
        g = None
        if r.params.seed is not None:
            g = torch.Generator().manual_seed(r.params.seed + len(r.output_ids))
        out.append(torch.multinomial(row, 1, generator=g))
    return torch.cat(out)
