"""The offline engine API (SGLang's `Engine`): the engine loop runs in its own process (or a
thread, or N processes behind a router) while any number of callers submit requests and wait
for, stream, or await their results."""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import importlib.resources
import logging
import queue
from collections.abc import Iterator
from typing import Any

from .config import EngineConfig
from .continuation import Continuation, parse_program
from .errors import EngineClosedError, EngineDiedError, InvalidRequestError, SglcError
from .outputs import make_result, progress_meta
from .request import Req, new_request
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


def engine_arguments(kwargs: dict) -> dict:
    """The EngineConfig fields among `kwargs`. SGLang server arguments with no meaning here
    (GPU sharding, memory fractions, ...) are accepted and logged; unknown names are an error
    that lists the close matches."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    sglang = set(importlib.resources.files(__package__).joinpath(
        "sglang_server_args.txt").read_text().split())
    ignored = sorted(k for k in kwargs if k not in known and k in sglang)
    unknown = sorted(k for k in kwargs if k not in known and k not in sglang)
    if unknown:
        hints = {k: difflib.get_close_matches(k, sorted(known | sglang), n=3) for k in unknown}
        raise InvalidRequestError("unknown engine argument(s): " + "; ".join(
            f"{k!r}" + (f" (did you mean {', '.join(map(repr, h))}?)" if h else "")
            for k, h in hints.items()))
    if ignored:
        logger.info("ignoring SGLang server argument(s) with no meaning here: %s",
                    ", ".join(f"{k}={kwargs[k]!r}" for k in ignored))
    return {k: v for k, v in kwargs.items() if k in known}


class Engine:
    """`Engine(model_path=None, dtype="auto", max_total_tokens=None, disable_radix_cache=False,
    schedule_policy="lpm", chunked_prefill_size=2048, ...)`; see EngineConfig for all knobs.

    The model and scheduler run in a process of their own (`engine_process.py`) unless
    `engine_in_process=True` (a thread of this process); `dp_size=N` runs N such processes
    behind a cache-aware router (`router.py`, `router_policy`)."""

    def __init__(self, model_path: str | None = None, log_level: str | None = None,
                 engine_in_process: bool = False, dp_size: int = 1,
                 router_policy: str = "cache_aware", **kwargs):
        if log_level:
            logging.getLogger("sglc_runtime").setLevel(log_level.upper())
        self.config = EngineConfig(model_path=model_path, **engine_arguments(kwargs))
        if not isinstance(dp_size, int) or dp_size < 1:
            raise InvalidRequestError(f"dp_size={dp_size!r}: must be a positive integer")
        if dp_size > 1 and engine_in_process:
            raise InvalidRequestError("dp_size > 1 runs engine processes; it cannot be "
                                      "combined with engine_in_process=True")
        self.engine_in_process = engine_in_process
        self._closed = False
        if engine_in_process:
            from .engine_loop import InProcessDriver

            self._driver = InProcessDriver(self.config)
            self.core = self._driver.core  # this process holds the model: its internals too
        elif dp_size > 1:
            from .router import DataParallelDriver

            self._driver = DataParallelDriver(self.config, dp_size, router_policy)
        else:
            from .engine_process import ProcessDriver

            self._driver = ProcessDriver(self.config)
        self.tokenizer = self._driver.tokenizer
        self.context_length = self._driver.context_length
        self.max_total_tokens = self._driver.max_total_tokens
        self.eos_ids = self._driver.eos_ids
        self.pid = self._driver.pid  # the engine's process (a list with dp_size > 1)

    def stats(self) -> dict:
        """Scheduler and cache counters (summed over replicas, each also under "replicas")."""
        return self._driver.call("stats")

    def check_invariants(self) -> None:
        """Verify the KV accounting now (between steps); raises AssertionError if it is off."""
        self._driver.call("check_invariants")

    # ---- submission --------------------------------------------------------------------------
    def _make_reqs(self, prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
                   top_logprobs_num) -> tuple[list[Req], bool]:
        if self._closed:
            raise EngineClosedError("the engine was shut down")
        if not self._driver.alive:
            raise EngineDiedError("the engine process has died; start a new Engine")
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
        ctx = self.context_length
        if not ids:
            raise InvalidRequestError("the prompt is empty (0 tokens)")
        if any(not isinstance(t, int) or not 0 <= t < self.tokenizer.vocab_size for t in ids):
            raise InvalidRequestError(f"input_ids must be token ids in [0, "
                                      f"{self.tokenizer.vocab_size})")
        if len(ids) >= ctx:
            raise InvalidRequestError(f"the prompt has {len(ids)} tokens, which does not fit "
                                      f"the context length ({ctx}) with room to generate")
        pool = self.max_total_tokens
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
        req = new_request(ids, params, return_logprob, start, top_logprobs_num)
        if params.constraint is not None and self.engine_in_process:
            # in-process: built on the caller's thread (the engine process builds its own)
            req.constraint = self._build_constraint(params)
            req.fsm_state = req.constraint.initial_state
        return req

    def _make_program_req(self, prompt, program) -> tuple[Req, list[str]]:
        """One request for a whole program segment (continuation.py); also the text after
        each gen."""
        if self._closed:
            raise EngineClosedError("the engine was shut down")
        text, gens, after = parse_program(prompt, program)
        if not text:
            raise InvalidRequestError("the prompt is empty (0 tokens)")
        req = self._make_req(self.tokenizer.encode(text), gens[0], False, None, 0)
        req.continuation = Continuation(text, list(zip(after, gens[1:])))
        if self.engine_in_process:  # (the engine process builds its own)
            req.continuation.constraints = [
                None if p.constraint is None else self._build_constraint(p) for p in gens[1:]]
        return req, after

    @staticmethod
    def _program_result(result: dict, after: list[str]) -> dict:
        gens = result["gens"]
        return {"text": "".join(g["text"] + t for g, t in zip(gens, after)), "gens": gens}

    def _build_constraint(self, params: SamplingParams):
        from .constrained import build_constraint

        return build_constraint(self.tokenizer, **params.constraint)

    def _submit(self, reqs: list[Req]) -> None:
        if self._closed:
            raise EngineClosedError("the engine was shut down")
        self._driver.submit(reqs)

    @staticmethod
    def _check(req: Req) -> dict:
        if req.error is not None:
            if isinstance(req.error, SglcError):
                raise req.error
            raise RuntimeError(f"request failed in the engine: {req.error}") from req.error
        return req.result if req.result is not None else make_result(req)

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

    def generate_program(self, prompt: str, program: list) -> dict:
        """Run a straight-line program segment as ONE request that continues in place:
        `program` is a list of steps, `{"text": str}` or `{"gen": sampling_params}`. Each gen
        sees exactly the prompt a gen-by-gen run would send (the text so far, re-tokenized), but
        the request never leaves the engine between gens. Returns {"text": everything after
        the prompt, "gens": one result dict per gen, as `generate` returns}."""
        req, after = self._make_program_req(prompt, program)
        w = _Waiter(stream=False)
        req.on_update = w
        self._submit([req])
        while w.q.get()[0] != "done":
            pass
        return self._program_result(self._check(req), after)

    async def async_generate_program(self, prompt: str, program: list) -> dict:
        """Awaitable `generate_program`."""
        req, after = self._make_program_req(prompt, program)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_update(r: Req) -> None:  # engine thread
            if r.finished:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        req.on_update = on_update
        self._submit([req])
        try:
            await done
        except asyncio.CancelledError:
            self.abort(req)
            raise
        return self._program_result(self._check(req), after)

    def abort(self, req: Req) -> None:
        """Stop a request the caller no longer waits for; its resources are freed."""
        self._driver.abort(req)

    def flush_cache(self) -> bool:
        """Drop the radix cache's contents; only done when no request is in flight (returns
        whether it was)."""
        return bool(self._driver.call("flush_cache"))

    def shutdown(self) -> None:
        """Stop the engine (and its processes); waiting callers get EngineClosedError."""
        if self._closed:
            return
        self._closed = True
        self._driver.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
