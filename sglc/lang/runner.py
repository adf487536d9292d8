"""Running whole programs eagerly: `run_program` (one, optionally streamed) and
`run_program_batch` (many at once, their requests batching in the engine)."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .interpreter import StreamExecutor
from .primitives import SglSamplingParams

logger = logging.getLogger(__name__)


def make_state(program, backend, kwargs: dict, default_params: SglSamplingParams,
               stream: bool = False, use_thread: bool = True):
    from .state import ProgramState

    exe = StreamExecutor(backend, kwargs, default_params, stream=stream,
                         num_api_spec_tokens=program.num_api_spec_tokens, use_thread=use_thread)
    return ProgramState(exe)


def execute(state, program, args: tuple, kwargs: dict) -> None:
    """Run the program's function on `state` to the end; raise its first error."""
    exe = state.stream_executor
    try:
        state.ret_value = program.func(state, *args, **kwargs)
    except BaseException as e:
        exe.fail(e)  # the worker skips what is still queued
        raise
    finally:
        exe.end()
        exe.sync()
    if exe.error_ is not None:
        raise exe.error_


def run_program(program, backend, args: tuple, kwargs: dict,
                default_params: SglSamplingParams, stream: bool, use_thread: bool = True):
    """Run one program; with `stream` it runs on a thread and the state is returned at once
    (errors then surface from `text_iter` and `state.error()`)."""
    kwargs = {**program.bind_arguments, **kwargs}
    state = make_state(program, backend, kwargs, default_params, stream, use_thread)
    if not stream:
        execute(state, program, args, kwargs)
        return state

    def target():
        try:
            execute(state, program, args, kwargs)
        except BaseException as e:  # noqa: BLE001 - recorded on the state, raised by text_iter
            logger.debug("streamed program %s failed: %r", program, e)

    thread = threading.Thread(target=target, daemon=True, name="sglc-stream-program")
    state.stream_executor.program_thread = thread
    thread.start()
    return state


def run_program_batch(program, backend, batch_kwargs: list[dict],
                      default_params: SglSamplingParams, num_threads, progress_bar: bool,
                      generator_style: bool = False):
    """Run every program concurrently (their requests batch in the engine); a program that
    fails keeps its error on its own state (`state.error()`) and the others finish. With
    `generator_style` a generator yields the states in order as they complete."""
    from .tracer import cache_program_prefix

    if len(batch_kwargs) > 1:
        cache_program_prefix(program, backend, batch_kwargs, default_params)
    if num_threads == "auto":
        num_threads = max(96, (os.cpu_count() or 1) * 16)
    num_threads = max(1, min(int(num_threads), len(batch_kwargs)))

    def one(kwargs: dict):
        kwargs = {**program.bind_arguments, **kwargs}
        state = make_state(program, backend, kwargs, default_params)
        try:
            execute(state, program, (), kwargs)
        except Exception as e:  # noqa: BLE001 - reported on the state, as SGLang does
            logger.debug("program %s failed in run_batch: %r", program, e)
        return state

    def states():
        pbar = None
        if progress_bar:
            import tqdm

            pbar = tqdm.tqdm(total=len(batch_kwargs))
        with ThreadPoolExecutor(num_threads) as pool:
            futures = [pool.submit(one, kw) for kw in batch_kwargs]
            if pbar is not None:
                for f in futures:
                    f.add_done_callback(lambda _: pbar.update())
            for f in futures:
                yield f.result()
        if pbar is not None:
            pbar.close()

    return states() if generator_style else list(states())
