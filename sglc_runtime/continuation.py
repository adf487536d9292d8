"""Program segments as one request: a request that carries the rest of a straight-line program
(gen, text, gen, text, gen) continues in place when its gen finishes, instead of returning to
the caller and coming back as a new request.

When the current gen finishes, its result is kept, the text that follows it is appended and the
whole text is re-tokenized canonically (exactly the ids a new request for that text would get,
so greedy output equals a gen-by-gen run's); the K/V of the unchanged token prefix stays with
the request, the changed tail becomes pending and is computed by the next extend step (which
decoding requests ride along with), and the next gen's parameters and constraint take over.
The request never leaves the scheduler: no round trip, no radix re-match, no new admission."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequestError
from .jump_forward import common_prefix_len
from .outputs import make_result
from .request import Req, ReqStatus
from .sampling_params import SamplingParams


@dataclass
class Continuation:
    """What a request still has to run after its current gen."""

    prompt_text: str  # the text the request's input_ids encode
    steps: list[tuple[str, SamplingParams]]  # (text after the current gen, the next gen)
    constraints: list[Any] = field(default_factory=list)  # built per step, off the loop thread
    results: list[dict] = field(default_factory=list)  # the finished gens' result dicts


def parse_program(prompt: str, program: list) -> tuple[str, list[SamplingParams], list[str]]:
    """Split `program` ([{"text": str} | {"gen": sampling_params}, ...]) into the prompt (the
    given one plus any leading text), the gens' parameters and the text after each gen."""
    if not isinstance(prompt, str):
        raise InvalidRequestError("a program's prompt must be a string (it is re-tokenized "
                                  "as the program continues)")
    if not isinstance(program, list):
        raise InvalidRequestError(f"program must be a list of steps, got "
                                  f"{type(program).__name__}")
    gens: list[SamplingParams] = []
    after: list[str] = []
    for i, step in enumerate(program):
        kind = next(iter(step)) if isinstance(step, dict) and len(step) == 1 else None
        if kind == "text" and isinstance(step["text"], str):
            if gens:
                after[-1] += step["text"]
            else:
                prompt += step["text"]
        elif kind == "gen":
            params = SamplingParams.from_dict(step["gen"])
            if params.n != 1:
                raise InvalidRequestError(f"program step {i}: n={params.n}; a program's gens "
                                          "take n=1")
            gens.append(params)
            after.append("")
        else:
            raise InvalidRequestError(f"program step {i}: {step!r} is neither "
                                      "{'text': str} nor {'gen': sampling_params}")
    if not gens:
        raise InvalidRequestError("a program needs at least one gen step")
    return prompt, gens, after


def continue_request(req: Req, tok, scheduler, context_length: int, pool_size: int) -> bool:
    """If finished `req` has steps left, start its next gen in place; returns whether it did.
    Raises InvalidRequestError (the request then fails) when the next prompt does not fit."""
    cont = req.continuation
    if cont is None or not cont.steps or req.error is not None:
        return False
    text, params = cont.steps.pop(0)
    constraint = cont.constraints.pop(0) if cont.constraints else None
    cont.results.append(make_result(req, program=False))
    full = cont.prompt_text + req.text + text
    new = tok.encode(full)
    if len(new) >= context_length:
        raise InvalidRequestError(f"the prompt has {len(new)} tokens, which does not fit the "
                                  f"context length ({context_length}) with room to generate")
    if min(len(new) + params.max_new_tokens, context_length) > pool_size:
        raise InvalidRequestError(f"prompt ({len(new)} tokens) + max_new_tokens "
                                  f"({params.max_new_tokens}) exceeds the KV pool "
                                  f"(max_total_tokens={pool_size})")
    common = common_prefix_len(req.fill_ids, new)
    keep = min(req.kv_len, common, len(new) - 1)  # at least one token left to compute
    scheduler.truncate_kv(req, keep)  # while fill_ids still name the old tokens
    req.input_ids, req.output_ids, req.params = new, [], params
    req.constraint = constraint
    req.fsm_state = constraint.initial_state if constraint is not None else 0
    req.text, req.decoder, req.finish_reason = "", None, None
    req.output_token_logprobs, req.output_top_logprobs = [], []
    req.num_jump_forward_tokens = 0
    req.finish_when_computed = None
    req.cached_tokens = keep
    if req.token_counts is not None:
        req.token_counts.zero_()
    req.status = ReqStatus.RUNNING
    cont.prompt_text = full
    scheduler.num_prompt_tokens += len(new)
    scheduler.num_cached_prompt_tokens += keep
    return True
