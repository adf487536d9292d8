"""A program state as an immutable value (`Snapshot`) and the pure steps on it: `apply(state,
expr, template) -> state` for every expression but the model calls, `join` for forks, and
`sampling_params` for a gen in that state. The eager interpreter (`interpreter.py`) holds one
snapshot and replaces it at every step; the compiled executor (`sglc/compiler`) passes them
between graph nodes. Neither changes a snapshot in place, so both produce the same text."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from .primitives import (
    ProgramError,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSeparateReasoning,
    SglVarScopeBegin,
    SglVarScopeEnd,
    split_reasoning,
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(d: dict) -> Mapping[str, Any]:
    return MappingProxyType(d)


@dataclass(frozen=True)
class Snapshot:
    """Text, chat messages and variables of one program state at one point.

    `role` is the chat role open now (None between turns) and `role_begin` the text offset where
    its content starts; `fork_start` is the text offset where a fork branch began (what its
    join appends). Messages are {"role", "content"} dicts that are never changed once added."""

    text: str = ""
    messages: tuple[dict, ...] = ()
    variables: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    meta_info: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    role: str | None = None
    role_begin: int | None = None
    fork_start: int | None = None

    def get_var(self, name: str):
        if name in self.variables:
            return self.variables[name]
        raise ProgramError(f"the program has no variable {name!r} (it has: "
                           f"{', '.join(map(repr, self.variables)) or 'none'})")

    def filled(self, text: str) -> Snapshot:
        """This state with `text` appended."""
        return replace(self, text=self.text + text) if text else self

    def with_var(self, name: str | None, value, meta=None) -> Snapshot:
        """This state with variable `name` set to `value` (and its meta info, if given)."""
        if name is None:
            return self
        meta_info = self.meta_info if meta is None else _frozen({**self.meta_info, name: meta})
        return replace(self, variables=_frozen({**self.variables, name: value}),
                       meta_info=meta_info)

    def generated(self, name: str | None, text: str, meta=None) -> Snapshot:
        """This state after a model call produced `text` for variable `name`."""
        return self.filled(text).with_var(name, text, meta)

    def fork_child(self) -> Snapshot:
        """The state a fork branch starts from."""
        return replace(self, fork_start=len(self.text))

    def branch_text(self) -> str:
        """What this fork branch appended since it began."""
        return self.text[self.fork_start or 0:]


def apply(state: Snapshot, expr: SglExpr, template) -> Snapshot:
    """`state` after `expr`, which must not call the model (gen, select and commit are the
    callers'); roles are rendered by chat template `template`."""
    if isinstance(expr, SglConstantText):
        return state.filled(expr.value)
    if isinstance(expr, SglExprList):
        for x in expr.expr_list:
            state = apply(state, x, template)
        return state
    if isinstance(expr, SglRoleBegin):
        return _role_begin(state, expr.role, template)
    if isinstance(expr, SglRoleEnd):
        return _role_end(state, expr.role, template)
    if isinstance(expr, SglVarScopeBegin):
        return state.with_var(expr.name, len(state.text))
    if isinstance(expr, SglVarScopeEnd):
        start = state.variables.get(expr.name)
        if not isinstance(start, int):
            raise ProgramError(f"var_scope {expr.name!r} ends but never began")
        return state.with_var(expr.name, state.text[start:])
    if isinstance(expr, SglSeparateReasoning):
        return _separate_reasoning(state, expr)
    raise AssertionError(f"{expr!r} is not a pure step (a model call or a backend effect)")


def _role_begin(state: Snapshot, role: str, template) -> Snapshot:
    if state.role is not None:
        raise ProgramError(f"role {role!r} begins inside role {state.role!r}; roles do not nest")
    default_system = template.default_system_prompt
    if not state.messages and role != "system" and default_system:
        state = _role_end(_role_begin(state, "system", template).filled(default_system),
                          "system", template)
    prefix, _ = template.get_prefix_and_suffix(role, list(state.messages))
    text = state.text + prefix
    return replace(state, text=text, role=role, role_begin=len(text))


def _role_end(state: Snapshot, role: str, template) -> Snapshot:
    if state.role != role:
        raise ProgramError(f"role {role!r} ends but the open role is {state.role!r}")
    content = state.text[state.role_begin:].lstrip()
    _, suffix = template.get_prefix_and_suffix(role, list(state.messages))
    return replace(state, text=state.text + suffix, role=None,
                   messages=(*state.messages, {"role": role, "content": content}))


def _separate_reasoning(state: Snapshot, expr) -> Snapshot:
    """Each target's text becomes its answer, the reasoning going to
    `expr.process_name_for_reasoning(name)` (`split_reasoning`)."""
    for name in expr.targets:
        text = state.variables.get(name)
        if not isinstance(text, str):
            raise ProgramError(f"separate_reasoning: {name!r} holds no generated text")
        reasoning, answer = split_reasoning(text)
        if state.text.endswith(text):
            state = replace(state, text=state.text[:len(state.text) - len(text)] + answer)
        state = state.with_var(name, answer).with_var(expr.process_name_for_reasoning(name),
                                                      reasoning)
    return state


def join(state: Snapshot, children: list[Snapshot], mode: str) -> Snapshot:
    """`state` after joining fork branches `children`: "gather_variable" adds each variable the
    branches made (and `state` lacks) as the list of their values; "concate_and_append"
    appends each branch's text."""
    if mode == "concate_and_append":
        for child in children:
            state = state.filled(child.branch_text())
        return state
    if mode != "gather_variable":
        raise ProgramError(f"join(mode={mode!r}): mode must be 'gather_variable' or "
                           "'concate_and_append'")
    gathered: dict[str, list] = {}
    for child in children:
        for k, v in child.variables.items():
            if k not in state.variables:
                gathered.setdefault(k, []).append(v)
    return replace(state, variables=_frozen({**state.variables, **gathered}))


def sampling_params(state: Snapshot, defaults: SglSamplingParams, params: SglSamplingParams,
                    template, stop_token_ids: Callable[[tuple[str, ...]], tuple[int, ...]]
                    ) -> SglSamplingParams:
    """A gen's parameters in `state`: the program's defaults overlaid with the gen's own; in an
    assistant turn the chat template's end-of-turn also stops generation (`stop_token_ids`
    maps those strings to token ids)."""
    merged = defaults.merge(params)
    if state.role != "assistant":
        return merged
    stop_strs = tuple(template.stop_str)
    return merged.with_extra_stop(stop_strs, stop_token_ids(stop_strs))
