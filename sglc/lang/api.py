"""The public language API (`sgl.function`, `sgl.gen`, `sgl.select`, roles, backends), named
and behaving as in SGLang's frontend."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .choices import ChoicesSamplingMethod, token_length_normalized
from .function import SglFunction
from .primitives import (
    SglExprList,
    SglGen,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    as_expr,
)

_default_backend = None
_lazy_runtime = None
_lock = threading.Lock()


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None):
    """`@function` or `@function(num_api_spec_tokens=N)`: make a program of `func(s, ...)`."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)


# ---- backends ---------------------------------------------------------------------------------
def set_default_backend(backend) -> None:
    """Programs run on `backend` unless `run(backend=...)` says otherwise."""
    global _default_backend
    _default_backend = backend


def get_default_backend():
    return _default_backend


def resolve_backend(backend=None):
    """`backend`, else the default one, else one shared `Runtime()` on the default model,
    started on first use."""
    global _lazy_runtime
    if backend is not None:
        return backend
    if _default_backend is not None:
        return _default_backend
    with _lock:
        if _lazy_runtime is None:
            from ..backend.runtime import Runtime

            _lazy_runtime = Runtime()
        return _lazy_runtime


def flush_cache(backend=None) -> bool:
    return resolve_backend(backend).flush_cache()


# ---- generation -------------------------------------------------------------------------------
def gen(name: str | None = None, max_tokens: int | None = None,
        min_tokens: int | None = None, n: int | None = None,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None, stop_regex: str | list[str] | None = None,
        temperature: float | None = None,
        top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
        frequency_penalty: float | None = None, presence_penalty: float | None = None,
        ignore_eos: bool | None = None, return_logprob: bool | None = None,
        logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None,
        dtype: type | str | None = None, choices: list[str] | None = None,
        choices_method: ChoicesSamplingMethod | None = None, regex: str | None = None,
        json_schema: str | dict | None = None, grammar: str | None = None,
        repetition_penalty: float | None = None):
    """Generate text into variable `name`. Unset arguments take the program's defaults (from
    `run`: max_new_tokens=128, temperature=1.0, ...); the arguments come in SGLang's order.
    `dtype`, `regex`, `json_schema` and `grammar` (a context-free grammar in Lark syntax, or
    GBNF/EBNF as llama.cpp takes it) constrain the output; `choices` makes it a `select`;
    `n` > 1 samples n continuations (the variable holds the list of them, the text continues
    with the first); `stop_regex` ends at a match. `grammar` and `repetition_penalty` (sglc's
    extensions) come after SGLang's arguments. Logprob entries always carry their token's text,
    so `return_text_in_logprobs` is accepted for SGLang programs and ignored."""
    if choices:
        return SglSelect(name, choices, 0.0 if temperature is None else temperature,
                         choices_method or token_length_normalized)
    return SglGen(name, SglSamplingParams(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop,
        stop_token_ids=stop_token_ids, stop_regex=stop_regex, temperature=temperature,
        top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, repetition_penalty=repetition_penalty,
        ignore_eos=ignore_eos, return_logprob=return_logprob,
        logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num, dtype=dtype,
        regex=regex, json_schema=json_schema, grammar=grammar))


def gen_int(name: str | None = None, max_tokens: int | None = None, **kwargs):
    """`gen` constrained to an integer."""
    return gen(name, max_tokens, dtype=int, **kwargs)


def gen_string(name: str | None = None, max_tokens: int | None = None, **kwargs):
    """`gen` constrained to a double-quoted string."""
    return gen(name, max_tokens, dtype=str, **kwargs)


def select(name: str | None = None, choices: list[str] | None = None,
           temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized):
    """Append whichever of `choices` the model finds most likely; store it as `name`."""
    return SglSelect(name, choices, temperature, choices_method)


# ---- roles ------------------------------------------------------------------------------------
def _role_common(role: str, expr=None) -> SglExprList:
    if expr is None:
        return SglExprList([SglRoleBegin(role), SglRoleEnd(role)])
    return SglExprList([SglRoleBegin(role), as_expr(expr), SglRoleEnd(role)])


def system(expr=None) -> SglExprList:
    return _role_common("system", expr)


def user(expr=None) -> SglExprList:
    return _role_common("user", expr)


def assistant(expr=None) -> SglExprList:
    return _role_common("assistant", expr)


def system_begin() -> SglRoleBegin:
    return SglRoleBegin("system")


def system_end() -> SglRoleEnd:
    return SglRoleEnd("system")


def user_begin() -> SglRoleBegin:
    return SglRoleBegin("user")


def user_end() -> SglRoleEnd:
    return SglRoleEnd("user")


def assistant_begin() -> SglRoleBegin:
    return SglRoleBegin("assistant")


def assistant_end() -> SglRoleEnd:
    return SglRoleEnd("assistant")


# ---- SGLang's other language entry points -------------------------------------------------------
def separate_reasoning(expr=None, model_type: str | None = None) -> SglExprList:
    """`s += sgl.separate_reasoning(sgl.gen("answer"), model_type="deepseek-r1")`: the gen's
    `<think>...</think>` part goes to `answer_reasoning_content`, the rest stays `answer`."""
    from .primitives import SglSeparateReasoning

    expr = as_expr(expr)
    return SglExprList([expr, SglSeparateReasoning(model_type, expr)])


def image(path):
    """Not available: the default and supported models read text only."""
    from .primitives import ProgramError

    raise ProgramError(f"sgl.image({path!r}): sglc runs text-only (Llama-family) models, which "
                       "cannot read images; describe the image in text instead")


def video(path, num_frames: int = -1):
    """Not available: the default and supported models read text only."""
    from .primitives import ProgramError

    raise ProgramError(f"sgl.video({path!r}): sglc runs text-only (Llama-family) models, which "
                       "cannot read video")
