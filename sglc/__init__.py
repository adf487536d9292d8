"""sglc: an ahead-of-time compiler and runtime for SGLang programs (`import sglc as sgl`)."""

from sglc_runtime.errors import SglcError

from . import ir
from .compiler import compile
from .lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_default_backend,
    image,
    select,
    separate_reasoning,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from .lang.chat_template import ChatTemplate, get_chat_template, register_chat_template
from .lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from .lang.function import SglFunction
from .lang.global_config import global_config
from .lang.primitives import ProgramError
from .lang.state import ProgramState, ProgramStateGroup

__version__ = "0.1.0"
__all__ = [
    "ChatTemplate",
    "Engine",
    "OpenAI",
    "ProgramError",
    "ProgramState",
    "ProgramStateGroup",
    "Runtime",
    "RuntimeBackend",
    "RuntimeEndpoint",
    "SglFunction",
    "SglcError",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "compile",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_chat_template",
    "get_default_backend",
    "global_config",
    "greedy_token_selection",
    "image",
    "ir",
    "register_chat_template",
    "select",
    "separate_reasoning",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    "video",
]


def __getattr__(name: str):
    # Runtime and Engine import torch and the engine; load them on first use only
    if name == "Runtime":
        from .backend.runtime import Runtime

        return Runtime
    if name == "RuntimeBackend":
        from .backend.runtime import RuntimeBackend

        return RuntimeBackend
    if name == "RuntimeEndpoint":
        from .backend.endpoint import RuntimeEndpoint

        return RuntimeEndpoint
    if name == "OpenAI":
        from .backend.openai import OpenAI

        return OpenAI
    if name == "Engine":
        from sglc_runtime.engine import Engine

        return Engine
    raise AttributeError(f"module 'sglc' has no attribute {name!r}")
