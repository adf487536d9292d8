"""The per-step description of a batch the model runs: which tokens, where their KV goes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    """One model step over several requests, laid out flat (T = total new tokens).

    extend: each request i adds `extend_lens[i]` tokens after `prefix_lens[i]` cached ones
    (running requests that decode one token may ride along: a mixed batch).
    decode: every request adds exactly one token (extend_lens are all 1).
    `kv_indices[i]` lists the KV slots of request i's whole sequence (prefix + new tokens).
    """

    is_decode: bool
    input_ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    out_cache_loc: torch.Tensor  # (T,) slots the new tokens' K/V are written to
    prefix_lens: list[int]
    extend_lens: list[int]
    kv_indices: list[torch.Tensor]  # per request: (prefix + extend,)
    # requests adding one token (all of a decode batch; in a mixed extend batch, the running
    # requests decoding alongside the extends) attend through one padded batched call:
    padded_kv_indices: torch.Tensor | None = None  # (b, max_len) their slots, 0-padded
    kv_mask: torch.Tensor | None = None  # (b, 1, 1, max_len) True where valid
    padded_rows: torch.Tensor | None = None  # extend batch: their flat rows (None: all rows)
    in_padded: list[bool] | None = None  # extend batch: per request, attended in the padded call

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)

    @property
    def seq_lens(self) -> list[int]:
        return [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]
