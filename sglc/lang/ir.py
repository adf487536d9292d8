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

__all__ = ["SglCommitLazy", "SglConcateAndAppend", "SglConstantText", "SglExpr", "SglExprList",
           "SglFunction", "SglGen", "SglRoleBegin", "SglRoleEnd", "SglSamplingParams",
           "SglSelect", "SglSeparateReasoning", "SglVarScopeBegin", "SglVarScopeEnd"]
