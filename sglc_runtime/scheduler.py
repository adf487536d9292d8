"""Cache-aware continuous batching: admit waiting requests (longest cached prefix first), form
extend batches (uncached suffixes, chunked) and decode batches, and retract under memory pressure.
The scheduler owns all KV bookkeeping: rows, slots, radix-cache locks."""

from __future__ import annotations

import logging
import sys
from collections import deque
from dataclasses import dataclass

import torch

from .config import EngineConfig
from .kv_pool import ReqToTokenPool, TokenToKVPool
from .radix_cache import NoPrefixCache, PrefixCache, RadixCache
from .request import Req, ReqStatus

logger = logging.getLogger(__name__)

#: a deterministic step's padded attention table, rows x widest sequence (int64 slots: 256 MB);
#: the default model's largest step (4096 rows x 8192) fits, longer contexts take fewer rows
MAX_STEP_PADDED_SLOTS = 1 << 25
IN_BATCH_PREFIX_MIN = 32  # uncached tokens two new requests must share for one to wait


@dataclass
class ScheduledBatch:
    """Requests to run this step; for extends, `extend_lens[i]` of each request's pending tokens
    (less than all pending when chunked: such a request is not sampled this step)."""

    is_decode: bool
    reqs: list[Req]
    extend_lens: list[int]
    out_cache_loc: torch.Tensor  # (sum extend_lens,) newly allocated slots


class Scheduler:
    def __init__(self, cfg: EngineConfig, kv_pool: TokenToKVPool, req_pool: ReqToTokenPool,
                 context_length: int):
        self.cfg = cfg
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.context_length = context_length
        cache_cls = NoPrefixCache if cfg.disable_radix_cache else RadixCache
        self.cache: PrefixCache = cache_cls(kv_pool.free)
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.new_token_ratio = 0.4  # fraction of remaining max_new_tokens reserved at admission
        self.num_retractions = 0
        self.num_prompt_tokens = 0  # prompts admitted, and how many of their tokens were cached
        self.num_cached_prompt_tokens = 0

    # ---- bookkeeping -------------------------------------------------------------------------
    def add(self, req: Req) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def slots_of(self, req: Req) -> torch.Tensor:
        return self.req_pool.req_to_token[req.row, :req.kv_len]

    def check_invariants(self) -> None:
        """Every slot 1..size has exactly one owner: the free list, the prefix cache, or one
        running request (its positions num_cached..kv_len). Tests call this after each step."""
        self.cache.check_invariants()
        owned = sum(r.kv_len - r.num_cached for r in self.running)
        total = self.kv_pool.num_free() + self.cache.total_size() + owned
        assert total == self.kv_pool.size, (
            f"KV slots leaked: free {self.kv_pool.num_free()} + cached {self.cache.total_size()} "
            f"+ owned {owned} = {total} != {self.kv_pool.size}")
        parts = [self.kv_pool.free_slots(), self.cache.all_slots()] + \
            [self.req_pool.req_to_token[r.row, r.num_cached:r.kv_len].cpu() for r in self.running]
        owners = torch.bincount(torch.cat(parts), minlength=self.kv_pool.size + 1)
        assert owners[0] == 0 and bool((owners[1:] == 1).all()), (
            f"KV slots with no owner or several: "
            f"{(owners[1:] != 1).nonzero().squeeze(1)[:8].add(1).tolist()}")

    def _available(self) -> int:
        return self.kv_pool.num_free() + self.cache.evictable_size()

    def _alloc(self, n: int) -> torch.Tensor | None:
        if self.kv_pool.num_free() < n:
            self.cache.evict(n - self.kv_pool.num_free())
        return self.kv_pool.alloc(n)

    def _match_limit(self, req: Req) -> int:
        """How many leading tokens may come from the cache: at least one must be computed, and
        input logprobs need logits from position logprob_start_len - 1 on."""
        limit = req.seq_len - 1
        if req.wants_input_logprobs:
            limit = min(limit, max(req.logprob_start_len - 1, 0))
        return limit

    # ---- admission ---------------------------------------------------------------------------
    def _order_waiting(self) -> list[Req]:
        reqs = list(self.waiting)
        if self.cfg.schedule_policy == "lpm" and len(reqs) > 1 and \
                not isinstance(self.cache, NoPrefixCache) and len(reqs) <= 512:
            lens = {r.rid: len(self.cache.match_prefix(r.fill_ids[:self._match_limit(r)]).indices)
                    for r in reqs}
            reqs.sort(key=lambda r: -lens[r.rid])  # stable: FCFS among equals
        return reqs

    def _admit(self) -> None:
        if not self.waiting:
            return
        # room still owed to running requests: their pending (chunked) tokens and a share of
        # the tokens they may yet generate
        reserved = sum(max(r.num_pending - 1, 0) + self.new_token_ratio *
                       min(r.remaining_new_tokens(), 4096) for r in self.running)
        budget = self.cfg.max_prefill_tokens
        admitted = []
        for req in self._order_waiting():
            if len(self.running) >= self.cfg.max_running_requests or self.req_pool.num_free() == 0:
                break
            match = self.cache.match_prefix(req.fill_ids[:self._match_limit(req)])
            m = len(match.indices)
            if self._defer_for_in_batch_prefix(req, m, admitted):
                continue
            need = req.seq_len - m
            own_reserve = self.new_token_ratio * min(req.remaining_new_tokens(), 4096)
            if need + reserved + own_reserve > self._available() and self.running:
                break
            if need > budget and admitted:
                break
            req.row = self.req_pool.alloc()
            self.cache.lock(match.node)
            req.last_node, req.num_cached, req.kv_len = match.node, m, m
            if m:
                self.req_pool.req_to_token[req.row, :m] = match.indices
            if not req.output_ids and req.num_retractions == 0:
                req.cached_tokens = m
                self.num_prompt_tokens += len(req.input_ids)
                self.num_cached_prompt_tokens += m
            req.status = ReqStatus.RUNNING
            self.running.append(req)
            admitted.append(req)
            reserved += own_reserve + need
            budget -= need
            if budget <= 0:
                break
        for req in admitted:
            self.waiting.remove(req)

    def _defer_for_in_batch_prefix(self, req: Req, matched: int, admitted: list[Req]) -> bool:
        """Wait a step if a request admitted this round will compute (and then cache) a long
        prefix this one shares: computing it once beats computing it for every sibling."""
        if isinstance(self.cache, NoPrefixCache):
            return False
        ids = req.fill_ids
        for other in admitted:
            o = other.fill_ids
            n = min(len(ids), len(o), matched + IN_BATCH_PREFIX_MIN)
            if n == matched + IN_BATCH_PREFIX_MIN and ids[matched:n] == o[matched:n]:
                return True
        return False

    # ---- batch formation ---------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        """Choose the next step: an extend batch if any running request has more than one
        pending token (new, chunked, recomputed or jumped forward), else a decode batch."""
        self._admit()
        return self._form_batch()

    def _form_batch(self) -> ScheduledBatch | None:
        if not self.running:
            return None
        extend = [r for r in self.running if r.num_pending > 1]
        if extend:
            # requests ready to decode ride along (a mixed batch): one pass over the weights
            return self._extend_batch(extend + [r for r in self.running if r.num_pending == 1])
        return self._decode_batch()

    def _extend_batch(self, reqs: list[Req]) -> ScheduledBatch | None:
        budget = max(self.cfg.max_prefill_tokens, self.cfg.chunked_prefill_size)
        chosen, lens, locs = [], [], []
        rows = width = 0  # the step's padded attention table so far: rows x width slots
        for req in reqs:
            room = self._padded_room(rows, width, req, first=not chosen)
            if req.num_pending == 1:  # decoding alongside: no prefill budget, skip if no room
                loc = self._alloc(1) if room is None or room >= 1 else None
                if loc is not None:
                    chosen.append(req)
                    lens.append(1)
                    locs.append(loc)
                    rows, width = rows + 1, max(width, req.kv_len + 1)
                continue
            n = min(req.num_pending, self.cfg.chunked_prefill_size, budget,
                    sys.maxsize if room is None else room)
            if n <= 0:
                continue
            loc = self._alloc(n)
            if loc is None:
                n = max(min(n, self.kv_pool.num_free() + self.cache.evictable_size()), 0)
                loc = self._alloc(n) if n > 0 else None
                if loc is None:
                    continue
            chosen.append(req)
            lens.append(n)
            locs.append(loc)
            budget -= n
            rows, width = rows + n, max(width, req.kv_len + n)
        if not chosen:
            if not self._retract_one(exclude=None):
                raise RuntimeError("KV pool too small to make progress on any request")
            return self._form_batch()  # no admission now: the retracted one must wait
        return ScheduledBatch(False, chosen, lens, torch.cat(locs))

    def _padded_room(self, rows: int, width: int, req: Req, first: bool) -> int | None:
        """With deterministic inference every row of a step attends as a padded one-query row
        (attention/metadata.py: a rows x widest-sequence table of slots): how many rows `req`
        may add within MAX_STEP_PADDED_SLOTS (at least one for a step's first request);
        None without it."""
        if not self.cfg.enable_deterministic_inference:
            return None
        wide = max(width, req.kv_len + min(req.num_pending, self.cfg.chunked_prefill_size))
        return max(MAX_STEP_PADDED_SLOTS // wide - rows, 1 if first else 0)

    def _decode_batch(self) -> ScheduledBatch:
        while self._available() < len(self.running):
            if not self._retract_one(exclude=None):
                break
        loc = self._alloc(len(self.running))
        assert loc is not None, "decode could not allocate after retraction"
        return ScheduledBatch(True, list(self.running), [1] * len(self.running), loc)

    def _retract_one(self, exclude: Req | None) -> bool:
        """Move the most recently admitted running request back to the waiting queue, keeping
        its output (it is recomputed later, never lost). Returns False if none can be."""
        candidates = [r for r in self.running if r is not exclude]
        if len(candidates) <= 1 and len(self.running) <= 1:
            return False
        req = max(candidates, key=lambda r: r.created)
        self.release(req, finished=False)
        req.status = ReqStatus.WAITING
        req.num_retractions += 1
        self.num_retractions += 1
        self.new_token_ratio = min(1.0, self.new_token_ratio + 0.2)
        self.waiting.appendleft(req)
        logger.info("retracted request %d (%d tokens) under KV memory pressure", req.rid,
                    req.seq_len)
        return True

    # ---- after a step ------------------------------------------------------------------------
    def commit_extend(self, req: Req, n: int) -> None:
        """Record that `n` more tokens of `req` now have K/V; share them through the cache."""
        req.kv_len += n
        match = self.cache.cache_req(req.fill_ids[:req.kv_len], self.slots_of(req).clone(),
                                     req.num_cached, req.last_node, finished=False)
        m = len(match.indices)
        if m:
            self.req_pool.req_to_token[req.row, :m] = match.indices
        req.num_cached, req.last_node = m, match.node

    def truncate_kv(self, req: Req, keep: int) -> None:
        """Drop K/V beyond the first `keep` tokens (after jump-forward re-tokenizes the tail)."""
        if keep >= req.kv_len:
            return
        if keep < req.num_cached:
            # the cache owns those slots: give everything back and re-match from scratch
            self.release(req, finished=False, keep_row=True)
            match = self.cache.match_prefix(req.fill_ids[:keep])
            self.cache.lock(match.node)
            m = len(match.indices)
            if m:
                self.req_pool.req_to_token[req.row, :m] = match.indices
            req.last_node, req.num_cached, req.kv_len = match.node, m, m
            return
        self.kv_pool.free(self.req_pool.req_to_token[req.row, keep:req.kv_len].clone())
        req.kv_len = keep

    def release(self, req: Req, finished: bool, keep_row: bool = False) -> None:
        """Hand a request's computed K/V to the cache (or free it) and unlock its path."""
        if req.row is None:
            return
        self.cache.cache_req(req.fill_ids[:req.kv_len], self.slots_of(req).clone(),
                             req.num_cached, req.last_node, finished=True)
        req.kv_len = req.num_cached = 0
        req.last_node = None
        if not keep_row:
            self.req_pool.free(req.row)
            req.row = None
            if req in self.running:
                self.running.remove(req)
        if finished:
            self.new_token_ratio = max(0.1, self.new_token_ratio - 0.01)
