"""Find the text every program of a `run_batch` starts with, so it is computed once.

The function runs once, synchronously, on a state whose backend stops the trace at the first
model call, with the arguments that differ between programs replaced by placeholders that stop
it when used (formatted, concatenated, compared, branched on). The text appended until then is
the constant prefix. Arguments equal across the whole batch keep their real values, so
`few_shot_examples` passed to every program are part of the prefix. Tracing only decides what
to cache: a wrong prefix would cost time, never change a result."""

from __future__ import annotations

import logging

from sglc_runtime.errors import SglcError

from .backend import BaseBackend
from .interpreter import StreamExecutor
from .primitives import SglSamplingParams

logger = logging.getLogger(__name__)

#: shorter constant prefixes are not worth a separate request (SGLang's threshold too)
MIN_PREFIX_CHARS = 64


class StopTracing(BaseException):
    """Ends a trace; a BaseException so a program's own `except Exception` does not eat it."""


class _Placeholder:
    """An argument whose value differs between the programs of the batch."""

    def __init__(self, name: str):
        self._name = name

    def _stop(self, *args, **kwargs):
        raise StopTracing(self._name)

    __str__ = __format__ = __add__ = __radd__ = __mul__ = __getitem__ = __iter__ = _stop
    __len__ = __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _stop
    __int__ = __float__ = __index__ = __contains__ = __call__ = __hash__ = _stop
    __mod__ = __rmod__ = _stop

    def __getattr__(self, attr):
        raise StopTracing(self._name)


class _TracingBackend(BaseBackend):
    """Renders roles like the real backend; stops at any model call."""

    def __init__(self, backend: BaseBackend):
        self.backend = backend

    def get_chat_template(self):
        return self.backend.get_chat_template()

    def stop_token_ids(self, stop_strs):
        return self.backend.stop_token_ids(stop_strs)

    def generate(self, prompt, params):
        raise StopTracing("gen")

    def generate_stream(self, prompt, params):
        raise StopTracing("gen")

    def select(self, prompt, choices, temperature, choices_method):
        raise StopTracing("select")

    def cache_prefix(self, prefix):
        raise StopTracing("fork")


def _same(values: list) -> bool:
    first = values[0]
    try:
        return all(v is first or v == first for v in values[1:])
    except Exception:  # noqa: BLE001 - values that cannot be compared count as different
        return False


def constant_prefix(program, backend: BaseBackend, batch_kwargs: list[dict],
                    default_params: SglSamplingParams, free: tuple[str, ...] = ()) -> str:
    """The text every program in the batch appends before its first model call; arguments
    named in `free` are unknown (placeholders) even where the batch does not give them."""
    names = set().union(*(kw.keys() for kw in batch_kwargs), free)
    kwargs = {}
    for name in names:
        if all(name in kw for kw in batch_kwargs) and _same([kw[name] for kw in batch_kwargs]):
            kwargs[name] = batch_kwargs[0][name]
        else:
            kwargs[name] = _Placeholder(name)
    kwargs = {**program.bind_arguments, **kwargs}
    exe = StreamExecutor(_TracingBackend(backend), kwargs, default_params, use_thread=False)
    from .state import ProgramState

    state = ProgramState(exe)
    try:
        program.func(state, **kwargs)
    except StopTracing:
        pass
    except Exception as e:  # noqa: BLE001 - the real run will raise it where it belongs
        logger.debug("tracing %s stopped on %r", program, e)
    return exe.text_


def cache_program_prefix(program, backend: BaseBackend, batch_kwargs: list[dict],
                         default_params: SglSamplingParams) -> str:
    """Commit the batch's constant prefix to the backend's cache; return it ('' if short)."""
    prefix = constant_prefix(program, backend, batch_kwargs, default_params)
    if len(prefix) < MIN_PREFIX_CHARS:
        return ""
    try:
        backend.cache_prefix(prefix)
    except SglcError as e:  # e.g. too long: every program will report it on its own state
        logger.warning("could not cache the batch's common prefix: %s", e)
        return ""
    return prefix
