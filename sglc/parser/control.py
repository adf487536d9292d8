"""Control flow → gating: loops over static ranges (and over fork branches) are unrolled; `if`
on a run-time value reads states through branch nodes and meets again in merges; `break`,
`continue` and `return` end a path, whose snapshot joins the others where the paths meet (the
end of the iteration, the loop, the function). `with s.user()/var_scope()/copy()` open and
close what they name."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from ..ir.ops import Op
from .builder import Const, GroupRef, StateRef

MAX_UNROLL = 1024
MAX_DATA_UNROLL = 32  # unrolled iterations of a loop whose condition reads generated text


@dataclass
class Loop:
    with_depth: int
    breaks: list = field(default_factory=list)
    continues: list = field(default_factory=list)


class ControlMixin:
    """Statement handlers for control flow; mixed into `Lowerer`."""

    def stmt_If(self, st: ast.If) -> None:
        ok, test = self.fold(st.test)
        if not ok:  # `generated == "stop" or step == 2`: a known operand may decide it
            ok, test = self._fold_truth(st.test)
        if ok:
            return self.block(st.body if test else st.orelse)
        binding = self.value(st.test)
        if isinstance(binding, (StateRef, GroupRef)):  # objects: always true
            return self.block(st.body)
        b, frame = self.b, self.frame
        cond = b.gate(self.node_of(binding, st.test), b.guard)
        entry = b.snapshot(frame.locals)
        arms = []
        for arm, body in ((True, st.body), (False, st.orelse)):
            b.restore(entry, frame.locals)
            b.guard = entry.guard + ((cond, arm),)
            self.block(body)
            arms.append(b.snapshot(frame.locals))
        self.continue_from(b.merge(arms))

    def continue_from(self, snap) -> None:
        if snap is None:
            self.b.dead = True
        else:
            self.b.restore(snap, self.frame.locals)

    def stmt_For(self, st: ast.For) -> None:
        if st.orelse:
            raise self.error(st, "for ... else is not supported")
        items = self.loop_items(st.iter)
        loop = Loop(self.frame.with_depth)
        self.frame.loops.append(loop)
        try:
            for item in items:
                self.cur = st
                self.assign(st.target, item)
                if not self._iteration(loop, st.body):
                    break
        finally:
            self.frame.loops.pop()
        self.continue_from(self.b.merge(loop.breaks + [self.b.snapshot(self.frame.locals)]))

    def _iteration(self, loop: Loop, body: list) -> bool:
        """One unrolled iteration; its `continue`s meet at its end. False once every path has
        left the loop (break / return)."""
        self.block(body)
        self.continue_from(self.b.merge(loop.continues + [self.b.snapshot(self.frame.locals)]))
        loop.continues = []
        return not self.b.dead

    def stmt_Try(self, st: ast.Try) -> None:
        """`try` around appends (`s += gen(...)`): eagerly an append never raises a model's
        error (it surfaces where a variable is read), so the handlers cannot run and the body
        and `else` are compiled as they are. Anything else in the body could raise where it
        is, so such a program runs eagerly."""
        if st.finalbody:
            raise self.error(st, "`try ... finally` is not compiled; the program runs eagerly")
        for x in st.body:
            ok = isinstance(x, ast.AugAssign) and isinstance(x.op, ast.Add) and \
                self.state_of(x.target) is not None and self.fold(x.value)[0]
            if not ok:
                raise self.error(x, "a `try` block is compiled only when it holds appends of "
                                    "constant text and gen/select calls (anything else could "
                                    "raise where it stands); the program runs eagerly")
        self.block(st.body)
        self.block(st.orelse)

    def stmt_While(self, st: ast.While) -> None:
        """Unrolled. A condition known at compile time decides each iteration there; one that
        reads generated text becomes `if not cond: break` at the top of the iteration (a data-
        dependent exit, like any other `break`). Unrolling ends where every path has left the
        loop: a conjunct known to be false (`while not done and step < 5`) or a compile-time
        `break` in the body; a loop that nothing bounds within MAX_DATA_UNROLL data-dependent
        iterations runs eagerly (the error says how to bound it)."""
        if st.orelse:
            raise self.error(st, "while ... else is not supported")
        loop = Loop(self.frame.with_depth)
        self.frame.loops.append(loop)
        data_iterations = 0
        try:
            for _ in range(MAX_UNROLL + 1):
                self.cur = st
                ok, test = self.fold(st.test)
                if ok and not test:
                    break
                if not ok or loop.breaks:  # the loop's end depends on generated text
                    data_iterations += 1
                if not ok:
                    rest = self._run_time_conjuncts(st.test)
                    if rest is None:  # a conjunct is false now
                        break
                if data_iterations > MAX_DATA_UNROLL:
                    raise self.error(st.test, (
                        "this `while` loop ends on generated text and nothing bounds it within "
                        f"{MAX_DATA_UNROLL} iterations at compile time (add a counter, e.g. "
                        "`while ... and step < 8`, or a `break` after a fixed count); the "
                        "program runs eagerly"))
                if not ok:
                    leave = ast.If(test=ast.UnaryOp(op=ast.Not(), operand=rest),
                                   body=[ast.Break()], orelse=[])
                    ast.copy_location(leave, st.test)
                    ast.fix_missing_locations(leave)
                    self.stmt_If(leave)
                    if self.b.dead:
                        break
                if not self._iteration(loop, st.body):
                    break
            else:
                raise self.error(st, f"the loop runs more than {MAX_UNROLL} times; the "
                                     "compiler unrolls loops")
        finally:
            self.frame.loops.pop()
        self.continue_from(self.b.merge(loop.breaks + [self.b.snapshot(self.frame.locals)]))

    def _fold_truth(self, test: ast.expr) -> tuple[bool, bool]:
        """The truth of an `and` / `or` test one of whose operands decides it at compile time
        (an `if` only asks for truth; reading generated text has no side effect)."""
        if not isinstance(test, ast.BoolOp):
            return False, False
        decider = isinstance(test.op, ast.Or)  # the value that decides: True for or
        for part in test.values:
            ok, v = self.fold(part)
            if not ok:
                ok, v = self._fold_truth(part)
            if ok and bool(v) == decider:
                return True, decider
        return False, False

    def _run_time_conjuncts(self, test: ast.expr) -> ast.expr | None:
        """`test` without its conjuncts known to be true now; None if one is known false."""
        parts = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) \
            else [test]
        rest = []
        for part in parts:
            ok, v = self.fold(part)
            if not ok:
                rest.append(part)
            elif not v:
                return None
        if len(rest) == 1:
            return rest[0]
        return ast.copy_location(ast.BoolOp(op=ast.And(), values=rest), test)

    def loop_items(self, it: ast.expr) -> list:
        """What a `for` loop binds per iteration: fork branches (`forks`, `s.fork(n)`), compile-time
        values, and `enumerate(...)` / `zip(...)` of those, item by item."""
        group = self.group_expr(it)
        if group is not None:
            return [StateRef(k) for k in group.keys]
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.args \
                and it.func.id in ("enumerate", "zip") \
                and it.func.id not in self.frame.locals and self._touches_forks(it):
            if it.func.id == "zip":
                if it.keywords:
                    raise self.error(it, "zip over fork branches takes no keyword arguments")
                return [tuple(items) for items in zip(*(self.loop_items(a) for a in it.args))]
            start = 0
            start_expr = it.args[1] if len(it.args) > 1 else next(
                (k.value for k in it.keywords if k.arg == "start"), None)
            if start_expr is not None:
                ok, start = self.fold(start_expr, static=True)
                if not ok or not isinstance(start, int):
                    raise self.error(start_expr, "enumerate's start must be a constant")
            return [(Const(start + i), x) for i, x in enumerate(self.loop_items(it.args[0]))]
        ok, values = self.fold(it, static=True)
        if not ok:
            raise self.error(it, "the compiler unrolls loops, so it must know what this loop "
                                 "iterates over at compile time (a range over constants or "
                                 "arguments, a constant list, fork branches, or enumerate / zip "
                                 "of those)")
        try:
            values = list(values)
        except TypeError:
            raise self.error(it, f"cannot iterate over {values!r}") from None
        if len(values) > MAX_UNROLL:
            raise self.error(it, f"the loop has {len(values)} iterations; the compiler unrolls "
                                 f"at most {MAX_UNROLL}")
        return [Const(v) for v in values]

    def _touches_forks(self, call: ast.Call) -> bool:
        """Whether an enumerate/zip call iterates (at some depth) over fork branches."""
        for a in call.args[:1] if call.func.id == "enumerate" else call.args:
            if isinstance(a, ast.Call) and isinstance(a.func, ast.Attribute) and \
                    a.func.attr == "fork":
                return True
            if self.group_of(a) is not None:
                return True
            if isinstance(a, ast.Call) and isinstance(a.func, ast.Name) and \
                    a.func.id in ("enumerate", "zip") and self._touches_forks(a):
                return True
        return False

    def _exit(self, st, kind: str) -> None:
        frame = self.frame
        if not frame.loops:
            raise self.error(st, f"`{kind}` outside a loop")
        loop = frame.loops[-1]
        if frame.with_depth != loop.with_depth:
            raise self.error(st, f"`{kind}` inside a `with` block is not supported")
        (loop.breaks if kind == "break" else loop.continues).append(
            self.b.snapshot(frame.locals))
        self.b.dead = True

    def stmt_Break(self, st: ast.Break) -> None:
        self._exit(st, "break")

    def stmt_Continue(self, st: ast.Continue) -> None:
        self._exit(st, "continue")

    def stmt_Return(self, st: ast.Return) -> None:
        frame = self.frame
        if frame.with_depth:
            raise self.error(st, "`return` inside a `with` block is not supported")
        value = Const(None) if st.value is None else self.value(st.value)
        frame.returns.append(self.b.snapshot(frame.locals, value))
        self.b.dead = True

    def stmt_With(self, st: ast.With) -> None:
        closers = []
        for item in st.items:
            closers.append(self.enter(item))
        self.frame.with_depth += 1
        try:
            self.block(st.body)
        finally:
            self.frame.with_depth -= 1
        for close in reversed(closers):
            if not self.b.dead:
                close()

    def enter(self, item: ast.withitem):
        """Open a `with` item; returns what closes it."""
        e = item.context_expr
        if not (isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute)):
            raise self.error(e, "the compiler supports `with s.user()/system()/assistant()/"
                                "var_scope(name)/copy()` only")
        key, name = self.state_of(e.func.value), e.func.attr
        if key is None:
            raise self.error(e, "`with` on something other than a program state")
        if name in ("user", "system", "assistant") and not e.args and item.optional_vars is None:
            self.append(key, [("role_begin", name)])
            return lambda: self.append(key, [("role_end", name)])
        if name == "var_scope" and len(e.args) == 1 and item.optional_vars is None:
            ok, var = self.fold(e.args[0])
            if not ok or not isinstance(var, str):
                raise self.error(e.args[0], "var_scope needs a name known at compile time")
            self.append(key, [("scope_begin", var)])
            return lambda: self.append(key, [("scope_end", var)])
        if name == "copy" and not e.args:
            group = self.fork(key, ast.Call(func=e.func, args=[], keywords=[]))
            if item.optional_vars is not None:
                self.assign(item.optional_vars, StateRef(group.keys[0]))
            return lambda: self.b.state_op(key, Op.JOIN, self.b.state(group.keys[0]),
                                           mode="gather_variable")
        raise self.error(e, f"`with s.{name}(...)` is not supported by the compiler")

