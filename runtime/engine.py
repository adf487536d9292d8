"""The offline engine API (SGLang's `Engine`): a background thread runs the engine loop while
any number of callers submit requests and wait for, stream, or await their results."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from typing import Any, Iterator

import torch

from .config import EngineConfig
from .engine_core import EngineCore
from .errors import EngineClosedError, InvalidRequestError, RequestAbortedError, SglcError
from .outputs import make_result, progress_meta
from .request import Req, ReqStatus
from .sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class _Waiter:
    """Delivers a request's updates from the engine thread to one caller."""

    def __init__(self, stream: bool):
        self.stream = stream
        self.q: queue.Queue = queue.Queue()
        self.sent = 0

    def __call__(self, req: Req) -> None:
        # runs on the engine thread between steps: the text snapshot is consistent
        if req.finished:
            self.q.put(("done", req.text, req))
        elif self.stream:
            self.q.put(("chunk", req.text, req))


class Engine:
    """`Engine(model_path=None, dtype="auto", max_total_tokens=None, disable_radix_cache=False,
    schedule_policy="lpm", chunked_prefill_size=2048, ...)`; see EngineConfig for all knobs."""

    def __init__(self, model_path: str | None = None, log_level: str | None = None, **kwargs):
        if log_level:
            logging.getLogger("sglc_runtime").setLevel(log_level.upper())
        self.config = EngineConfig(model_path=model_path, **kwargs)
        self._ready = threading.Event()
        self._init_error: BaseException | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._closed = False
        self._live: dict[int, Req] = {}
        self._flushes: queue.Queue = queue.Queue()  # (event, result list) from flush_cache()
        self._aborts: queue.Queue = queue.Queue()  # requests their callers abandoned
        self._submit_lock = threading.Lock()  # orders submissions against shutdown's drain
        self._thread = threading.Thread(target=self._run, name="sglc-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._init_error is not None:
            raise self._init_error
        self.tokenizer = self.core.tokenizer

    def _run(self) -> None:
        """The engine thread builds the model and runs every step itself: the CPU kernels'
        thread teams (OpenMP) run measurably faster from the thread that set them up."""
        try:
            self.core = EngineCore(self.config)
        except BaseException as e:  # surfaced to the constructor's caller
            self._init_error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop()

    # ---- engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        core = self.core
        if self.config.device == "cpu":
            # flush-to-zero is per thread (MXCSR): denormals in this thread's matmuls would
            # otherwise run ~2x slower end to end
            torch.set_flush_denormal(True)
        while not self._closed:
            while True:
                try:
                    req = self._inbox.get_nowait()
                except queue.Empty:
                    break
                self._live[req.rid] = req
                core.add_request(req)
            aborted = []
            while not self._aborts.empty():
                r = self._aborts.get_nowait()
                if r.rid in self._live and not r.finished:
                    core.fail(r, RequestAbortedError(f"request {r.rid} was aborted"))
                    aborted.append(r)
            self._notify(aborted)
            while not self._flushes.empty():
                done, result = self._flushes.get_nowait()
                idle = not core.scheduler.has_work()
                if idle:
                    core.scheduler.cache.reset()
                result.append(idle)
                done.set()
            if not core.scheduler.has_work():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                updated = core.step()
                if self.config.check_invariants:
                    core.scheduler.check_invariants()
            except Exception as e:  # scheduling bug: fail everyone rather than hang them
                logger.exception("engine loop failed")
                updated = list(self._live.values())
                for r in updated:
                    core.fail(r, e)
            self._notify(updated)
        self._fail_all_on_shutdown()

    def _notify(self, updated: list[Req]) -> None:
        for r in updated:
            if r.on_update is not None:
                try:  # a caller's callback must never take the engine down
                    r.on_update(r)
                except Exception:
                    logger.exception("update callback of request %d failed", r.rid)
            if r.finished:
                self._live.pop(r.rid, None)

    def _fail_all_on_shutdown(self) -> None:
        err = EngineClosedError("the engine was shut down")
        with self._submit_lock:  # after this, _submit sees _closed and raises
            while not self._inbox.empty():
                req = self._inbox.get_nowait()
                self._live[req.rid] = req
        for r in list(self._live.values()):
            r.error = err
            r.finish_reason = {"type": "abort", "message": str(err)}
            r.status = ReqStatus.FINISHED
        self._notify(list(self._live.values()))

    # ---- submission --------------------------------------------------------------------------
    def _make_reqs(self, prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
                   top_logprobs_num) -> tuple[list[Req], bool]:
        if self._closed:
            raise EngineClosedError("the engine was shut down")
        if (prompt is None) == (input_ids is None):
            raise InvalidRequestError("give exactly one of prompt or input_ids")
        single = isinstance(prompt, str) or (input_ids is not None and
                                             (not input_ids or isinstance(input_ids[0], int)))
        prompts = [prompt] if isinstance(prompt, str) else prompt
        ids_list = [input_ids] if single and input_ids is not None else input_ids
        if prompts is not None:
            if not all(isinstance(p, str) for p in prompts):
                raise InvalidRequestError("prompt must be a string or a list of strings")
            ids_list = [self.tokenizer.encode(p) for p in prompts]
        n = len(ids_list)
        sps = sampling_params if isinstance(sampling_params, list) else [sampling_params] * n
        if len(sps) != n:
            raise InvalidRequestError(f"{len(sps)} sampling_params for {n} prompts")
        lsl = logprob_start_len if isinstance(logprob_start_len, list) else [logprob_start_len] * n
        reqs = []
        for ids, sp, start in zip(ids_list, sps, lsl):
            params = SamplingParams.from_dict(sp)
            for i in range(params.n):
                p_i = params if params.seed is None or i == 0 else \
                    dataclasses.replace(params, seed=params.seed + 7919 * i)  # distinct samples
                reqs.append(self._make_req(list(ids), p_i, return_logprob, start,
                                           top_logprobs_num))
        return reqs, single and reqs[0].params.n == 1

    def _make_req(self, ids, params, return_logprob, start, top_logprobs_num) -> Req:
        ctx = self.core.runner.context_length
        if not ids:
            raise InvalidRequestError("the prompt is empty (0 tokens)")
        if any(not isinstance(t, int) or not 0 <= t < self.tokenizer.vocab_size for t in ids):
            raise InvalidRequestError(f"input_ids must be token ids in [0, "
                                      f"{self.tokenizer.vocab_size})")
        if len(ids) >= ctx:
            raise InvalidRequestError(f"the prompt has {len(ids)} tokens, which does not fit "
                                      f"the context length ({ctx}) with room to generate")
        pool = self.core.runner.kv_pool.size
        if len(ids) + params.max_new_tokens > pool and len(ids) + 1 > pool:
            raise InvalidRequestError(f"the prompt ({len(ids)} tokens) does not fit the KV pool "
                                      f"(max_total_tokens={pool})")
        if min(len(ids) + params.max_new_tokens, ctx) > pool:
            raise InvalidRequestError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds "
                f"the KV pool (max_total_tokens={pool})")
        if start is None:
            start = -1 if not return_logprob else len(ids) - 1
        if start < 0 and return_logprob:
            start = max(len(ids) + start, 0) if start != -1 else len(ids) - 1
        if top_logprobs_num < 0:
            raise InvalidRequestError("top_logprobs_num must be >= 0")
        req = Req(ids, params, return_logprob=return_logprob, logprob_start_len=start,
                  top_logprobs_num=top_logprobs_num)
        if return_logprob and start == 0:  # the first token has no context to be scored in
            req.input_token_logprobs.append((None, ids[0], None))
            if top_logprobs_num:
                req.input_top_logprobs.append(None)
        if params.constraint is not None:
            req.constraint = self._build_constraint(params)
            req.fsm_state = req.constraint.initial_state
        return req

    def _build_constraint(self, params: SamplingParams):
        from .constrained import build_constraint

        return build_constraint(self.tokenizer, **params.constraint)

    def _submit(self, reqs: list[Req]) -> None:
        with self._submit_lock:
            if self._closed:
                raise EngineClosedError("the engine was shut down")
            for r in reqs:
                self._inbox.put(r)
        self._wake.set()

    @staticmethod
    def _check(req: Req) -> dict:
        if req.error is not None:
            if isinstance(req.error, SglcError):
                raise req.error
            raise RuntimeError(f"request failed in the engine: {req.error}") from req.error
        return make_result(req)

    # ---- public API --------------------------------------------------------------------------
    def generate(self, prompt=None, sampling_params: dict | list | None = None,
                 input_ids=None, return_logprob: bool = False, logprob_start_len=None,
                 top_logprobs_num: int = 0, stream: bool = False):
        """Generate for one prompt (returns a dict) or a list (returns a list of dicts).
        With stream=True (single prompt) returns an iterator of dicts whose `text` is the
        newly generated piece; the last one carries meta_info with finish_reason."""
        reqs, single = self._make_reqs(prompt, sampling_params, input_ids, return_logprob,
                                       logprob_start_len, top_logprobs_num)
        if stream:
            if len(reqs) != 1:
                raise InvalidRequestError("stream=True takes a single prompt with n=1")
            return self._stream(reqs[0])
        waiters = []
        for r in reqs:
            w = _Waiter(stream=False)
            r.on_update = w
            waiters.append(w)
        self._submit(reqs)
        results = []
        for r, w in zip(reqs, waiters):
            while w.q.get()[0] != "done":
                pass
            results.append(r)
        out = [self._check(r) for r in results]
        return out[0] if single else out

    def _stream(self, req: Req) -> Iterator[dict]:
        w = _Waiter(stream=True)
        req.on_update = w
        self._submit([req])
        try:
            while True:
                kind, text, r = w.q.get()
                piece = text[w.sent:]
                w.sent = max(w.sent, len(text))
                if kind == "done":
                    result = self._check(r)
                    result["text"] = piece
                    yield result
                    return
                if piece:
                    yield {"text": piece, "meta_info": progress_meta(r)}
        finally:
            if not req.finished:
                self.abort(req)  # the caller closed the stream early

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None,
                             return_logprob: bool = False, logprob_start_len=None,
                             top_logprobs_num: int = 0, stream: bool = False) -> Any:
        """Awaitable `generate` (no thread is held while waiting, so thousands of requests can
        be in flight); with stream=True an async iterator of chunks."""
        reqs, single = self._make_reqs(prompt, sampling_params, input_ids, return_logprob,
                                       logprob_start_len, top_logprobs_num)
        loop = asyncio.get_running_loop()
        queues = []
        for r in reqs:
            q: asyncio.Queue = asyncio.Queue()
            r.on_update = (lambda req, q=q: loop.call_soon_threadsafe(
                q.put_nowait, ("done" if req.finished else "chunk", req.text, req)))
            queues.append(q)
        if stream:
            if len(reqs) != 1:
                raise InvalidRequestError("stream=True takes a single prompt with n=1")
            self._submit(reqs)
            return self._async_stream(queues[0])
        self._submit(reqs)
        results = []
        try:
            for q in queues:
                while True:
                    kind, _, r = await q.get()
                    if kind == "done":
                        break
                results.append(self._check(r))
        except asyncio.CancelledError:
            for r in reqs:
                self.abort(r)
            raise
        return results[0] if single else results

    async def _async_stream(self, q: asyncio.Queue):
        sent, req = 0, None
        try:
            while True:
                kind, text, req = await q.get()
                if kind == "chunk":
                    if len(text) > sent:
                        yield {"text": text[sent:], "meta_info": progress_meta(req)}
                        sent = len(text)
                    continue
                result = self._check(req)
                result["text"] = text[sent:]
                yield result
                return
        finally:
            if req is not None and not req.finished:
                self.abort(req)  # cancelled, or the consumer stopped iterating

    def abort(self, req: Req) -> None:
        """Stop a request the caller no longer waits for; its resources are freed."""
        self._aborts.put(req)
        self._wake.set()

    def flush_cache(self) -> bool:
        """Drop the radix cache's contents; only done when no request is in flight (returns
        whether it was)."""
        done, result = threading.Event(), []
        self._flushes.put((done, result))
        self._wake.set()
        done.wait(timeout=60)
        return bool(result and result[0])

    def shutdown(self) -> None:
        """Stop the engine thread; waiting callers get EngineClosedError."""
        with self._submit_lock:
            self._closed = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
