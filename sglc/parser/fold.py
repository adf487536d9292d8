"""Compile-time evaluation: an expression made only of known values (literals, unrolled loop
variables, specialized arguments, module-level plain data) and pure operations (arithmetic,
f-strings, comprehensions, a whitelist of builtins and str/list/dict methods, `json.dumps` and
the sgl primitives) is evaluated while compiling, so `f"tip_{i + 1}"` in an unrolled loop or
`sgl.gen("x", max_tokens=N)` becomes a constant in the graph."""

from __future__ import annotations

import ast
import builtins
import json
import math
import types
from collections.abc import Callable

from sglc_runtime.errors import SglcError

PURE_BUILTINS = frozenset({
    str, int, float, bool, len, range, min, max, sum, sorted, reversed, list, tuple, dict, set,
    frozenset, abs, round, enumerate, zip, repr, any, all, chr, ord, isinstance, divmod, pow,
})
PURE_METHODS = frozenset({
    "strip", "lstrip", "rstrip", "lower", "upper", "title", "capitalize", "casefold", "split",
    "rsplit", "splitlines", "join", "replace", "startswith", "endswith", "format", "count",
    "find", "rfind", "index", "get", "keys", "values", "items", "zfill", "center", "ljust",
    "rjust", "removeprefix", "removesuffix", "isdigit", "isalpha", "isspace", "partition",
})
_ALLOWED = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.BinOp, ast.UnaryOp,
            ast.BoolOp, ast.Compare, ast.JoinedStr, ast.FormattedValue, ast.Tuple, ast.List,
            ast.Dict, ast.Set, ast.Subscript, ast.Slice, ast.Attribute, ast.Call, ast.IfExp,
            ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp, ast.comprehension,
            ast.keyword, ast.Starred, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
            ast.expr_context)


class Unknown(Exception):
    """A name whose value is not known at compile time."""


def _sgl_primitives() -> frozenset:
    from ..lang import api

    return frozenset({api.gen, api.gen_int, api.gen_string, api.select, api.system, api.user,
                      api.assistant, api.system_begin, api.system_end, api.user_begin,
                      api.user_end, api.assistant_begin, api.assistant_end})


def pure_callables() -> frozenset:
    return PURE_BUILTINS | {json.dumps} | _sgl_primitives()


def is_plain(v, depth: int = 0) -> bool:
    """Immutable-enough data a program may treat as a compile-time constant."""
    if depth > 8:
        return False
    if v is None or isinstance(v, (bool, int, str, bytes)):
        return True
    if isinstance(v, float):
        return True
    if isinstance(v, (tuple, list, set, frozenset)):
        return len(v) <= 10_000 and all(is_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return len(v) <= 10_000 and all(is_plain(k, depth + 1) and is_plain(x, depth + 1)
                                        for k, x in v.items())
    from ..lang.primitives import SglExpr

    return isinstance(v, SglExpr)


def literal_code(v) -> str | None:
    """Python source that evaluates to `v`, for small plain values; else None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return repr(v)
    if isinstance(v, (tuple, list)) and len(v) <= 64:
        parts = [literal_code(x) for x in v]
        if None in parts:
            return None
        if isinstance(v, tuple):
            return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        return "[" + ", ".join(parts) + "]"
    return None


def bound_names(expr: ast.AST) -> set[str]:
    """Names an expression binds itself (comprehension targets, lambda parameters)."""
    out = set()
    for x in ast.walk(expr):
        if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store):
            out.add(x.id)
        elif isinstance(x, ast.Lambda):
            out.update(a.arg for a in x.args.args + x.args.kwonlyargs)
    return out


def free_names(expr: ast.AST) -> list[str]:
    bound = bound_names(expr)
    names = []
    for x in ast.walk(expr):
        if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load) and x.id not in bound \
                and x.id not in names:
            names.append(x.id)
    return names


def resolve_global(name: str, fn_globals: dict, closure: dict):
    """The compile-time value of a name the function does not assign: plain data, a module or
    a pure callable; raises Unknown for anything else (it is then looked up at run time)."""
    for scope in (closure, fn_globals):
        if name in scope:
            v = scope[name]
            break
    else:
        if not hasattr(builtins, name):
            raise Unknown(name)
        v = getattr(builtins, name)
    if isinstance(v, types.ModuleType) or is_plain(v):
        return v
    try:
        if v in pure_callables():
            return v
    except TypeError:  # unhashable
        pass
    raise Unknown(name)


def _has_call(x: ast.AST) -> bool:
    return any(isinstance(y, ast.Call) for y in ast.walk(x))


def _callee_ok(call: ast.Call, ns: dict) -> bool:
    """Whether a call is pure, decided without calling anything: a whitelisted method on a
    non-module receiver (a receiver that is itself a call is checked as its own call), or a
    name or attribute chain that resolves to a whitelisted callable."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in PURE_METHODS:
        if _has_call(func.value):
            return True
        try:
            receiver = eval(compile(ast.Expression(func.value), "<fold>", "eval"), ns)
        except Exception:  # noqa: BLE001 - an unknown receiver is not foldable
            return False
        return not isinstance(receiver, types.ModuleType)
    if _has_call(func):
        return False
    try:
        callee = eval(compile(ast.Expression(func), "<fold>", "eval"), ns)
        return callee in pure_callables()
    except Exception:  # noqa: BLE001 - not resolvable or unhashable: not pure
        return False


def fold(expr: ast.expr, lookup: Callable[[str], object]) -> tuple[bool, object]:
    """(True, value) if `expr` can be evaluated now; `lookup(name)` gives a name's value or
    raises Unknown. Errors while evaluating make it not foldable (it then fails at run time,
    where the eager program would fail too)."""
    if not all(isinstance(x, _ALLOWED) for x in ast.walk(expr)):
        return False, None
    ns: dict = {"__builtins__": {}}
    try:
        for name in free_names(expr):
            ns[name] = lookup(name)
    except Unknown:
        return False, None
    for x in ast.walk(expr):
        if isinstance(x, ast.Call) and not _callee_ok(x, ns):
            return False, None
    try:
        code = compile(ast.fix_missing_locations(ast.Expression(expr)), "<fold>", "eval")
        return True, eval(code, ns)
    except SglcError:  # the language refused its own arguments: a mistake in the program
        raise
    except Exception:  # noqa: BLE001 - see the docstring
        return False, None
