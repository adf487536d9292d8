"""Statements → graph: the program walker. It declares the arguments, handles assignments,
`s += ...`, forks and joins, specializes on arguments used as compile-time values, and inlines
calls that pass a state to an `@sgl.function` (or a plain Python function); control flow is in
`control.py`. Anything else raises `CompileError` at its line."""

from __future__ import annotations

import ast
import inspect
import types
from dataclasses import dataclass, field

from ..ir.ops import Op
from .builder import Builder, Const, GroupRef, StateRef, Val
from .control import ControlMixin
from .errors import CompileError, ProgramCheckError
from .exprs import ExprMixin
from .source import FunctionSource, load_source

#: `x op= y` on a run-time value runs as `_<name>(x, y)`, name from `operator`
INPLACE = {"Add": "iadd", "Sub": "isub", "Mult": "imul", "MatMult": "imatmul",
           "Div": "itruediv", "FloorDiv": "ifloordiv", "Mod": "imod", "Pow": "ipow",
           "LShift": "ilshift", "RShift": "irshift", "BitOr": "ior", "BitXor": "ixor",
           "BitAnd": "iand"}
MAX_INLINE_DEPTH = 8


@dataclass
class Frame:
    """One function body being compiled: the program, or an inlined `@sgl.function`."""
    src: FunctionSource
    locals: dict
    state_key: str
    assigned: set
    depth: int = 0
    returns: list = field(default_factory=list)
    loops: list = field(default_factory=list)
    with_depth: int = 0


def assigned_names(fn: ast.FunctionDef) -> set[str]:
    """Names the function body binds (Python makes them local), not counting the inner scopes
    of comprehensions and lambdas."""
    out = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
    stack = list(fn.body)
    while stack:
        x = stack.pop()
        if isinstance(x, (ast.Lambda, ast.ListComp, ast.SetComp, ast.GeneratorExp,
                          ast.DictComp)):
            continue
        if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store):
            out.add(x.id)
        elif isinstance(x, (ast.FunctionDef, ast.ClassDef)):
            out.add(x.name)
            continue
        stack.extend(ast.iter_child_nodes(x))
    return out


class Lowerer(ControlMixin, ExprMixin):
    def __init__(self, program, static_values: dict):
        self.program = program
        self.static_values = dict(static_values)
        self.static_used: dict = {}
        self.arg_names: dict = {}   # ARG node -> parameter name
        self.arg_defaults: dict = {}
        self.frame: Frame | None = None
        self.fork_parent: dict = {}  # FORK node -> key of the state it forked
        self.b = Builder(program.__name__)

    # ---- the program --------------------------------------------------------------------------
    def lower(self):
        fn = self.program.func
        src = load_source(fn)
        params = list(inspect.signature(fn).parameters.values())
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise src.error(src.tree, f"the program takes *{p.name}; the compiler needs "
                                          "named parameters")
        b = self.b
        b.loc = src.loc(src.tree)
        b.states["s"] = b.emit(Op.BEGIN)
        local_vars = {params[0].name: StateRef("s")}
        bound = self.program.bind_arguments
        for p in params[1:]:
            node = b.emit(Op.ARG, name=p.name)
            self.arg_names[node] = p.name
            if p.name in bound:
                self.arg_defaults[p.name] = bound[p.name]
            elif p.default is not p.empty:
                self.arg_defaults[p.name] = p.default
            local_vars[p.name] = Val(node)
        self.frame = Frame(src, local_vars, "s", assigned_names(src.tree))
        end = self.function_body(src.tree.body)
        if end is None:
            raise src.error(src.tree, "the program never finishes on any path")
        b.restore(end, self.frame.locals)
        value = end.value
        args = [b.state("s")]
        if not (isinstance(value, Const) and value.value is None):
            args.append(self.node_of(value, src.tree))
        b.emit(Op.RET, args)
        return b.g, dict(self.static_used)

    def static_value(self, node):
        """The compile-time value of argument node `node` (the graph is specialized on it)."""
        name = self.arg_names[node]
        if name in self.static_values:
            value = self.static_values[name]
        elif name in self.arg_defaults:
            value = self.arg_defaults[name]
        else:
            raise CompileError(f"argument {name!r} sets a loop range or fork size, so the "
                               "compiler needs its value: give it a default or compile with "
                               f"static={{{name!r}: ...}}", *self.frame.src.where(self.cur))
        try:
            hash(value)
        except TypeError:
            raise CompileError(f"argument {name!r} is used as a compile-time value but "
                               f"{value!r} is not hashable", *self.frame.src.where(self.cur)
                               ) from None
        if name not in self.static_used:
            self.static_used[name] = value
            from .builder import json_exact

            if json_exact(value):
                self.b.g.node(node).attrs["value"] = value
        return value

    def function_body(self, body: list):
        """Compile a function body; returns the snapshot where its returns meet."""
        self.block(body)
        frame = self.frame
        end = self.b.snapshot(frame.locals, Const(None))
        return self.b.merge(frame.returns + [end])

    # ---- statements ---------------------------------------------------------------------------
    cur: ast.AST | None = None

    def error(self, node: ast.AST, msg: str) -> CompileError:
        return self.frame.src.error(node, msg)

    def block(self, stmts: list) -> None:
        for st in stmts:
            if self.b.dead:
                return
            self.cur = st
            self.b.loc = self.frame.src.loc(st)
            handler = getattr(self, f"stmt_{type(st).__name__}", None)
            if handler is None:
                raise self.error(st, f"the compiler does not support `{type(st).__name__}` "
                                     "statements in a program")
            handler(st)

    def stmt_Pass(self, st: ast.Pass) -> None:
        pass

    def stmt_Expr(self, st: ast.Expr) -> None:
        e = st.value
        if isinstance(e, ast.Constant):
            return  # a docstring or a bare literal
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and \
                self.method_statement(e):
            return
        self.value(e)

    def method_statement(self, e: ast.Call) -> bool:
        """`s.user(x)`, `forks.join()`, ... as statements; False if `e` is no such call."""
        target, name = e.func.value, e.func.attr
        key = self.state_of(target)
        if key is not None and name in ("user", "system", "assistant"):
            if len(e.args) > 1 or e.keywords:
                raise self.error(e, f"s.{name} takes one argument")
            if e.args:  # without one, it makes a context manager that is never entered
                self.append(key, [("role_begin", name), *self.items(e.args[0]),
                                  ("role_end", name)])
            return True
        group = self.group_of(target)
        if group is not None and name == "join":
            self.join(group, e)
            return True
        if (key is not None or group is not None) and name not in ("get_var", "text",
                                                                    "messages", "get_meta_info"):
            raise self.error(e, f"the compiler does not support `.{name}(...)` on a program "
                                "state here")
        return False

    def join(self, group: GroupRef, e: ast.Call) -> None:
        args = list(e.args) + [k.value for k in e.keywords if k.arg == "mode"]
        mode = "gather_variable"
        if args:
            ok, mode = self.fold(args[0])
            if not ok or mode not in ("gather_variable", "concate_and_append"):
                raise self.error(e, "join mode must be 'gather_variable' or "
                                    "'concate_and_append'")
        parent = self.fork_parent[group.fork]
        children = [self.b.state(k) for k in group.keys]
        self.b.state_op(parent, Op.JOIN, *children, mode=mode)

    def fork(self, key: str, e: ast.Call) -> GroupRef:
        if len(e.args) > 1 or any(k.arg != "size" for k in e.keywords if k.arg not in
                                  ("position_ids_offset",)):
            raise self.error(e, "fork takes the number of branches")
        size = e.args[0] if e.args else next((k.value for k in e.keywords if k.arg == "size"),
                                             None)
        n = 1
        if size is not None:
            ok, n = self.fold(size, static=True)
            if ok and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise ProgramCheckError(f"fork({n!r}): the number of branches must be a "
                                        "positive integer", *self.frame.src.where(size))
            if not ok:
                raise self.error(size, "the number of fork branches must be known at compile "
                                       "time (a constant or an argument)")
        fork = self.b.emit(Op.FORK, (self.b.state(key),), n=n)
        keys = []
        for i in range(n):
            child = f"{key}/{fork}.{i}"
            self.b.states[child] = self.b.emit(Op.CHILD, (fork,), index=i)
            keys.append(child)
        self.fork_parent[fork] = key
        return GroupRef(fork, tuple(keys))

    def stmt_Assign(self, st: ast.Assign) -> None:
        value = self.assigned_value(st.value)
        for target in st.targets:
            self.assign(target, value)

    def stmt_AnnAssign(self, st: ast.AnnAssign) -> None:
        if st.value is not None:
            self.assign(st.target, self.assigned_value(st.value))

    def assigned_value(self, e: ast.expr):
        group = self.group_expr(e)
        return group if group is not None else self.value(e)

    def group_expr(self, e: ast.expr) -> GroupRef | None:
        """The fork group `e` names or makes (`forks`, `s.fork(n)`), or None."""
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and \
                e.func.attr == "fork":
            key = self.state_of(e.func.value)
            if key is not None:
                return self.fork(key, e)
        return self.group_of(e)

    def assign(self, target: ast.expr, value) -> None:
        if isinstance(target, ast.Name):
            if isinstance(self.frame.locals.get(target.id), StateRef) and \
                    self.frame.locals[target.id].key == self.frame.state_key:
                raise self.error(target, "the program state cannot be reassigned")
            self.frame.locals[target.id] = value
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            if any(isinstance(t, ast.Starred) for t in target.elts):
                raise self.error(target, "starred assignment is not supported")
            n = len(target.elts)
            if isinstance(value, tuple):
                parts = list(value)
            elif isinstance(value, Const):
                try:
                    parts = [Const(x) for x in value.value]
                except TypeError:
                    raise self.error(target, f"cannot unpack {value.value!r}") from None
            elif isinstance(value, GroupRef):
                parts = [StateRef(k) for k in value.keys]
            else:
                whole = self.emit_py(f"_unpack(_1, {n})", [self.node_of(value)], pure=True)
                parts = [Val(self.emit_py(f"_1[{i}]", [whole], pure=True)) for i in range(n)]
            if len(parts) != n:
                raise self.error(target, f"cannot unpack {len(parts)} values into {n} names")
            for t, part in zip(target.elts, parts):
                self.assign(t, part)
            return
        raise self.error(target, "the compiler supports assigning to names only (not to "
                                 "items or attributes) in a program")

    def stmt_AugAssign(self, st: ast.AugAssign) -> None:
        target = st.target
        key = self.state_of(target)
        group = self.group_of(target)
        if (key is not None or group is not None) and not isinstance(st.op, ast.Add):
            raise self.error(st, "a program state only supports `+=`")
        if key is not None:
            return self.append(key, self.items(st.value))
        if group is not None:
            return self.append_group(group, st.value)
        if not isinstance(target, ast.Name):
            raise self.error(target, "augmented assignment to items or attributes is not "
                                     "supported in a program")
        op = INPLACE[type(st.op).__name__]
        rhs = ast.BinOp(left=ast.Name(id=target.id, ctx=ast.Load()), op=st.op, right=st.value)
        old = self.frame.locals.get(target.id)
        if isinstance(old, Const) and not isinstance(old.value, (list, dict, set)):
            ok, v = self.fold(rhs)
            if ok:
                self.frame.locals[target.id] = Const(v)
                return
        if old is None:
            raise self.error(target, f"{target.id!r} is used before it is assigned")
        call = ast.Call(func=ast.Name(id=f"_{op}", ctx=ast.Load()),
                        args=[ast.Name(id=target.id, ctx=ast.Load()), st.value], keywords=[])
        self.frame.locals[target.id] = Val(self.py(ast.copy_location(call, st)))

    def append_group(self, group: GroupRef, e: ast.expr) -> None:
        """`forks += x`: the same items to every branch, a list item by item, or a lambda
        called with each branch's index."""
        n = len(group.keys)
        if isinstance(e, ast.Lambda):
            if len(e.args.args) != 1:
                raise self.error(e, "forks += lambda i: ... takes one parameter")
            name, saved = e.args.args[0].arg, dict(self.frame.locals)
            for i, key in enumerate(group.keys):
                self.frame.locals[name] = Const(i)
                self.append(key, self.items(e.body))
            self.frame.locals.clear()
            self.frame.locals.update(saved)
            return
        if isinstance(e, (ast.List, ast.Tuple)):
            if len(e.elts) != n:
                raise self.error(e, f"appending {len(e.elts)} items to {n} forks")
            per_branch = [self.items(x) for x in e.elts]
        else:
            items = self.items(e)
            per_branch = [items] * n
        for key, items in zip(group.keys, per_branch):
            self.append(key, items)

    # ---- calls of other programs --------------------------------------------------------------
    def try_inline(self, e: ast.Call):
        """Inline `f(s, ...)` where `f` is an `@sgl.function` or a plain Python function and
        `s` a program state; None if `e` is no such call."""
        from ..lang.function import SglFunction

        callee = self.static_object(e.func)
        if isinstance(callee, SglFunction):
            func, bound_args = callee.func, callee.bind_arguments
        elif isinstance(callee, types.FunctionType):
            func, bound_args = callee, {}
        else:
            return None
        key = self.state_of(e.args[0]) if e.args else None
        if key is None:
            return None
        if self.frame.depth >= MAX_INLINE_DEPTH:
            raise self.error(e, f"@sgl.function calls nest deeper than {MAX_INLINE_DEPTH}")
        if any(isinstance(a, ast.Starred) for a in e.args) or any(k.arg is None
                                                                   for k in e.keywords):
            raise self.error(e, "*args and **kwargs in a call of an @sgl.function")
        args = [self.value(a) for a in e.args[1:]]
        kwargs = {k.arg: self.value(k.value) for k in e.keywords}
        kwargs = {**{k: Const(v) for k, v in bound_args.items()}, **kwargs}
        try:
            bound = inspect.signature(func).bind(StateRef(key), *args, **kwargs)
        except TypeError as err:
            raise self.error(e, f"calling {func.__name__}: {err}") from None
        bound.apply_defaults()
        local_vars = {k: (v if isinstance(v, (Const, Val, StateRef, GroupRef)) else Const(v))
                      for k, v in bound.arguments.items()}
        src = load_source(func)
        caller, caller_cur = self.frame, self.cur
        self.frame = Frame(src, local_vars, key, assigned_names(src.tree), caller.depth + 1)
        try:
            end = self.function_body(src.tree.body)
        finally:
            self.frame, self.cur = caller, caller_cur
        if end is None:
            self.b.dead = True
            return Const(None)
        saved = dict(caller.locals)
        self.b.restore(end, caller.locals)
        caller.locals.clear()
        caller.locals.update(saved)
        return end.value


def lower_program(program, static_values: dict | None = None):
    """(graph, static arguments used) for an SglFunction."""
    return Lowerer(program, static_values or {}).lower()
