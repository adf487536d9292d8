"""After sampling: append a request's token, advance its constraint, check stop conditions,
detokenize, record logprobs; and build the result dict SGLang's API returns."""

from __future__ import annotations

import torch

from .request import Req, ReqStatus
from .tokenizer import IncrementalDecoder, Tokenizer


def top_list(row: torch.Tensor, k: int) -> list[tuple[float, int, None]]:
    vals, ids = row.topk(k)
    return [(float(v), int(i), None) for v, i in zip(vals, ids)]


def record_input_logprobs(req: Req, logprobs: torch.Tensor, start_pos: int) -> None:
    """`logprobs[j]` is the distribution after prompt position start_pos + j; keep the entries
    that score prompt tokens at positions >= logprob_start_len. Idempotent per position, so a
    retracted request's recomputation does not record twice."""
    ids = req.input_ids
    for j in range(logprobs.shape[0]):
        target = start_pos + j + 1
        if target < req.logprob_start_len or target >= len(ids):
            continue
        if target - req.logprob_start_len != len(req.input_token_logprobs):
            continue  # already recorded
        req.input_token_logprobs.append((float(logprobs[j, ids[target]]), ids[target], None))
        if req.top_logprobs_num:
            req.input_top_logprobs.append(top_list(logprobs[j], req.top_logprobs_num))


def record_output_logprobs(req: Req, logprobs: torch.Tensor, start_pos: int) -> None:
    """`logprobs[j]` is the distribution after position start_pos + j of the sequence; it
    scores output tokens already known (jump-forward's re-tokenized tail), in order, each
    once: so output_token_logprobs stays one entry per output token."""
    n_in = len(req.input_ids)
    for j in range(logprobs.shape[0]):
        k = start_pos + j + 1 - n_in  # the output token this row scores
        if k != len(req.output_token_logprobs) or k >= len(req.output_ids):
            continue
        t = req.output_ids[k]
        req.output_token_logprobs.append((float(logprobs[j, t]), t, None))
        if req.top_logprobs_num:
            req.output_top_logprobs.append(top_list(logprobs[j], req.top_logprobs_num))


def append_token(req: Req, token: int, logprobs: torch.Tensor | None, tok: Tokenizer,
                 eos_ids: tuple[int, ...]) -> None:
    """Add one sampled token and finish the request if a stop condition holds."""
    p = req.params
    req.output_ids.append(token)
    if req.token_counts is not None:
        req.token_counts[token] += 1
    if req.return_logprob and logprobs is not None:
        req.output_token_logprobs.append((float(logprobs[token]), token, None))
        if req.top_logprobs_num:
            req.output_top_logprobs.append(top_list(logprobs, req.top_logprobs_num))
    if req.constraint is not None:
        if token in eos_ids:
            return finish(req, {"type": "stop", "matched": token})
        req.fsm_state = req.constraint.next_state(req.fsm_state, token)
        assert req.fsm_state >= 0, f"constraint allowed token {token} but has no transition"
    elif not p.ignore_eos and token in eos_ids:
        return finish(req, {"type": "stop", "matched": token})
    if p.stop_token_ids and token in p.stop_token_ids:
        return finish(req, {"type": "stop", "matched": token})
    prev = len(req.text)
    update_text(req, tok)
    if check_stop_strings(req, prev):
        return
    if req.constraint is not None and req.constraint.is_finished(req.fsm_state):
        return finish(req, {"type": "stop", "matched": "constraint"})
    if len(req.output_ids) >= p.max_new_tokens:
        reason = {"type": "length", "length": p.max_new_tokens}
        if req.constraint is not None and not req.constraint.is_accepting(req.fsm_state):
            reason["incomplete"] = True  # (not a sentence of the constraint)
            reason["message"] = "max_new_tokens reached before the constrained output was complete"
        return finish(req, reason)


def check_stop_strings(req: Req, prev_len: int, defer: bool = False) -> bool:
    """Finish `req` if a stop string (or a `stop_regex` match) ends in the text added after
    `prev_len` characters (`defer`: the text is cut now, the finish waits in
    `req.finish_when_computed`)."""
    p = req.params
    for s in p.stop_strs:
        at = req.text.find(s, max(0, prev_len - len(s) + 1))
        if at >= 0:
            return _stop_at(req, at, s, defer)
    for pat in p.stop_patterns:  # a match may start anywhere, so search the whole output
        m = pat.search(req.text)
        if m is not None and m.end() > prev_len:
            return _stop_at(req, m.start(), pat.pattern, defer)
    return False


def _stop_at(req: Req, at: int, matched: str, defer: bool = False) -> bool:
    if not req.params.no_stop_trim:
        req.text = req.text[:at]
    reason = {"type": "stop", "matched": matched}
    if defer:
        req.finish_when_computed = (reason, True)
    else:
        finish(req, reason, keep_text=True)
    return True


def update_text(req: Req, tok: Tokenizer) -> None:
    if req.decoder is None:
        req.decoder = IncrementalDecoder(tok, req.params.skip_special_tokens)
    req.decoder.step(req.output_ids)
    req.text = req.decoder.text


def finish(req: Req, reason: dict, keep_text: bool = False) -> None:
    if not keep_text and req.decoder is not None:
        req.decoder.flush(req.output_ids)
        req.text = req.decoder.text
    req.finish_reason = reason
    req.status = ReqStatus.FINISHED


def make_result(req: Req, program: bool = True) -> dict:
    """The dict `Engine.generate` returns (SGLang's layout); for a program segment's request
    (and `program`), also "gens": every gen's result in order, this last one included."""
    meta = {
        "id": str(req.rid),
        "prompt_tokens": len(req.input_ids),
        "completion_tokens": len(req.output_ids),
        "cached_tokens": req.cached_tokens,
        "finish_reason": req.finish_reason,
    }
    if req.num_jump_forward_tokens:
        meta["jump_forward_tokens"] = req.num_jump_forward_tokens
    if req.return_logprob:
        meta["input_token_logprobs"] = list(req.input_token_logprobs)
        meta["output_token_logprobs"] = list(req.output_token_logprobs)
        if req.top_logprobs_num:
            meta["input_top_logprobs"] = list(req.input_top_logprobs)
            meta["output_top_logprobs"] = list(req.output_top_logprobs)
        lps = [lp for lp, _, _ in req.input_token_logprobs if lp is not None]
        meta["normalized_prompt_logprob"] = sum(lps) / len(lps) if lps else 0.0
    result = {"text": req.text, "output_ids": list(req.output_ids), "meta_info": meta}
    if program and req.continuation is not None:
        result["gens"] = req.continuation.results + [dict(result)]
    return result


def progress_meta(req: Req) -> dict:
    """A streamed chunk's meta_info: the output so far (logprob lists are cumulative, as in the
    final result, so a reader slices off what it has already seen)."""
    meta = {"id": str(req.rid), "completion_tokens": len(req.output_ids)}
    if req.return_logprob:
        meta["output_token_logprobs"] = list(req.output_token_logprobs)
        if req.top_logprobs_num:
            meta["output_top_logprobs"] = list(req.output_top_logprobs)
    return meta
