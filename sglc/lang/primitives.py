"""The expression nodes a program appends to its state (`s += ...`), and their sampling params.

These are shared by the eager interpreter and the graph executor: a node says *what* to do
(append text, generate, select, open a role); the interpreter or executor decides when."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, fields, replace
from typing import Any

from sglc_runtime.errors import InvalidRequestError, SglcError


class ProgramError(SglcError):
    """A program used the language wrongly (bad argument, nested roles, unknown variable)."""


class SamplingArgumentError(ProgramError, InvalidRequestError):
    """A gen's sampling argument has the wrong type or range: caught where the gen is written,
    the same error family the engine would raise for the request."""


_DTYPES = {int: "int", float: "float", bool: "bool", str: "str",
           "int": "int", "float": "float", "bool": "bool", "str": "str"}

# gen()'s names for the fields it names differently
_ARG_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}

# The fields that constrain a gen's output; a gen gives at most one.
CONSTRAINT_FIELDS = ("dtype", "regex", "json_schema", "grammar")

# Keys the engine takes beside `sampling_params` rather than inside it.
_LOGPROB_KEYS = ("return_logprob", "logprob_start_len", "top_logprobs_num")


@dataclass
class SglSamplingParams:
    """Sampling parameters where None means "not given here": a gen's params are laid over the
    program's defaults (from `run`) with `merge`; `to_request` gives the engine's arguments."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | tuple | None = None
    stop_token_ids: list[int] | tuple | None = None
    stop_regex: str | list[str] | tuple | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    dtype: str | None = None
    regex: str | None = None
    json_schema: str | None = None
    grammar: str | None = None  # Lark syntax, or GBNF/EBNF (llguidance; constrained/grammar.py)

    def __post_init__(self) -> None:
        """Type and range checks, so a wrong argument fails where the gen is written (and the
        compiler reports it at its file:line:col) rather than inside a request."""
        def bad(name: str, why: str):
            raise SamplingArgumentError(
                f"{_ARG_NAMES.get(name, name)}={getattr(self, name)!r}: {why}")

        def integer(name: str, lo: int):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                bad(name, f"must be an integer >= {lo}")

        def number(name: str, lo: float, hi: float, lo_open: bool = False):
            v = getattr(self, name)
            if v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not \
                    ((lo < v if lo_open else lo <= v) and v <= hi):
                bad(name, f"must be a number in {'(' if lo_open else '['}{lo}, {hi}]")

        integer("max_new_tokens", 0)
        integer("min_new_tokens", 0)
        integer("n", 1)
        integer("top_logprobs_num", 0)
        number("temperature", 0, float("inf"))
        number("top_p", 0, 1, lo_open=True)
        number("min_p", 0, 1)
        number("frequency_penalty", -2, 2)
        number("presence_penalty", -2, 2)
        number("repetition_penalty", 0, 2, lo_open=True)
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(
                self.top_k, int) or self.top_k == 0 or self.top_k < -1):
            bad("top_k", "must be -1 (off) or a positive integer")
        if self.stop is not None and not isinstance(self.stop, str) and not (
                isinstance(self.stop, (list, tuple)) and all(isinstance(x, str)
                                                             for x in self.stop)):
            bad("stop", "must be a string or a list of strings")
        if self.dtype is not None:
            if self.dtype not in _DTYPES:
                raise ProgramError(f"dtype={self.dtype!r}: must be one of int, float, bool, str")
            self.dtype = _DTYPES[self.dtype]
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ProgramError(f"regex={self.regex!r} does not compile: {e}") from None
        if self.json_schema is not None:
            schema = self.json_schema
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as e:
                    raise ProgramError(f"json_schema is not valid JSON: {e}") from None
            if not isinstance(schema, (dict, bool)):
                raise ProgramError(f"json_schema must be a JSON schema (an object), got "
                                   f"{type(schema).__name__}")
            if not isinstance(self.json_schema, str):
                self.json_schema = json.dumps(self.json_schema)  # a dict schema is fine too
        if self.grammar is not None:
            from sglc_runtime.constrained.grammar import check_grammar
            from sglc_runtime.errors import ConstraintError

            try:
                check_grammar(self.grammar)
            except ConstraintError as e:
                raise ProgramError(str(e)) from None
        given = [k for k in CONSTRAINT_FIELDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ProgramError(f"give at most one of dtype, regex, json_schema and grammar, got "
                               f"{' and '.join(given)}")

    @staticmethod
    def gen_arg(name: str) -> str:
        """The `gen` argument that sets field `name` (max_new_tokens -> max_tokens, ...)."""
        return _ARG_NAMES.get(name, name)

    def merge(self, over: SglSamplingParams) -> SglSamplingParams:
        """These params with every field that `over` gives replaced by `over`'s value."""
        given = {f.name: getattr(over, f.name) for f in fields(over)
                 if getattr(over, f.name) is not None}
        return replace(self, **given)

    def with_extra_stop(self, stop_strs: tuple[str, ...], stop_token_ids: tuple[int, ...]):
        """Add a chat template's end-of-turn stop strings and token ids."""
        if not stop_strs and not stop_token_ids:
            return self
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        ids = list(self.stop_token_ids or ())
        return replace(self, stop=stop + [s for s in stop_strs if s not in stop],
                       stop_token_ids=ids + [t for t in stop_token_ids if t not in ids])

    def to_request(self) -> tuple[dict, dict]:
        """(sampling_params dict, logprob keyword arguments) for `Engine.generate`."""
        sp: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or f.name in _LOGPROB_KEYS or (f.name == "n" and v == 1):
                continue
            if f.name == "stop":
                v = [v] if isinstance(v, str) else list(v)
                if not v:
                    continue
            if f.name in ("stop_token_ids", "stop_regex") and not isinstance(v, str):
                v = list(v)
                if not v:
                    continue
            sp[f.name] = v
        if self.dtype in ("int", "float"):  # as SGLang: a number ends at a space or newline
            sp["stop"] = sp.get("stop", []) + [" ", "\n"]
        lp = {k: getattr(self, k) for k in _LOGPROB_KEYS if getattr(self, k) is not None}
        return sp, lp


def caller_location(skip_modules: tuple[str, ...] = ("sglc.lang.",)) -> str | None:
    """`file:line` of the nearest frame outside sglc's language modules (the user's program)."""
    f = sys._getframe(1)
    while f is not None:
        mod = f.f_globals.get("__name__", "")
        if not mod.startswith(skip_modules) and not mod.startswith("contextlib"):
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return None


class SglExpr:
    """Base node; `a + b` of nodes (or strings) builds an `SglExprList`."""

    loc: str | None = None  # where the program appended it, for error messages

    def __add__(self, other) -> SglExprList:
        return _concat(self, as_expr(other))

    def __radd__(self, other) -> SglExprList:
        return _concat(as_expr(other), self)

    def flatten(self) -> list[SglExpr]:
        return [self]


def as_expr(x) -> SglExpr:
    """Strings (and str-able values such as numbers) become `SglConstantText`."""
    if isinstance(x, SglExpr):
        return x
    if x is None:
        raise ProgramError("cannot append None to a program state")
    if isinstance(x, (str, int, float)):
        return SglConstantText(str(x))
    raise ProgramError(f"cannot append a {type(x).__name__} to a program state; append a str, "
                       "gen(...), select(...) or a role")


def _concat(a: SglExpr, b: SglExpr) -> SglExprList:
    return SglExprList(a.flatten() + b.flatten())


class SglExprList(SglExpr):
    def __init__(self, expr_list: list[SglExpr]):
        self.expr_list = expr_list

    def flatten(self) -> list[SglExpr]:
        return [y for x in self.expr_list for y in x.flatten()]

    def __repr__(self) -> str:
        return f"ExprList({self.expr_list})"


class SglConstantText(SglExpr):
    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class SglGen(SglExpr):
    """Generate text with `sampling_params` laid over the program's defaults; store as `name`."""

    def __init__(self, name: str | None, sampling_params: SglSamplingParams):
        self.name = name
        self.sampling_params = sampling_params

    def __repr__(self) -> str:
        return f"Gen({self.name!r})"


class SglSelect(SglExpr):
    """Append the most likely of `choices` (scored by `choices_method`); store it as `name`."""

    def __init__(self, name: str | None, choices: list[str], temperature: float,
                 choices_method):
        if not choices or not all(isinstance(c, str) for c in choices):
            raise ProgramError(f"select {name!r}: choices must be a non-empty list of strings")
        self.name = name
        self.choices = list(choices)
        self.temperature = temperature
        self.choices_method = choices_method

    def __repr__(self) -> str:
        return f"Select({self.name!r}, choices={self.choices})"


class SglRoleBegin(SglExpr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleBegin({self.role})"


class SglRoleEnd(SglExpr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleEnd({self.role})"


class SglVarScopeBegin(SglExpr):
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeBegin({self.name!r})"


class SglVarScopeEnd(SglExpr):
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeEnd({self.name!r})"


class SglCommitLazy(SglExpr):
    """Make the backend cache the text so far (before a fork, so the children share it)."""

    def __repr__(self) -> str:
        return "CommitLazy()"


class SglConcateAndAppend(SglExpr):
    """Append the text each forked state added after the fork (`join("concate_and_append")`)."""

    def __init__(self, states: list):
        self.states = states

    def __repr__(self) -> str:
        return f"ConcateAndAppend({len(self.states)} states)"


class SglSeparateReasoning(SglExpr):
    """After the gens/selects of `expr` ran: split each one's text at the reasoning model's
    `</think>`; the variable keeps the answer, `{name}_reasoning_content` gets the reasoning,
    and the program's text keeps only the answer (SGLang's `separate_reasoning`)."""

    def __init__(self, model_type: str | None, expr: SglExpr):
        self.model_type = model_type
        self.expr = expr
        self.targets = [x.name for x in expr.flatten() if isinstance(x, (SglGen, SglSelect))]
        if not self.targets or None in self.targets:
            raise ProgramError("separate_reasoning needs named gens or selects "
                               "(sgl.gen('answer', ...))")
        self.name = self.process_name_for_reasoning(self.targets[0])

    def process_name_for_reasoning(self, name: str) -> str:
        """The variable a gen's reasoning goes to (SGLang's name for this rule)."""
        if not name:
            raise ProgramError("separate_reasoning: the gen or select needs a name")
        return f"{name}_reasoning_content"

    def __repr__(self) -> str:
        return f"SeparateReasoning({self.targets})"


def var_names(expr: SglExpr) -> list[str]:
    """Names of the variables an expression defines."""
    names = []
    for x in expr.flatten():
        if isinstance(x, (SglGen, SglSelect, SglVarScopeBegin)) and x.name is not None:
            names.append(x.name)
        elif isinstance(x, SglSeparateReasoning):
            names += [x.process_name_for_reasoning(n) for n in x.targets]
    return names


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of `<think>reasoning</think>answer` (the opening tag optional, as
    reasoning models often start inside it); text without `</think>` has no reasoning."""
    if "</think>" not in text:
        return "", text
    reasoning, answer = text.split("</think>", 1)
    return reasoning.split("<think>", 1)[-1].strip(), answer.lstrip()
