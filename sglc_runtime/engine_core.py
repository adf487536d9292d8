"""One engine step: schedule -> run the model -> sample -> process outputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .config import EngineConfig
from .jump_forward import jump_forward
from .model_runner import ModelRunner
from .outputs import append_token, record_input_logprobs, top_list
from .request import Req, ReqStatus
from .sampler import needs_penalties, sample
from .scheduler import ScheduledBatch, Scheduler

logger = logging.getLogger(__name__)


@dataclass
class StepStats:
    num_steps: int = 0
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
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        self._committed = False
        try:
            return self._run(batch)
        except Exception as e:  # one bad batch must not kill the engine: fail its requests
            logger.exception("engine step failed; failing the %d requests of the batch",
                             len(batch.reqs))
            if not self._committed:
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

    def _run(self, batch: ScheduledBatch) -> list[Req]:
        fb = self.runner.build_batch(batch.is_decode, batch.reqs, batch.extend_lens,
                                     batch.out_cache_loc)
        # which flat rows need logits: the last row of each request that completes its
        # pending tokens, plus every row from logprob_start_len - 1 on when input logprobs
        # are asked for
        rows, sample_rows, lp_spans = [], [], []
        offset = 0
        for r, n in zip(batch.reqs, batch.extend_lens):
            start = r.kv_len
            if not batch.is_decode and r.wants_input_logprobs and start < len(r.input_ids):
                lo = max(r.logprob_start_len - 1, start)
                hi = min(start + n, len(r.input_ids) - 1)
                if lo < hi:
                    lp_spans.append((r, len(rows), lo, hi - lo))
                    rows.extend(range(offset + lo - start, offset + hi - start))
            if n == r.num_pending:
                sample_rows.append(len(rows))
                rows.append(offset + n - 1)
            offset += n
        every_row = len(rows) == fb.input_ids.numel()  # (rows is then 0..T-1: decode)
        logits = self.runner.forward(
            fb, None if every_row else torch.tensor(rows, dtype=torch.long,
                                                    device=fb.input_ids.device))
        self._committed = True
        for r, n in zip(batch.reqs, batch.extend_lens):
            if batch.is_decode:
                r.kv_len += 1
            else:
                self.scheduler.commit_extend(r, n)
        if lp_spans:
            all_lp = torch.log_softmax(logits.cpu(), dim=-1)
            for r, at, pos, cnt in lp_spans:
                record_input_logprobs(r, all_lp[at:at + cnt], pos)
        # requests whose pending tokens are all computed now sample their next token
        to_sample = [r for r, n in zip(batch.reqs, batch.extend_lens) if r.num_pending == 0]
        assert len(to_sample) == len(sample_rows)
        self._stats(batch)
        if to_sample:
            # (R, V) is large: index only when some rows are not sampled
            self._sample(to_sample, logits if len(sample_rows) == len(rows)
                         else logits[sample_rows])
        return batch.reqs

    def _sample(self, reqs: list[Req], logits: torch.Tensor) -> None:
        for i, r in enumerate(reqs):  # prompt-only requests (select scoring) take no token
            if r.params.max_new_tokens == 0:
                if r.return_logprob and r.top_logprobs_num:  # but may ask what would come next
                    row = torch.log_softmax(logits[i].float(), dim=-1)
                    r.output_top_logprobs.append(top_list(row, r.top_logprobs_num))
                r.finish_reason = {"type": "length", "length": 0}
                r.status = ReqStatus.FINISHED
        keep = [i for i, r in enumerate(reqs) if r.params.max_new_tokens > 0]
        if keep:
            reqs_k = [reqs[i] for i in keep]
            need_lp = any(r.return_logprob for r in reqs_k)
            ids, lps = sample(logits if len(keep) == len(reqs) else logits[keep], reqs_k,
                              self.eos_ids, need_lp)
            for i, (r, t) in enumerate(zip(reqs_k, ids)):
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
                if not r.finished and r.seq_len >= self.runner.context_length:
                    r.finish_reason = {"type": "length", "length": len(r.output_ids),
                                       "context_length": self.runner.context_length}
                    r.status = ReqStatus.FINISHED
        for r in reqs:
            if r.finished and r.row is not None:
                self.scheduler.release(r, finished=True)

    def _stats(self, batch: ScheduledBatch) -> None:
        self.stats.num_steps += 1
        if batch.is_decode:
            self.stats.num_decode_tokens += len(batch.reqs)
        else:
            self.stats.num_prefill_tokens += sum(batch.extend_lens)
