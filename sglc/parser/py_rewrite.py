"""The rewrite behind a `py` node: an expression's program-bound names become operands
`_1, _2, ...` (states as read-only views, fork groups as lists of views), `s["x"]` becomes a
`get`, and state-changing calls inside an expression are rejected with a source location."""

from __future__ import annotations

import ast

from .builder import Const, GroupRef, StateRef
from .fold import literal_code

#: methods of a state or fork group that change it; only allowed as statements
STATE_WRITES = frozenset({"fork", "user", "system", "assistant", "var_scope", "copy", "set_var",
                          "join", "sync"})


class PyRewriter(ast.NodeTransformer):
    """Turns an expression into `py` code: names bound in the program become operands `_k`
    (states as read-only views, fork groups as lists of views), `s["x"]` becomes a `get`."""

    def __init__(self, lw):
        self.lw = lw
        self.operands: list = []
        self.shadowed: list[set] = []

    def operand(self, node) -> ast.Name:
        if node not in self.operands:
            self.operands.append(node)
        return ast.Name(id=f"_{self.operands.index(node) + 1}", ctx=ast.Load())

    def is_shadowed(self, name: str) -> bool:
        return any(name in s for s in self.shadowed)

    def error(self, e: ast.AST, msg: str):
        return self.lw.frame.src.error(e, msg)

    def visit_Name(self, e: ast.Name):
        if not isinstance(e.ctx, ast.Load) or self.is_shadowed(e.id):
            return e
        frame = self.lw.frame
        binding = frame.locals.get(e.id)
        if binding is None:
            if e.id in frame.assigned:
                raise self.error(e, f"{e.id!r} is used here before it is assigned on every path")
            return e  # a global, read at run time
        if isinstance(binding, Const):
            code = literal_code(binding.value)
            if code is not None:
                return ast.parse(code, mode="eval").body
        if isinstance(binding, GroupRef):
            return ast.List(elts=[self.operand(self.lw.b.state(k)) for k in binding.keys],
                            ctx=ast.Load())
        if isinstance(binding, StateRef):
            return self.operand(self.lw.b.state(binding.key))
        return self.operand(self.lw.node_of(binding, e))

    def visit_Subscript(self, e: ast.Subscript):
        key = self.lw.state_of(e.value)
        if key is not None and not self.shadows(e.value):
            ok, name = self.lw.fold(e.slice)
            if ok and isinstance(name, str):
                return self.operand(self.lw.get_var(key, name, e))
        key = self.lw.state_of(e)
        if key is not None and not self.shadows(e.value):
            return self.operand(self.lw.b.state(key))
        return self.generic_visit(e)

    def shadows(self, e: ast.expr) -> bool:
        return isinstance(e, ast.Name) and self.is_shadowed(e.id)

    def visit_Call(self, e: ast.Call):
        f = e.func
        if isinstance(f, ast.Attribute) and f.attr in STATE_WRITES and \
                not self.shadows(f.value) and (self.lw.state_of(f.value) is not None or
                                               self.lw.group_of(f.value) is not None):
            raise self.error(e, f"`.{f.attr}(...)` changes a program state; it can only be a "
                                "statement of its own here")
        for a in list(e.args) + [k.value for k in e.keywords]:
            if isinstance(a, ast.Starred):
                a = a.value
            if self.lw.state_of(a) is not None and not self.shadows(a):
                raise self.error(a, "passes a program state to a function the compiler cannot "
                                    "see into (it might append to it); make the function an "
                                    "@sgl.function to have it inlined")
        return self.generic_visit(e)

    def _scoped(self, e, names: set):
        self.shadowed.append(names)
        try:
            return self.generic_visit(e)
        finally:
            self.shadowed.pop()

    def visit_Lambda(self, e: ast.Lambda):
        args = e.args
        return self._scoped(e, {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
                            | {a.arg for a in (args.vararg, args.kwarg) if a})

    def _comp(self, e):
        names = {n.id for g in e.generators for n in ast.walk(g.target)
                 if isinstance(n, ast.Name)}
        return self._scoped(e, names)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comp
