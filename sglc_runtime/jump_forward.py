"""Compressed-FSM jump-forward: where a constraint allows only one way forward, append the whole
forced string at once, re-tokenize the output, and recompute only the K/V that changed."""

from __future__ import annotations

from .outputs import check_stop_strings, finish
from .request import Req
from .scheduler import Scheduler
from .tokenizer import IncrementalDecoder, Tokenizer, whole_chars

MAX_BYTES_PER_TOKEN = 64  # a bound on one token's bytes, to cap the jump to the token budget


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share (what re-tokenized text keeps of its K/V)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def jump_forward(req: Req, tok: Tokenizer, scheduler: Scheduler) -> bool:
    """Apply jump-forward to a running constrained request; return True if it jumped.

    The forced text may merge with the previous token, so the output is re-tokenized; the
    constraint follows (`retokenized`: a regex FSM's state depends on bytes only, a grammar
    matcher rolls back and consumes the new tail). K/V for the unchanged token prefix stays (in the
    request or the radix cache); the changed tail becomes pending and is recomputed by an
    extend step before the next token is sampled.
    """
    fsm = req.constraint
    forced = fsm.forced_bytes(req.fsm_state)
    # no more than the token budget could hold (a grammar may force 100 kB); a prefix of the
    # forced text is forced too
    room = (req.params.max_new_tokens - len(req.output_ids)) * MAX_BYTES_PER_TOKEN
    if len(forced) > room:
        forced = whole_chars(forced[:max(room, 0)])
    if not forced:
        return False
    tb = tok.token_bytes
    old = req.output_ids
    data = b"".join(tb[t] for t in old) + forced
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    new = tok.encode(text, add_special_tokens=False)
    if len(new) > req.params.max_new_tokens or b"".join(tb[t] for t in new) != data:
        return False  # would overrun the budget, or text does not round-trip through tokens
    common = common_prefix_len(old, new)
    state = fsm.retokenized(req.fsm_state, forced, old, new, common)
    if state < 0:
        return False  # the constraint does not take the re-tokenized output (left unchanged)
    # drop K/V of the changed tail while fill_ids still name the old tokens; with logprobs,
    # one token more, so the next extend's rows score every token of the new tail
    keep = len(req.input_ids) + common - (1 if req.return_logprob else 0)
    scheduler.truncate_kv(req, min(req.kv_len, max(keep, 1)))
    del req.output_token_logprobs[common:], req.output_top_logprobs[common:]
    req.output_ids = new
    req.fsm_state = state
    req.num_jump_forward_tokens += len(new) - common
    if req.token_counts is not None:
        req.token_counts.zero_()
        for t in new:
            req.token_counts[t] += 1
    prev = len(req.text)
    req.decoder = IncrementalDecoder(tok, req.params.skip_special_tokens)
    req.decoder.step(new)
    req.text = req.decoder.text
    if check_stop_strings(req, prev, defer=req.return_logprob):
        return True
    reason = None
    if fsm.is_finished(req.fsm_state):
        reason = {"type": "stop", "matched": "constraint"}
    elif len(new) >= req.params.max_new_tokens:
        reason = {"type": "length", "length": req.params.max_new_tokens}
        if not fsm.is_accepting(req.fsm_state):
            reason["incomplete"] = True  # (not a sentence of the constraint)
            reason["message"] = "max_new_tokens reached before the constrained output was complete"
    if reason is not None:
        if req.return_logprob:  # the new tail's logprobs come from one more extend
            req.finish_when_computed = (reason, False)
        else:
            finish(req, reason)
    return True
