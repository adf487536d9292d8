"""Expressions → graph values: constants fold at compile time, `s["x"]` becomes a `get`, calls
of other `@sgl.function`s are inlined, and anything else becomes a `py` node whose code reads
its operands as `_1, _2, ...`. `s += expr` becomes a sequence of state ops (text, gen, roles,
appends), with the expression's run-time values computed first, as Python would."""

from __future__ import annotations

import ast
import copy
import difflib
from dataclasses import fields

from sglc_runtime.errors import SglcError

from ..ir.ops import GEN_PARAMS, Op
from .builder import Const, GroupRef, StateRef, Val, json_exact
from .errors import CompileError, ProgramCheckError
from .fold import (
    PURE_METHODS,
    Unknown,
    fold,
    free_names,
    literal_code,
    pure_callables,
    resolve_global,
)
from .py_rewrite import PyRewriter

#: SglSamplingParams fields named differently as `sgl.gen` arguments (and IR attributes)
FIELD_TO_ATTR = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
#: methods of a state that only read it
STATE_READS = frozenset({"get_var", "text", "messages", "get_meta_info", "error"})


class _Opaque:
    """Stands for a fork branch inside a compile-time evaluation (`len(forks)` folds)."""


def _contains_opaque(v, depth: int = 0) -> bool:
    if isinstance(v, _Opaque):
        return True
    if depth < 4 and isinstance(v, (tuple, list)):
        return any(_contains_opaque(x, depth + 1) for x in v)
    return False


def _culprit(e: ast.expr, message: str) -> ast.AST:
    """The keyword argument an error message starts by naming (`max_tokens=...: ...`), else
    the expression."""
    name = message.split("=", 1)[0].strip() if "=" in message.split(":", 1)[0] else None
    for x in ast.walk(e):
        if isinstance(x, ast.keyword) and x.arg is not None and x.arg == name:
            return x.value
    return e


def _methods():
    from ..lang import choices

    return {"token_length_normalized": choices.token_length_normalized,
            "greedy_token_selection": choices.greedy_token_selection,
            "unconditional_likelihood_normalized": choices.unconditional_likelihood_normalized}


def object_items(v) -> list | None:
    """The state ops that appending compile-time value `v` amounts to (None if some part has
    no IR form, e.g. a custom choices method)."""
    from ..lang import primitives as p

    if isinstance(v, str):
        return [("text", v)]
    if isinstance(v, (int, float)):
        return [("text", str(v))]
    if isinstance(v, p.SglExprList):
        out = []
        for x in v.flatten():
            items = object_items(x)
            if items is None:
                return None
            out += items
        return out
    if isinstance(v, p.SglConstantText):
        return [("text", v.value)]
    if isinstance(v, p.SglGen):
        attrs = {} if v.name is None else {"name": v.name}
        for f in fields(v.sampling_params):
            x = getattr(v.sampling_params, f.name)
            if x is None:
                continue
            key = FIELD_TO_ATTR.get(f.name, f.name)
            x = list(x) if isinstance(x, tuple) else x
            if key not in GEN_PARAMS or not json_exact(x):
                return None
            attrs[key] = x
        return [("gen", attrs)]
    if isinstance(v, p.SglSelect):
        names = {id(m): k for k, m in _methods().items()}
        if id(v.choices_method) not in names:
            return None
        attrs = {"choices": list(v.choices)}
        if v.name is not None:
            attrs["name"] = v.name
        if v.temperature:
            attrs["temperature"] = v.temperature
        if names[id(v.choices_method)] != "token_length_normalized":
            attrs["choices_method"] = names[id(v.choices_method)]
        return [("select", attrs)]
    if isinstance(v, (p.SglRoleBegin, p.SglRoleEnd)):
        return [("role_begin" if isinstance(v, p.SglRoleBegin) else "role_end", v.role)]
    if isinstance(v, (p.SglVarScopeBegin, p.SglVarScopeEnd)):
        kind = "scope_begin" if isinstance(v, p.SglVarScopeBegin) else "scope_end"
        return [(kind, v.name)]
    return None


class ExprMixin:
    """Expression lowering; mixed into `Lowerer` (which holds `b`, the Builder, and `frame`)."""

    # ---- compile-time values ------------------------------------------------------------------
    def lookup(self, name: str, static: bool = False):
        frame = self.frame
        binding = frame.locals.get(name)
        if binding is None:
            if name in frame.assigned:
                raise Unknown(name)
            return resolve_global(name, frame.src.globals, frame.src.closure)
        if isinstance(binding, Const):
            return binding.value
        if isinstance(binding, GroupRef):
            return tuple(_Opaque() for _ in binding.keys)
        if isinstance(binding, Val) and binding.node in self.arg_names and \
                (static or self.arg_names[binding.node] in self.static_used):
            return self.static_value(binding.node)
        raise Unknown(name)

    def fold(self, e: ast.expr, static: bool = False) -> tuple[bool, object]:
        try:
            ok, v = fold(e, lambda n: self.lookup(n, static))
        except CompileError:  # the compiler's own verdict (e.g. a static argument without value)
            raise
        except SglcError as err:  # e.g. sgl.gen(max_tokens="lots"): report it at its column
            if any(isinstance(self.frame.locals.get(n), GroupRef) for n in free_names(e)):
                return False, None  # it met a fork branch's stand-in, not a program mistake
            raise ProgramCheckError(str(err), *self.frame.src.where(_culprit(e, str(err)))) \
                from None
        if ok and _contains_opaque(v):
            return False, None
        return ok, v

    def static_object(self, e: ast.expr):
        """The object a name or attribute chain denotes in the function's globals, or None."""
        if isinstance(e, ast.Attribute):
            base = self.static_object(e.value)
            return getattr(base, e.attr, None) if base is not None else None
        if isinstance(e, ast.Name) and e.id not in self.frame.locals and \
                e.id not in self.frame.assigned:
            for scope in (self.frame.src.closure, self.frame.src.globals):
                if e.id in scope:
                    return scope[e.id]
        return None

    # ---- states named by an expression --------------------------------------------------------
    def state_of(self, e: ast.expr) -> str | None:
        """The state key `e` names (`s`, a fork branch variable, `forks[i]`), or None."""
        if isinstance(e, ast.Name):
            binding = self.frame.locals.get(e.id)
            return binding.key if isinstance(binding, StateRef) else None
        if isinstance(e, ast.Subscript):
            group = self.group_of(e.value)
            if group is not None:
                ok, i = self.fold(e.slice)
                if ok and isinstance(i, int) and -len(group.keys) <= i < len(group.keys):
                    return group.keys[i]
        return None

    def group_of(self, e: ast.expr) -> GroupRef | None:
        if isinstance(e, ast.Name):
            binding = self.frame.locals.get(e.id)
            return binding if isinstance(binding, GroupRef) else None
        return None

    # ---- values -------------------------------------------------------------------------------
    def get_var(self, key: str, name: str, e: ast.expr) -> int:
        """A `get` of variable `name` from state `key`, checked: some gen, select, var_scope
        or join before it must write `name`. When nothing can, that is a program mistake
        (eagerly it fails when it gets there); an appended run-time value (a program argument,
        or a select whose choices are known only at run time) might, so then it is not."""
        state = self.b.state(key)
        seen, stack, maybe = set(), [state], False
        g = self.b.g
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            node = g.node(n)
            if node.op in (Op.GEN, Op.SELECT, Op.SCOPE_END) and node.attrs.get("name") == name:
                break
            if node.op is Op.APPEND and "format" not in node.attrs and \
                    "conversion" not in node.attrs and g.node(node.args[1]).op in (Op.ARG, Op.PY):
                maybe = True
            stack.extend(node.args)
        else:
            message = (f"variable {name!r} is read here, but no gen, select or var_scope "
                       f"before it writes {name!r}")
            written = sorted({node.attrs["name"] for node in map(g.node, g.nodes) if node.op in (
                Op.GEN, Op.SELECT, Op.SCOPE_END) and isinstance(node.attrs.get("name"), str)})
            close = difflib.get_close_matches(name, written, n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            where = self.frame.src.where(e)
            if not maybe:
                raise ProgramCheckError(message, *where)
        return self.b.emit(Op.GET, (state,), name=name)

    def value(self, e: ast.expr):
        """The binding of expression `e`: Const, Val, StateRef or GroupRef."""
        ok, v = self.fold(e)
        if ok:
            return Const(v)
        if isinstance(e, ast.Name) and e.id in self.frame.locals:
            return self.frame.locals[e.id]
        key = self.state_of(e)
        if key is not None:
            return StateRef(key)
        if isinstance(e, ast.Subscript):
            key = self.state_of(e.value)
            ok, name = self.fold(e.slice)
            if key is not None and ok and isinstance(name, str):
                return Val(self.get_var(key, name, e))
        if isinstance(e, ast.Call):
            inlined = self.try_inline(e)
            if inlined is not None:
                return inlined
            func = e.func
            if isinstance(func, ast.Attribute) and func.attr == "get_var" and e.args:
                key = self.state_of(func.value)
                ok, name = self.fold(e.args[0])
                if key is not None and ok and isinstance(name, str) and len(e.args) == 1:
                    return Val(self.get_var(key, name, e))
        return Val(self.py(e))

    def node_of(self, binding, e: ast.AST | None = None) -> float:
        """A graph node holding `binding`'s value (a state read through a `py` view)."""
        if isinstance(binding, Val):
            return binding.node
        if isinstance(binding, Const):
            if json_exact(binding.value):
                return self.b.const(binding.value)
            code = literal_code(binding.value)
            if code is None and _contains_opaque(binding.value):
                raise self.frame.src.error(e, "fork branches are used here in a way the compiler "
                                              "does not follow (it follows `for f in forks`, "
                                              "enumerate, zip and forks[i])")
            if code is None:
                raise self.frame.src.error(e, f"a value of type {type(binding.value).__name__} "
                                              "computed at compile time cannot be put in the "
                                              "graph")
            return self.emit_py(code, [], pure=True)
        if isinstance(binding, StateRef):
            return self.emit_py("_1", [self.b.state(binding.key)], pure=True)
        return self.emit_py("[" + ", ".join(f"_{i + 1}" for i in range(len(binding.keys))) + "]",
                            [self.b.state(k) for k in binding.keys], pure=True)

    def emit_py(self, code: str, operands: list, pure: bool) -> float:
        ctl = self.b.state(self.frame.state_key)  # runs after the state it is written after
        attrs = {"code": code, "pure": True} if pure else {"code": code}
        n = self.b.emit(Op.PY, (ctl, *operands), **attrs)
        self.b.g.node(n).fn = self.frame.src.fn
        return n

    def py(self, e: ast.expr) -> float:
        """A `py` node computing `e` at run time."""
        rw = PyRewriter(self)
        tree = rw.visit(ast.Expression(body=copy.deepcopy(e)))
        code = ast.unparse(ast.fix_missing_locations(tree))
        return self.emit_py(code, rw.operands, pure=self.is_pure(tree))

    def is_pure(self, tree: ast.AST) -> bool:
        for x in ast.walk(tree):
            if isinstance(x, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
                return False
            if not isinstance(x, ast.Call):
                continue
            f = x.func
            if isinstance(f, ast.Attribute) and (f.attr in PURE_METHODS or
                                                 f.attr in STATE_READS):
                continue
            if isinstance(f, ast.Name):
                try:
                    if resolve_global(f.id, self.frame.src.globals, self.frame.src.closure) \
                            in pure_callables():
                        continue
                except (Unknown, TypeError):
                    pass
            return False
        return True

    # ---- s += expr ----------------------------------------------------------------------------
    def items(self, e: ast.expr) -> list:
        """What appending `e` does, as (kind, ...) items; run-time values already computed."""
        ok, v = self.fold(e)
        if ok:
            items = object_items(v)
            if items is not None:
                return items
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add) and self.is_textual(e):
            return self.items(e.left) + self.items(e.right)
        role = self.role_call(e)
        if role is not None:
            inner = self.items(e.args[0]) if e.args else []
            return [("role_begin", role), *inner, ("role_end", role)]
        if isinstance(e, ast.JoinedStr):
            return [y for part in e.values for y in self.fstring_part(part)]
        return [("value", self.value(e), None, None)]

    def fstring_part(self, part: ast.expr) -> list:
        if isinstance(part, ast.Constant):
            return [("text", str(part.value))]
        assert isinstance(part, ast.FormattedValue)
        spec = ""
        if part.format_spec is not None:
            ok, spec = self.fold(part.format_spec)
            if not ok:  # a run-time format spec: format the whole piece at run time
                return [("value", Val(self.py(ast.JoinedStr(values=[part]))), "", None)]
        conv = None if part.conversion == -1 else chr(part.conversion)
        ok, v = self.fold(part.value)
        if ok:
            try:
                v = {"r": repr, "s": str, "a": ascii}[conv](v) if conv else v
                return [("text", format(v, spec))]
            except Exception:  # noqa: BLE001, S110 - fails again at run time, where it belongs
                pass
        return [("value", self.value(part.value), spec, conv)]

    def is_textual(self, e: ast.expr) -> bool:
        """Whether a `+` chain concatenates text (so each piece may be appended in turn)."""
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            return self.is_textual(e.left) or self.is_textual(e.right)
        if isinstance(e, ast.JoinedStr) or (isinstance(e, ast.Constant) and
                                            isinstance(e.value, str)):
            return True
        if isinstance(e, ast.Call) and self.static_object(e.func) in _primitive_set():
            return True
        ok, v = self.fold(e)
        return ok and object_items(v) is not None and not isinstance(v, (int, float))

    def role_call(self, e: ast.expr) -> str | None:
        """The role of `sgl.user(x)` / `sgl.system(x)` / `sgl.assistant(x)` calls."""
        if not isinstance(e, ast.Call) or e.keywords or len(e.args) > 1:
            return None
        from ..lang import api

        roles = {api.user: "user", api.system: "system", api.assistant: "assistant"}
        fn = self.static_object(e.func)
        try:
            return roles.get(fn)
        except TypeError:
            return None

    def append(self, key: str, items: list) -> None:
        """Emit the state ops of `items` on state `key`."""
        b = self.b
        for item in items:
            kind = item[0]
            if kind == "text":
                if item[1]:
                    b.state_op(key, Op.TEXT, value=item[1])
            elif kind == "gen":
                b.state_op(key, Op.GEN, **item[1])
            elif kind == "select":
                b.state_op(key, Op.SELECT, **item[1])
            elif kind in ("role_begin", "role_end"):
                b.state_op(key, Op(kind), role=item[1])
            elif kind in ("scope_begin", "scope_end"):
                b.state_op(key, Op(kind), name=item[1])
            else:
                _, binding, spec, conv = item
                if isinstance(binding, Const) and spec is None and \
                        isinstance(binding.value, str):
                    if binding.value:
                        b.state_op(key, Op.TEXT, value=binding.value)
                    continue
                attrs = {}
                if spec is not None:
                    attrs["format"] = spec
                if conv is not None:
                    attrs["conversion"] = conv
                b.state_op(key, Op.APPEND, self.node_of(binding), **attrs)


def _primitive_set() -> frozenset:
    from .fold import _sgl_primitives

    return _sgl_primitives()
