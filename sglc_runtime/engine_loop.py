"""The engine loop: one thread owns an `EngineCore` and steps it while other threads hand it
requests, aborts and control calls. It runs on a thread of the caller's process
(`engine_in_process=True`) or as the main thread of the engine's own process
(`engine_process.py`); either way `on_updates(reqs)` gets the requests with new output after
every step, on the loop thread, between steps (so each Req's fields are a consistent snapshot)."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from .engine_core import EngineCore
from .errors import EngineClosedError, RequestAbortedError
from .request import Req, ReqStatus

logger = logging.getLogger(__name__)


def control(core: EngineCore, name: str) -> Any:
    """The control calls an Engine can make between steps, by name."""
    sched = core.scheduler
    if name == "flush_cache":  # only when nothing is in flight
        idle = not sched.has_work()
        if idle:
            sched.cache.reset()
        return idle
    if name == "check_invariants":
        sched.check_invariants()
        return True
    if name == "stats":
        s = core.stats
        return {"num_running": len(sched.running), "num_waiting": len(sched.waiting),
                "num_retractions": sched.num_retractions, "num_steps": s.num_steps,
                "num_prefill_tokens": s.num_prefill_tokens,
                "num_prompt_tokens": sched.num_prompt_tokens,
                "num_cached_prompt_tokens": sched.num_cached_prompt_tokens,
                "num_decode_tokens": s.num_decode_tokens, "busy_s": s.busy_s,
                "cached_tokens_in_tree": sched.cache.total_size(),
                "num_free_slots": sched.kv_pool.num_free()}
    raise ValueError(f"unknown engine control call {name!r}")


class EngineLoop:
    """Steps `core` until `stop()`; thread-safe `submit`, `abort` and `call`."""

    def __init__(self, core: EngineCore, on_updates: Callable[[list[Req]], None],
                 check_invariants: bool = False):
        self.core = core
        self.on_updates = on_updates
        self.check_invariants = check_invariants
        self.closed = False
        self.live: dict[int, Req] = {}
        self._inbox: queue.Queue = queue.Queue()
        self._aborts: queue.Queue = queue.Queue()
        self._calls: queue.Queue = queue.Queue()  # (name, reply(value, error))
        self._wake = threading.Event()
        self._submit_lock = threading.Lock()  # orders submissions against the shutdown drain

    # ---- any thread ---------------------------------------------------------------------------
    def submit(self, reqs: list[Req]) -> None:
        """Queue requests (a Req with `error` set is failed at once, as a batch-mate would be)."""
        with self._submit_lock:
            if self.closed:
                raise EngineClosedError("the engine was shut down")
            for r in reqs:
                self._inbox.put(r)
        self._wake.set()

    def abort(self, rid: int) -> None:
        self._aborts.put(rid)
        self._wake.set()

    def call(self, name: str, reply: Callable[[Any, BaseException | None], None]) -> None:
        """Run control call `name` between steps; `reply(value, error)` gets its outcome."""
        self._calls.put((name, reply))
        self._wake.set()

    def stop(self) -> None:
        with self._submit_lock:
            self.closed = True
        self._wake.set()

    # ---- the loop thread ----------------------------------------------------------------------
    def run(self) -> None:
        core = self.core
        if core.cfg.device == "cpu":
            # flush-to-zero is per thread (MXCSR): denormals in this thread's matmuls would
            # otherwise run ~2x slower end to end
            torch.set_flush_denormal(True)
        while not self.closed:
            updated = self._intake()
            if core.scheduler.has_work():
                updated += self._step()
            self._deliver(updated)
            if not core.scheduler.has_work():
                self._wake.wait(0.05)
                self._wake.clear()
        self._fail_all(EngineClosedError("the engine was shut down"))

    def _intake(self) -> list[Req]:
        """New requests, aborts and control calls; returns the requests that ended here."""
        ended = []
        while True:
            try:
                req = self._inbox.get_nowait()
            except queue.Empty:
                break
            self.live[req.rid] = req
            if req.error is not None:
                req.finish_reason = {"type": "abort", "message": str(req.error)}
                req.status = ReqStatus.FINISHED
                ended.append(req)
            else:
                self.core.add_request(req)
        while not self._aborts.empty():
            r = self.live.get(self._aborts.get_nowait())
            if r is not None and not r.finished:
                self.core.fail(r, RequestAbortedError(f"request {r.rid} was aborted"))
                ended.append(r)
        while not self._calls.empty():
            name, reply = self._calls.get_nowait()
            try:
                value, err = control(self.core, name), None
            except Exception as e:  # noqa: BLE001 - handed to the caller
                value, err = None, e
            reply(value, err)
        return ended

    def _step(self) -> list[Req]:
        start = time.perf_counter()
        try:
            updated = self.core.step()
            self.core.stats.busy_s += time.perf_counter() - start
            if self.check_invariants:
                self.core.scheduler.check_invariants()
            return updated
        except Exception as e:  # scheduling bug: fail everyone rather than hang them
            logger.exception("engine loop failed")
            updated = list(self.live.values())
            for r in updated:
                self.core.fail(r, e)
            return updated

    def _deliver(self, updated: list[Req]) -> None:
        if updated:
            try:  # a caller's callback must never take the engine down
                self.on_updates(updated)
            except Exception:
                logger.exception("delivering updates of %d requests failed", len(updated))
        for r in updated:
            if r.finished:
                self.live.pop(r.rid, None)

    def _fail_all(self, err: BaseException) -> None:
        with self._submit_lock:  # after this, submit sees `closed` and raises
            while not self._inbox.empty():
                req = self._inbox.get_nowait()
                self.live[req.rid] = req
        for r in list(self.live.values()):
            r.error = err
            r.finish_reason = {"type": "abort", "message": str(err)}
            r.status = ReqStatus.FINISHED
        while not self._calls.empty():
            _, reply = self._calls.get_nowait()
            reply(None, err)
        self._deliver(list(self.live.values()))


class InProcessDriver:
    """The loop on a thread of the caller's process (`engine_in_process=True`): the lowest
    latency, but the caller's own torch work shares the process's OpenMP state with it."""

    alive = True

    def __init__(self, config):
        self.pid = os.getpid()
        ready, failed = threading.Event(), []
        self._thread = threading.Thread(target=self._run, args=(config, ready, failed),
                                        name="sglc-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        runner = self.core.runner
        self.tokenizer = self.core.tokenizer
        self.context_length = runner.context_length
        self.max_total_tokens = runner.kv_pool.size
        self.eos_ids = tuple(self.core.eos_ids)

    def _run(self, config, ready: threading.Event, failed: list) -> None:
        """The loop thread builds the model and runs every step itself: the CPU kernels'
        thread teams (OpenMP) run measurably faster from the thread that set them up."""
        try:
            self.core = EngineCore(config)
            self.loop = EngineLoop(self.core, self._notify, config.check_invariants)
        except BaseException as e:  # noqa: BLE001 - raised in the constructor's caller
            failed.append(e)
            ready.set()
            return
        ready.set()
        self.loop.run()

    @staticmethod
    def _notify(reqs: list[Req]) -> None:
        for r in reqs:
            if r.on_update is not None:
                try:  # a caller's callback must never take the engine down
                    r.on_update(r)
                except Exception:
                    logger.exception("update callback of request %d failed", r.rid)

    def submit(self, reqs: list[Req]) -> None:
        self.loop.submit(reqs)

    def abort(self, req: Req) -> None:
        self.loop.abort(req.rid)

    def call(self, name: str, timeout: float = 60.0) -> Any:
        done, box = threading.Event(), []
        self.loop.call(name, lambda v, e: (box.extend([v, e]), done.set()))
        if not done.wait(timeout):
            raise TimeoutError(f"the engine did not answer {name!r} in {timeout:.0f} s")
        if box[1] is not None:
            raise box[1]
        return box[0]

    def shutdown(self, timeout: float = 30.0) -> None:
        self.loop.stop()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=timeout)
