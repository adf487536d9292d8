"""One engine step: schedule -> run the model -> sample -> process outputs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .config import EngineConfig
from .continuation import continue_request
from .jump_forward import jump_forward
from .model_runner import ModelRunner
from .outputs import (
    append_token,
    finish,
    record_input_logprobs,
    record_output_logprobs,
    top_list,
)
from .request import Req, ReqStatus
from .sampler import needs_penalties, sample
from .scheduler import ScheduledBatch, Scheduler

logger = logging.getLogger(__name__)


class LogitRows(NamedTuple):
    """Which flat rows of a batch need logits: `index` (row numbers), positions in `index` of
    the rows each finishing request samples from, and logprob spans (request, position in
    `index`, first position, count): input spans score prompt tokens, output spans score
    output tokens that are known before they are computed (jump-forward's re-tokenized tail)."""

    index: list[int]
    sample: list[int]
    lp_spans: list[tuple[Req, int, int, int]]
    every_row: bool  # index is 0..T-1 (a decode batch): no gather needed
    out_spans: list[tuple[Req, int, int, int]]


def logit_rows(batch: ScheduledBatch, num_tokens: int) -> LogitRows:
    """The last row of each request whose pending tokens this batch completes, plus every row
    from logprob_start_len - 1 on where input logprobs are asked for."""
    index, sample, lp_spans, out_spans = [], [], [], []
    offset = 0
    for r, n in zip(batch.reqs, batch.extend_lens):
        start = r.kv_len
        if not batch.is_decode and r.wants_input_logprobs and start < len(r.input_ids):
            lo = max(r.logprob_start_len - 1, start)
            hi = min(start + n, len(r.input_ids) - 1)
            if lo < hi:
                lp_spans.append((r, len(index), lo, hi - lo))
                index.extend(range(offset + lo - start, offset + hi - start))
        if not batch.is_decode and r.return_logprob and r.output_ids:
            # the row at position p scores output token p + 1 - len(input_ids): those not
            # scored yet, short of the last row (it samples the next token)
            lo = max(start, len(r.input_ids) - 1 + len(r.output_token_logprobs))
            hi = min(start + n, r.seq_len - 1)
            if lo < hi:
                out_spans.append((r, len(index), lo, hi - lo))
                index.extend(range(offset + lo - start, offset + hi - start))
        if n == r.num_pending:
            sample.append(len(index))
            index.append(offset + n - 1)
        offset += n
    return LogitRows(index, sample, lp_spans, len(index) == num_tokens, out_spans)


@dataclass
class StepStats:
    num_steps: int = 0
    busy_s: float = 0.0  # time spent in steps (the rest the loop waited for work)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0


class EngineCore:
    """Holds the runner and scheduler; `step()` advances every running request by one step and
    returns the requests that got new output (finished ones included)."""

    def __init__(self, cfg: EngineConfig, runner: ModelRunner | None = None):
        self.cfg = cfg
        self.runner = runner if runner is not None else ModelRunner(cfg)  # tests pass a fake
        self.tokenizer = self.runner.tokenizer
        self.eos_ids = self.runner.model_config.eos_token_ids
        self.scheduler = Scheduler(cfg, self.runner.kv_pool, self.runner.req_pool,
                                   self.runner.context_length)
        self.stats = StepStats()

    def add_request(self, req: Req) -> None:
        if needs_penalties(req):
            req.token_counts = torch.zeros(self.runner.model_config.vocab_size)
        self.scheduler.add(req)

    def step(self) -> list[Req]:
        """Schedule -> run the model -> postprocess; returns the requests of the batch (each
        got output, finished, or failed). One bad batch fails its own requests only."""
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        t0 = time.perf_counter() if logger.isEnabledFor(logging.DEBUG) else None
        committed = False
        try:
            fb = self.runner.build_batch(batch.is_decode, batch.reqs, batch.extend_lens,
                                         batch.out_cache_loc)
            rows = logit_rows(batch, fb.input_ids.numel())
            logits = self.runner.forward(fb, None if rows.every_row else torch.tensor(
                rows.index, dtype=torch.long, device=fb.input_ids.device))
            self._commit(batch)
            committed = True
            self._postprocess(batch, rows, logits)
            if t0 is not None:
                logger.debug("step: %s of %d requests, %d rows, %.1f ms",
                             "decode" if batch.is_decode else "extend", len(batch.reqs),
                             fb.input_ids.numel(), 1e3 * (time.perf_counter() - t0))
        except Exception as e:
            logger.exception("engine step failed; failing the %d requests of the batch",
                             len(batch.reqs))
            if not committed:
                self.scheduler.kv_pool.free(batch.out_cache_loc)
            for r in batch.reqs:
                self.fail(r, e)
        return batch.reqs

    def fail(self, req: Req, err: BaseException) -> None:
        req.error = err
        req.finish_reason = {"type": "abort", "message": str(err)}
        if req.row is not None:
            self.scheduler.release(req, finished=True)
        elif req in self.scheduler.waiting:
            self.scheduler.waiting.remove(req)
        req.status = ReqStatus.FINISHED

    def _commit(self, batch: ScheduledBatch) -> None:
        """The batch's K/V are in the pool now: advance each request past its computed tokens."""
        for r, n in zip(batch.reqs, batch.extend_lens):
            if batch.is_decode:
                r.kv_len += 1
            else:
                self.scheduler.commit_extend(r, n)

    def _postprocess(self, batch: ScheduledBatch, rows: LogitRows,
                     logits: torch.Tensor) -> None:
        """Record input logprobs; the requests whose pending tokens are all computed now
        sample their next token (and may finish)."""
        if rows.lp_spans or rows.out_spans:  # (per request: a span's rows stay in cache)
            host = logits.cpu()
            for r, at, pos, cnt in rows.lp_spans:
                record_input_logprobs(r, torch.log_softmax(host[at:at + cnt], dim=-1), pos)
            for r, at, pos, cnt in rows.out_spans:
                record_output_logprobs(r, torch.log_softmax(host[at:at + cnt], dim=-1), pos)
        to_sample = [r for r in batch.reqs if r.num_pending == 0]
        assert len(to_sample) == len(rows.sample), "a sampled request has no logit row"
        self._stats(batch)
        if to_sample:  # (R, V) is large: index only when some rows are not sampled
            self._sample(to_sample, logits if len(rows.sample) == len(rows.index)
                         else logits[rows.sample])

    def _sample(self, reqs: list[Req], logits: torch.Tensor) -> None:
        for i, r in enumerate(reqs):  # prompt-only requests (select scoring) take no token
            if r.params.max_new_tokens == 0:
                if r.return_logprob and r.top_logprobs_num:  # but may ask what would come next
                    row = torch.log_softmax(logits[i].float(), dim=-1)
                    r.output_top_logprobs.append(top_list(row, r.top_logprobs_num))
                r.finish_reason = {"type": "length", "length": 0}
                r.status = ReqStatus.FINISHED
            elif r.finish_when_computed is not None:  # (jump-forward ended it: see Req)
                finish(r, *r.finish_when_computed)
        keep = [i for i, r in enumerate(reqs) if not r.finished]
        if keep:
            reqs_k = [reqs[i] for i in keep]
            need_lp = any(r.return_logprob for r in reqs_k)
            rows = logits if len(keep) == len(reqs) else logits[keep]
            try:
                ids, lps = sample(rows, reqs_k, self.eos_ids, need_lp)
            except Exception:  # noqa: BLE001 - find the request(s) at fault, fail only them
                ids, lps = self._sample_apart(rows, reqs_k, need_lp)
            for i, (r, t) in enumerate(zip(reqs_k, ids)):
                if t is None:
                    continue  # its sampling failed (the request has failed)
                try:  # a failure here is this request's alone
                    append_token(r, t, None if lps is None else lps[i], self.tokenizer,
                                 self.eos_ids)
                    if r.constraint is not None and not r.finished and \
                            not self.cfg.disable_regex_jump_forward:
                        jump_forward(r, self.tokenizer, self.scheduler)
                except Exception as e:
                    logger.exception("request %d failed after sampling", r.rid)
                    self.fail(r, e)
                    continue
                if not r.finished and r.finish_when_computed is None and \
                        r.seq_len >= self.runner.context_length:
                    r.finish_reason = {"type": "length", "length": len(r.output_ids),
                                       "context_length": self.runner.context_length}
                    r.status = ReqStatus.FINISHED
        for r in reqs:
            if r.finished and r.continuation is not None:
                self._continue(r)
            if r.finished and r.row is not None:
                self.scheduler.release(r, finished=True)

    def _sample_apart(self, logits: torch.Tensor, reqs: list[Req], need_lp: bool):
        """Sample each request on its own (after the batch's sampling raised): a request whose
        own sampling raises (e.g. its constraint's matcher failed) fails, the others go on."""
        ids, lps = [], []
        for i, r in enumerate(reqs):
            try:
                t, lp = sample(logits[i:i + 1], [r], self.eos_ids, need_lp)
                ids.append(t[0])
                lps.append(None if lp is None else lp[0])
            except Exception as e:
                logger.exception("request %d failed in sampling", r.rid)
                self.fail(r, e)
                ids.append(None)
                lps.append(None)
        return ids, (lps if need_lp else None)

    def _continue(self, req: Req) -> None:
        """A program segment's request starts its next gen in place (continuation.py)."""
        try:
            if continue_request(req, self.tokenizer, self.scheduler, self.runner.context_length,
                                self.runner.kv_pool.size) and needs_penalties(req) \
                    and req.token_counts is None:
                req.token_counts = torch.zeros(self.runner.model_config.vocab_size)
        except Exception as e:  # noqa: BLE001 - this request's alone
            self.fail(req, e)

    def _stats(self, batch: ScheduledBatch) -> None:
        self.stats.num_steps += 1
        if batch.is_decode:
            self.stats.num_decode_tokens += len(batch.reqs)
        else:
            self.stats.num_prefill_tokens += sum(batch.extend_lens)
