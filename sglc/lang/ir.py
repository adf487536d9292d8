"""The expression nodes at SGLang's import path (`sglang.lang.ir`): what `s += ...` appends."""

from .function import SglFunction
from .primitives import (
    SglCommitLazy,
    SglConcateAndAppend,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVarScopeBegin,
    SglVarScopeEnd,
)

_REGEX_NAMES = {"REGEX_INT": "int", "REGEX_FLOAT": "float", "REGEX_BOOL": "bool",
                "REGEX_STR": "str"}


def __getattr__(name: str):
    # SGLang's REGEX_* constants: the regexes sglc constrains each dtype to (loaded lazily, as
    # the constraint package imports torch)
    if name in _REGEX_NAMES:
        from sglc_runtime.constrained.dtypes import DTYPE_REGEX

        return DTYPE_REGEX[_REGEX_NAMES[name]]
    raise AttributeError(f"module 'sglc.lang.ir' has no attribute {name!r}")


__all__ = ["SglCommitLazy", "SglConcateAndAppend", "SglConstantText", "SglExpr", "SglExprList",
           "SglFunction", "SglGen", "SglRoleBegin", "SglRoleEnd", "SglSamplingParams",
           "SglSelect", "SglSeparateReasoning", "SglVarScopeBegin", "SglVarScopeEnd"]
