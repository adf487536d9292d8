"""`AttentionMetadata`: where each query of one batch finds its keys in the paged KV pool
(padded decode rows, per-request extends, a shared cascade prefix), built once per step."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch

MIN_SHARED_PREFIX = 32  # shorter common prefixes are attended per request
MAX_CASCADE_EXTEND = 512  # longer new-token runs use per-request flash attention
#: requests adding at most this many tokens attend as one-query rows of the padded call (one
#: row per new token, each seeing its own causal key count) instead of one attention call each,
#: where the backend's decode rows read the pool in place (`AttentionBackend.short_extend`)
SHORT_EXTEND = 32
MAX_PADDED_SLOTS = 1 << 22  # short extends stay per request past this many padded slots


@dataclass
class AttentionMetadata:
    """The KV layout of one batch (T new tokens over b requests; see `ForwardBatch`).

    `kv_indices[i]` lists the KV slots of extending request i's whole sequence (prefix + new
    tokens; empty for a decode batch). Requests adding one token (all of a decode batch; in a
    mixed extend batch, the running requests decoding alongside) and, where the backend's
    decode rows read the pool in place, those adding a few (<= SHORT_EXTEND: appended text, a
    tool's reply) attend through one padded call over
    `padded_kv_indices`, a row per new token: the row of token j of a request with prefix p
    sees its first p + j + 1 keys (`kv_lens`), which is causal attention.

    Cascade: when `shared_len` S > 0, every request's first S positions use the same KV slots
    (`shared_kv`), and `kv_indices` / `padded_kv_indices` list only positions S.. of each
    request (the shared part is attended once for the whole batch)."""

    kv_indices: list[torch.Tensor]  # per extending request: (prefix + extend - S,)
    padded_kv_indices: torch.Tensor | None = None  # (b, max_len) one-token rows' slots, 0-padded
    kv_mask: torch.Tensor | None = None  # (b, 1, 1, max_len) True where valid; None: all
    kv_lens: torch.Tensor | None = None  # (b,) valid entries per row of padded_kv_indices
    padded_rows: torch.Tensor | None = None  # extend batch: their flat rows (None: all rows)
    in_padded: list[bool] | None = None  # extend batch: per request, attended in the padded call
    shared_len: int = 0  # S: positions 0..S-1 of every request share these KV slots
    shared_kv: torch.Tensor | slice | None = None  # (S,) slots, or a slice when consecutive
    # cascade extend: the extending requests' own parts padded into one call (ne requests)
    ext_q_rows: torch.Tensor | None = None  # (ne, E) flat row of query j (clamped to the last)
    ext_kv: torch.Tensor | None = None  # (ne, L) own KV slots, 0-padded
    ext_mask: torch.Tensor | None = None  # (ne, E, L) True where query j sees own key r
    ext_valid: torch.Tensor | None = None  # (ne, E) True for real (unclamped) queries


def build_metadata(table: torch.Tensor, is_decode: bool, rows: list[int],
                   prefix_lens: list[int], extend_lens: list[int], device,
                   cascade: bool = True, min_saved_rows: int = 0,
                   short_extend: int = 1,
                   max_padded_slots: int | None = MAX_PADDED_SLOTS,
                   mask_padding: bool = True) -> AttentionMetadata:
    """The layout of a batch whose request i (KV table row `rows[i]`, already holding the new
    tokens' slots) adds `extend_lens[i]` tokens after `prefix_lens[i]` cached ones. A shared
    prefix of S slots is attended once (cascade) when `cascade` and the rows it saves reading,
    (b - 1) * S, reach `min_saved_rows` (the backend's break-even). Requests adding at most
    `short_extend` tokens attend as padded one-query rows (see AttentionMetadata), unless
    that pads more than `max_padded_slots` slots (None: however many). Without
    `mask_padding` the padded rows keep whatever slots follow each row's `kv_lens` (for a
    reader of kv_lens only: no mask, no masked copy of the table)."""
    # (the shared prefix is at most the shortest prefix: skip the search when that cannot pay)
    can_pay = (len(rows) - 1) * min(prefix_lens, default=0) >= min_saved_rows
    S = shared_prefix_len(table, rows, prefix_lens, extend_lens) if cascade and can_pay else 0
    if S and (len(rows) - 1) * S < min_saved_rows:
        S = 0
    kv_indices = [] if is_decode else [table[row, S:p + n] for row, p, n in
                                       zip(rows, prefix_lens, extend_lens)]
    md = AttentionMetadata(kv_indices)
    if S:
        md.shared_len, md.shared_kv = S, table[rows[0], :S]
        first = int(md.shared_kv[0])
        if int(md.shared_kv[-1]) - first == S - 1 and \
                bool((md.shared_kv.diff() == 1).all()):  # one run of slots: read a view
            md.shared_kv = slice(first, first + S)
    short = [i for i, n in enumerate(extend_lens) if n <= short_extend]
    if not is_decode and short_extend > 1 and max_padded_slots is not None:
        # the padded table stays small: else one-token rows only
        rows_slots = sum(extend_lens[i] for i in short) * max(
            prefix_lens[i] + extend_lens[i] for i in short) if short else 0
        if rows_slots > max_padded_slots:
            short_extend = 1
            short = [i for i, n in enumerate(extend_lens) if n == 1]
    offsets = [0, *accumulate(extend_lens)][:-1]  # each request's first flat row
    if is_decode or sum(extend_lens[i] for i in short) > 1:
        rows_of = [(i, j) for i in short for j in range(extend_lens[i])]  # (request, token)
        lens = [prefix_lens[i] + j + 1 - S for i, j in rows_of]
        max_len = max(lens)
        md.kv_lens = torch.tensor(lens, device=device)
        idx = torch.tensor([rows[i] for i, _ in rows_of], device=device)
        md.padded_kv_indices = table[idx, S:S + max_len]
        if mask_padding and min(lens) < max_len:  # (equal lengths, batch 1 always: no mask)
            mask = torch.arange(max_len, device=device).unsqueeze(0) < md.kv_lens.unsqueeze(1)
            md.padded_kv_indices = md.padded_kv_indices * mask  # (b, L), padding reads slot 0
            md.kv_mask = mask[:, None, None, :]
        if not is_decode:
            md.padded_rows = torch.tensor([offsets[i] + j for i, j in rows_of], device=device)
            md.in_padded = [n <= short_extend for n in extend_lens]
    if S and not is_decode:
        _pad_cascade_extends(md, prefix_lens, extend_lens, offsets, device)
    return md


def _pad_cascade_extends(md: AttentionMetadata, prefix_lens: list[int], extend_lens: list[int],
                         offsets: list[int], device) -> None:
    """Lay the extending requests' own parts (positions shared_len.. of each) out padded, so
    attention runs them in one batched call. Query j of request i (absolute position
    prefix_i + j) sees own keys r with r <= prefix_i - shared_len + j."""
    S = md.shared_len
    ext = [i for i in range(len(extend_lens)) if not (md.in_padded and md.in_padded[i])]
    if not ext:
        return
    e_lens = torch.tensor([extend_lens[i] for i in ext], device=device)
    own_before = torch.tensor([prefix_lens[i] - S for i in ext], device=device)
    E, L = int(e_lens.max()), int((own_before + e_lens).max())
    j = torch.arange(E, device=device).unsqueeze(0)  # (1, E)
    md.ext_valid = j < e_lens.unsqueeze(1)
    jc = torch.minimum(j, e_lens.unsqueeze(1) - 1)  # padding queries repeat the last one
    md.ext_q_rows = torch.tensor([offsets[i] for i in ext], device=device).unsqueeze(1) + jc
    r = torch.arange(L, device=device)
    md.ext_mask = r.view(1, 1, L) <= (own_before.unsqueeze(1) + jc).unsqueeze(2)
    kv = torch.zeros(len(ext), L, dtype=torch.int64, device=device)
    for k, i in enumerate(ext):
        kv[k, :md.kv_indices[i].numel()] = md.kv_indices[i]
    md.ext_kv = kv


def shared_prefix_len(table: torch.Tensor, rows: list[int], prefix_lens: list[int],
                      extend_lens: list[int]) -> int:
    """Length of the KV-slot prefix common to every request of the batch (0 when too short
    to pay for a cascade, or when a long extend is better served by per-request attention)."""
    if len(rows) < 2:
        return 0
    m = min(prefix_lens)
    if m < MIN_SHARED_PREFIX or max(extend_lens) > MAX_CASCADE_EXTEND:
        return 0
    block = table[torch.tensor(rows, device=table.device), :m]
    same = (block == block[0]).all(0)
    S = m if bool(same.all()) else int(same.to(torch.int8).argmin())
    return S if S >= MIN_SHARED_PREFIX else 0
