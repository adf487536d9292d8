"""The per-step description of a batch the model runs: which tokens, where their KV goes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_SHARED_PREFIX = 32  # shorter common prefixes are attended per request
MAX_CASCADE_EXTEND = 512  # longer new-token runs use per-request flash attention


@dataclass
class ForwardBatch:
    """One model step over several requests, laid out flat (T = total new tokens).

    extend: each request i adds `extend_lens[i]` tokens after `prefix_lens[i]` cached ones
    (running requests that decode one token may ride along: a mixed batch).
    decode: every request adds exactly one token (extend_lens are all 1).
    `kv_indices[i]` lists the KV slots of request i's whole sequence (prefix + new tokens).

    Cascade: when `shared_len` S > 0, every request's first S positions use the same KV slots
    (`shared_kv`), and `kv_indices` / `padded_kv_indices` list only positions S.. of each
    request (attention.py attends the shared part once for the whole batch).
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
    kv_mask: torch.Tensor | None = None  # (b, 1, 1, max_len) True where valid; None: all
    kv_lens: torch.Tensor | None = None  # (b,) valid entries per row of padded_kv_indices
    # "sdpa" | "matmul" | "triton": how attention.py computes it (see there); "triton" runs the
    # padded decode call through the Triton kernel (kernels/)
    attention: str = "sdpa"
    padded_rows: torch.Tensor | None = None  # extend batch: their flat rows (None: all rows)
    in_padded: list[bool] | None = None  # extend batch: per request, attended in the padded call
    shared_len: int = 0  # S: positions 0..S-1 of every request share these KV slots
    shared_kv: torch.Tensor | slice | None = None  # (S,) slots, or a slice when consecutive
    # cascade extend: the extending requests' own parts padded into one call (ne requests)
    ext_q_rows: torch.Tensor | None = None  # (ne, E) flat row of query j (clamped to the last)
    ext_kv: torch.Tensor | None = None  # (ne, L) own KV slots, 0-padded
    ext_mask: torch.Tensor | None = None  # (ne, E, L) True where query j sees own key r
    ext_valid: torch.Tensor | None = None  # (ne, E) True for real (unclamped) queries

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)

    @property
    def seq_lens(self) -> list[int]:
        return [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]


def _pad_cascade_extends(fb: ForwardBatch, offsets: list[int], device) -> None:
    """Lay the extending requests' own parts (positions shared_len.. of each) out padded, so
    attention runs them in one batched call. Query j of request i (absolute position
    prefix_i + j) sees own keys r with r <= prefix_i - shared_len + j."""
    S = fb.shared_len
    ext = [i for i in range(fb.batch_size) if not (fb.in_padded and fb.in_padded[i])]
    if not ext:
        return
    e_lens = torch.tensor([fb.extend_lens[i] for i in ext], device=device)
    own_before = torch.tensor([fb.prefix_lens[i] - S for i in ext], device=device)
    E, L = int(e_lens.max()), int((own_before + e_lens).max())
    j = torch.arange(E, device=device).unsqueeze(0)  # (1, E)
    fb.ext_valid = j < e_lens.unsqueeze(1)
    jc = torch.minimum(j, e_lens.unsqueeze(1) - 1)  # padding queries repeat the last one
    fb.ext_q_rows = torch.tensor([offsets[i] for i in ext], device=device).unsqueeze(1) + jc
    r = torch.arange(L, device=device)
    fb.ext_mask = r.view(1, 1, L) <= (own_before.unsqueeze(1) + jc).unsqueeze(2)
    kv = torch.zeros(len(ext), L, dtype=torch.int64, device=device)
    for k, i in enumerate(ext):
        kv[k, :fb.kv_indices[i].numel()] = fb.kv_indices[i]
    fb.ext_kv = kv


def build_forward_batch(table: torch.Tensor, is_decode: bool, reqs, extend_lens: list[int],
                        out_cache_loc: torch.Tensor, device, cascade: bool = True,
                        attention: str = "sdpa") -> ForwardBatch:
    """Write the new tokens' slots into `table` (req_to_token) and lay the batch out flat.

    `reqs` need `row` (their table row), `kv_len` (positions already in the KV pool) and
    `fill_ids` (the token ids to compute); request i adds `extend_lens[i]` tokens."""
    ids, pos, prefix_lens = [], [], []
    for r, n in zip(reqs, extend_lens):
        start = r.kv_len
        ids.extend(r.fill_ids[start:start + n])
        pos.extend(range(start, start + n))
        prefix_lens.append(start)
    offset, offsets = 0, []
    for r, n, start in zip(reqs, extend_lens, prefix_lens):
        table[r.row, start:start + n] = out_cache_loc[offset:offset + n]
        offsets.append(offset)
        offset += n
    S = shared_prefix_len(table, reqs, prefix_lens, extend_lens) if cascade else 0
    kv_indices = [] if is_decode else [table[r.row, S:start + n] for r, n, start in
                                       zip(reqs, extend_lens, prefix_lens)]
    fb = ForwardBatch(is_decode, torch.tensor(ids, device=device),
                      torch.tensor(pos, device=device), out_cache_loc.to(device), prefix_lens,
                      list(extend_lens), kv_indices, attention=attention)
    if S:
        fb.shared_len, fb.shared_kv = S, table[reqs[0].row, :S]
        first = int(fb.shared_kv[0])
        if int(fb.shared_kv[-1]) - first == S - 1 and \
                bool((fb.shared_kv.diff() == 1).all()):  # one run of slots: read a view
            fb.shared_kv = slice(first, first + S)
    single = [i for i, n in enumerate(extend_lens) if n == 1]
    if is_decode or len(single) > 1:
        lens = [prefix_lens[i] + 1 - S for i in single]
        max_len = max(lens)
        fb.kv_lens = torch.tensor(lens, device=device)
        rows = torch.tensor([reqs[i].row for i in single], device=device)
        fb.padded_kv_indices = table[rows, S:S + max_len]
        if min(lens) < max_len:  # rows of equal length (batch 1 always) need no mask
            mask = torch.arange(max_len, device=device).unsqueeze(0) < fb.kv_lens.unsqueeze(1)
            fb.padded_kv_indices = fb.padded_kv_indices * mask  # (b, L), padding reads slot 0
            fb.kv_mask = mask[:, None, None, :]
        if not is_decode:
            fb.padded_rows = torch.tensor([offsets[i] for i in single], device=device)
            fb.in_padded = [n == 1 for n in extend_lens]
    if S and not is_decode:
        _pad_cascade_extends(fb, offsets, device)
    return fb


def shared_prefix_len(table: torch.Tensor, reqs, prefix_lens: list[int],
                      extend_lens: list[int]) -> int:
    """Length of the KV-slot prefix common to every request of the batch (0 when too short
    to pay for a cascade, or when a long extend is better served by per-request attention)."""
    if len(reqs) < 2:
        return 0
    m = min(prefix_lens)
    if m < MIN_SHARED_PREFIX or max(extend_lens) > MAX_CASCADE_EXTEND:
        return 0
    block = table[torch.tensor([r.row for r in reqs], device=table.device), :m]
    same = (block == block[0]).all(0)
    S = m if bool(same.all()) else int(same.to(torch.int8).argmin())
    return S if S >= MIN_SHARED_PREFIX else 0
