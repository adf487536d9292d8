"""`SglFunction`: what `@sgl.function` makes of a Python function; runs it eagerly."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .primitives import ProgramError, SglSamplingParams


def _defaults(max_new_tokens, min_new_tokens, n, stop, stop_token_ids, stop_regex, temperature,
              top_p, top_k, min_p, frequency_penalty, presence_penalty, repetition_penalty,
              ignore_eos, return_logprob, logprob_start_len, top_logprobs_num
              ) -> SglSamplingParams:
    return SglSamplingParams(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, n=n, stop=stop,
        stop_token_ids=stop_token_ids, stop_regex=stop_regex, temperature=temperature,
        top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, repetition_penalty=repetition_penalty,
        ignore_eos=ignore_eos, return_logprob=return_logprob,
        logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num)


class Trace(str):
    """What `SglFunction.trace` returns: the constant prefix text, and SGLang's `last_node`."""

    def __new__(cls, prefix: str, program: SglFunction):
        out = super().__new__(cls, prefix)
        out.last_node = _TracedGraph(program)
        return out


class _TracedGraph:
    """A traced program's last node, as SGLang's tracer hands it out: `print_graph_dfs()`
    prints the whole program, here as its compiled graph's text form."""

    def __init__(self, program: SglFunction):
        self.program = program

    def print_graph_dfs(self) -> str:
        from ..compiler import compile as compile_program

        compiled = compile_program(self.program)
        if compiled.ir is None:
            return f"(runs eagerly: {compiled.compile_error})"
        return compiled.ir


class SglFunction:
    """A program: `func(s, *args)` appends to the state `s`. `run` executes it once,
    `run_batch` many times concurrently; the sampling arguments of both are the defaults of
    every `gen` in the program (a gen's own arguments win)."""

    def __init__(self, func: Callable, num_api_spec_tokens: int | None = None,
                 bind_arguments: dict | None = None):
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                                params[0].POSITIONAL_OR_KEYWORD):
            raise ProgramError(f"@function {func.__qualname__}: the first parameter must be the "
                               "program state `s`")
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        self.arg_names = [p.name for p in params[1:]]
        self.arg_defaults = [p.default for p in params[1:] if p.default is not p.empty]
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs) -> SglFunction:
        """A copy with some arguments fixed."""
        unknown = [k for k in kwargs if k not in self.arg_names]
        if unknown:
            raise ProgramError(f"{self.__name__}.bind: no parameter(s) {', '.join(unknown)}; "
                               f"it takes {', '.join(self.arg_names) or 'none'}")
        return SglFunction(self.func, self.num_api_spec_tokens,
                           {**self.bind_arguments, **kwargs})

    def run(self, *args, max_new_tokens: int = 128, min_new_tokens: int | None = None,
            n: int | None = None, stop: str | list[str] | None = None,
            stop_token_ids: list[int] | None = None, stop_regex: str | list[str] | None = None,
            temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1,
            min_p: float = 0.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
            repetition_penalty: float | None = None, ignore_eos: bool = False,
            return_logprob: bool | None = None, logprob_start_len: int | None = None,
            top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None,
            stream: bool = False, backend=None, use_thread: bool = True, **kwargs):
        """Run the program once; returns its `ProgramState`. Raises the program's error.
        `use_thread=False` runs each appended expression on the calling thread. A program
        with a parameter named `n` gets `n=` as its argument (else it is the sample count)."""
        from .api import resolve_backend

        if n is not None and "n" in self.arg_names:
            kwargs["n"], n = n, None

        defaults = _defaults(max_new_tokens, min_new_tokens, n, stop, stop_token_ids,
                             stop_regex, temperature, top_p, top_k, min_p, frequency_penalty,
                             presence_penalty, repetition_penalty, ignore_eos, return_logprob,
                             logprob_start_len, top_logprobs_num)
        return self._run(resolve_backend(backend), args, kwargs, defaults, stream, use_thread)

    def run_batch(self, batch_kwargs, *, max_new_tokens: int = 128,
                  min_new_tokens: int | None = None, n: int | None = None,
                  stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
                  stop_regex: str | list[str] | None = None, temperature: float = 1.0,
                  top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
                  frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                  repetition_penalty: float | None = None, ignore_eos: bool = False,
                  return_logprob: bool | None = None, logprob_start_len: int | None = None,
                  top_logprobs_num: int | None = None,
                  return_text_in_logprobs: bool | None = None, backend=None,
                  num_threads: int | str = "auto", progress_bar: bool = False,
                  generator_style: bool = False):
        """Run the program once per argument dict (or positional tuple), concurrently; returns
        the states in order (`generator_style=True`: yields each, in order, once it is done).
        A failed program's error is on its state (`state.error()`)."""
        from .api import resolve_backend

        if not isinstance(batch_kwargs, (list, tuple)):
            raise ProgramError("run_batch takes a list of argument dicts")
        batch_kwargs = [self._as_kwargs(a) for a in batch_kwargs]
        defaults = _defaults(max_new_tokens, min_new_tokens, n, stop, stop_token_ids,
                             stop_regex, temperature, top_p, top_k, min_p, frequency_penalty,
                             presence_penalty, repetition_penalty, ignore_eos, return_logprob,
                             logprob_start_len, top_logprobs_num)
        if not batch_kwargs:
            return iter(()) if generator_style else []
        return self._run_batch(resolve_backend(backend), batch_kwargs, defaults, num_threads,
                               progress_bar, generator_style)

    # ---- execution hooks (a compiled program overrides these two) -----------------------------
    def _run(self, backend, args: tuple, kwargs: dict, defaults: SglSamplingParams,
             stream: bool, use_thread: bool):
        from .runner import run_program

        return run_program(self, backend, args, kwargs, defaults, stream, use_thread)

    def _run_batch(self, backend, batch_kwargs: list[dict], defaults: SglSamplingParams,
                   num_threads, progress_bar: bool, generator_style: bool):
        from .runner import run_program_batch

        return run_program_batch(self, backend, batch_kwargs, defaults, num_threads,
                                 progress_bar, generator_style)

    def trace(self, *, backend=None, **kwargs) -> Trace:
        """The text the program appends, with these arguments, before its first model call
        (SGLang's `trace`; what `run_batch` and `cache` commit to the prefix cache), as a str
        whose `last_node.print_graph_dfs()` prints the program's compiled graph."""
        from .api import resolve_backend
        from .tracer import constant_prefix

        free = tuple(n for n in self.arg_names if n not in kwargs)
        return Trace(constant_prefix(self, resolve_backend(backend), [kwargs],
                                     SglSamplingParams(), free), self)

    def compile(self, *, backend=None):
        """SGLang's spelling (up to 0.5.5) of compiling a program: `sgl.compile(self)`."""
        from ..compiler import compile as compile_program

        return compile_program(self, backend=backend)

    def cache(self, backend=None, **kwargs) -> str:
        """Compute the program's constant prefix once on the backend (SGLang's `cache`), so
        later runs find it in the prefix cache; returns it."""
        from .api import resolve_backend

        backend = resolve_backend(backend)
        prefix = self.trace(backend=backend, **kwargs)
        if prefix:
            backend.cache_prefix(prefix)
        return prefix

    def _as_kwargs(self, args) -> dict:
        if isinstance(args, dict):
            return args
        if not isinstance(args, (list, tuple)):
            raise ProgramError(f"run_batch: each item must be a dict or a tuple of arguments, "
                               f"got {type(args).__name__}")
        num_required = len(self.arg_names) - len(self.arg_defaults)
        if not num_required <= len(args) <= len(self.arg_names):
            raise ProgramError(f"run_batch: {len(args)} positional arguments for "
                               f"{self.__name__}({', '.join(self.arg_names)})")
        return dict(zip(self.arg_names, args))

    def __call__(self, *args, **kwargs):
        """`other(s, ...)` inside a program runs other's body on the caller's state (a
        sub-program, as the compiler inlines it); `other(x=...)` alone is `other.run(...)`."""
        from .state import ProgramState

        if args and isinstance(args[0], ProgramState):
            return self.func(*args, **{**self.bind_arguments, **kwargs})
        return self.run(*args, **kwargs)

    def __repr__(self) -> str:
        return f"SglFunction({self.__name__})"
