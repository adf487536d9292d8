"""A request's life in the engine: token ids, KV bookkeeping, decoding state and its result."""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .sampling_params import SamplingParams

_ids = itertools.count()


class ReqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Req:
    """One sequence. `fill_ids` = prompt + output so far; the first `kv_len` of them have K/V in
    the pool at slots `req_to_token[row, :kv_len]`, of which the first `num_cached` belong to the
    radix cache (locked through `last_node`). Tokens `fill_ids[kv_len:]` are pending computation.
    """

    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1  # first prompt position whose logprob is returned (-1: none)
    top_logprobs_num: int = 0
    on_update: Callable[[Req], None] | None = None  # called (engine thread) after new output
    rid: int = field(default_factory=lambda: next(_ids))

    status: ReqStatus = ReqStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    row: int | None = None
    kv_len: int = 0
    num_cached: int = 0
    last_node: Any = None
    cached_tokens: int = 0  # prompt tokens served from the radix cache (reported)
    constraint: Any = None  # TokenFSM, GrammarConstraint (its own) or None
    fsm_state: int = 0
    finish_reason: dict | None = None
    error: BaseException | None = None
    text: str = ""
    decoder: Any = None
    input_token_logprobs: list = field(default_factory=list)
    input_top_logprobs: list = field(default_factory=list)
    output_token_logprobs: list = field(default_factory=list)
    output_top_logprobs: list = field(default_factory=list)
    token_counts: torch.Tensor | None = None  # (vocab,) output token counts, for penalties
    num_retractions: int = 0
    num_jump_forward_tokens: int = 0
    # a finish decided by jump-forward, (reason, keep_text) for outputs.finish, taken once the
    # forced tail is computed (its output logprobs come from that extend) instead of sampling
    finish_when_computed: tuple[dict, bool] | None = None
    created: float = field(default_factory=time.perf_counter)
    result: dict | None = None  # the result dict, when it was built elsewhere (engine process)
    continuation: Any = None  # the rest of a program segment (continuation.py), or None

    @property
    def fill_ids(self) -> list[int]:
        return self.input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        return self.seq_len - self.kv_len

    @property
    def finished(self) -> bool:
        return self.status is ReqStatus.FINISHED

    @property
    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and 0 <= self.logprob_start_len < len(self.input_ids)

    def remaining_new_tokens(self) -> int:
        return max(self.params.max_new_tokens - len(self.output_ids), 0)


def new_request(input_ids: list[int], params: SamplingParams, return_logprob: bool,
                logprob_start_len: int, top_logprobs_num: int, rid: int | None = None) -> Req:
    """A validated request's Req (`rid` given when the caller's process numbered it)."""
    kw = {} if rid is None else {"rid": rid}
    req = Req(list(input_ids), params, return_logprob=return_logprob,
              logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num, **kw)
    if return_logprob and logprob_start_len == 0:  # the first token has no context to score it
        req.input_token_logprobs.append((None, req.input_ids[0], None))
        if top_logprobs_num:
            req.input_top_logprobs.append(None)
    return req
