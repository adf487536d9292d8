"""The per-step description of a batch the model runs: which tokens, where their KV goes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import AttentionBackend, AttentionMetadata, TorchAttention


@dataclass
class ForwardBatch:
    """One model step over several requests, laid out flat (T = total new tokens).

    extend: each request i adds `extend_lens[i]` tokens after `prefix_lens[i]` cached ones
    (running requests that decode one token may ride along: a mixed batch).
    decode: every request adds exactly one token (extend_lens are all 1).
    Where each query's keys are is `attn`, laid out by (and for) backend `attention`.
    """

    is_decode: bool
    input_ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    out_cache_loc: torch.Tensor  # (T,) slots the new tokens' K/V are written to
    prefix_lens: list[int]
    extend_lens: list[int]
    attention: AttentionBackend
    attn: AttentionMetadata

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)

    @property
    def seq_lens(self) -> list[int]:
        return [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]


def build_forward_batch(table: torch.Tensor, is_decode: bool, reqs, extend_lens: list[int],
                        out_cache_loc: torch.Tensor, device, cascade: bool = True,
                        attention: AttentionBackend | None = None) -> ForwardBatch:
    """Write the new tokens' slots into `table` (req_to_token) and lay the batch out flat for
    `attention` (default: PyTorch SDPA).

    `reqs` need `row` (their table row), `kv_len` (positions already in the KV pool) and
    `fill_ids` (the token ids to compute); request i adds `extend_lens[i]` tokens."""
    attention = attention or TorchAttention("sdpa")
    ids, pos, prefix_lens = [], [], []
    for r, n in zip(reqs, extend_lens):
        start = r.kv_len
        ids.extend(r.fill_ids[start:start + n])
        pos.extend(range(start, start + n))
        prefix_lens.append(start)
    offset = 0
    for r, n, start in zip(reqs, extend_lens, prefix_lens):
        table[r.row, start:start + n] = out_cache_loc[offset:offset + n]
        offset += n
    md = attention.init_metadata(table, is_decode, [r.row for r in reqs], prefix_lens,
                                 list(extend_lens), device, cascade)
    return ForwardBatch(is_decode, torch.tensor(ids, device=device),
                        torch.tensor(pos, device=device), out_cache_loc.to(device), prefix_lens,
                        list(extend_lens), attention, md)
