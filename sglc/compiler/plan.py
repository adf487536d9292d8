"""What the graph executor runs: a compiled graph's per-program plan (node order, sampling
parameters, the main chain), the Python environment of its opaque expressions, one program
instance's node states, and the views of snapshots its Python code and its caller see."""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import replace

from ..ir.ops import GEN_PARAMS, Op
from ..lang.interpreter import StreamExecutor
from ..lang.primitives import (
    ProgramError,
    SglConstantText,
    SglGen,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglVarScopeBegin,
    SglVarScopeEnd,
    as_expr,
)
from ..lang.snapshot import Snapshot
from ..lang.state import ProgramState

ATTR_TO_FIELD = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}
#: ops a running gen's request continues through (nothing but the state in, constant text out)
CONTINUING_OPS = (Op.TEXT, Op.ROLE_BEGIN, Op.ROLE_END, Op.SCOPE_BEGIN, Op.SCOPE_END, Op.GEN)


def _unpack(value, n: int) -> tuple:
    t = tuple(value)
    if len(t) != n:
        raise ValueError(f"expected {n} values to unpack, got {len(t)}")
    return t


HELPERS = {"_unpack": _unpack, **{f"_{name}": getattr(operator, name) for name in (
    "iadd", "isub", "imul", "imatmul", "itruediv", "ifloordiv", "imod", "ipow", "ilshift",
    "irshift", "ior", "ixor", "iand")}}


class SnapshotView(ProgramState):
    """A read-only `ProgramState` over one snapshot of a compiled program's state, as Python
    code in the program sees states (it reads, calls functions, iterates text; it never
    appends, forks or sets variables)."""

    def __init__(self, snapshot: Snapshot, caller: StreamExecutor):
        super().__init__(StreamExecutor(caller.backend, caller.arguments, caller.default_params,
                                        caller.chat_template, use_thread=False, state=snapshot))

    def _append(self, expr, loc) -> None:
        raise ProgramError("this is a snapshot of a compiled program's state; it cannot be "
                           "appended to here")

    def fork(self, *args, **kwargs):
        raise ProgramError("a snapshot of a compiled program's state cannot be forked")

    def set_var(self, name: str, value) -> None:
        raise ProgramError(f"s[{name!r}] = ...: a snapshot of a compiled program's state is "
                           "read-only")


class CallerView(StreamExecutor):
    """The state a compiled program's caller holds (no worker thread): the executor makes it
    show the program's progress, and the caller's readers wait on it as on an eager state."""

    def show(self, other: Snapshot, events: bool = True, done: bool = False) -> None:
        """Make this state (a caller's view) show snapshot `other` and wake whoever waits on
        it (`events`: on the variables `other` has; `done`: on every variable, and the open
        role is final too)."""
        with self.cond:
            own = self.state
            self.state = other if done else replace(other, role=own.role,
                                                    role_begin=own.role_begin)
            for name, ev in self.variable_event.items():
                if done or (events and name in other.variables):
                    ev.set()
            self.cond.notify_all()

    def show_piece(self, name: str | None, piece: str) -> None:
        """A streamed piece of gen `name`'s text, shown before the gen is done."""
        with self.cond:
            old = self.state.variables.get(name)
            self.state = self.state.filled(piece).with_var(
                name, old + piece if isinstance(old, str) else piece)
            self.cond.notify_all()


def _has_model_call(expr) -> bool:
    return any(isinstance(x, (SglGen, SglSelect)) for x in expr.flatten())


def appends_model_call(node, value) -> bool:
    """Whether an `append` node of `value` runs a gen or select (a value it formats never)."""
    return "format" not in node.attrs and "conversion" not in node.attrs and \
        _has_model_call(as_expr(value))


def node_expr(node, args):
    """The language expression a text, append, role or scope node applies to its state."""
    op, a = node.op, node.attrs
    if op is Op.TEXT:
        return SglConstantText(a["value"])
    if op is Op.APPEND:
        value = args[1]
        if "format" in a or "conversion" in a:
            conv = {"r": repr, "s": str, "a": ascii}.get(a.get("conversion"))
            value = format(conv(value) if conv else value, a.get("format", ""))
        return as_expr(value)
    return {Op.ROLE_BEGIN: lambda: SglRoleBegin(a["role"]),
            Op.ROLE_END: lambda: SglRoleEnd(a["role"]),
            Op.SCOPE_BEGIN: lambda: SglVarScopeBegin(a["name"]),
            Op.SCOPE_END: lambda: SglVarScopeEnd(a["name"])}[op]()


class Plan:
    """What the scheduler needs of one graph, computed once."""

    def __init__(self, graph, func):
        self.graph, self.func = graph, func
        order = graph.topo_order()
        self.rank = {n: i for i, n in enumerate(order)}
        self.nodes = {n: graph.node(n) for n in order}
        self.num_deps = {n: len(set(self.nodes[n].args)) for n in order}
        self.users = {n: sorted(set(graph.successors(n)), key=self.rank.get) for n in order}
        self.sources = [n for n in order if not self.num_deps[n]]
        self.ret = next(n for n in order if self.nodes[n].op is Op.RET)
        self.main = self._main_chain()
        self.group_of, self.groups = {}, defaultdict(list)
        self.params, self.selects, self.code = {}, {}, {}
        from ..lang.choices import (
            greedy_token_selection,
            token_length_normalized,
            unconditional_likelihood_normalized,
        )
        methods = {m.name: m for m in (token_length_normalized, greedy_token_selection,
                                       unconditional_likelihood_normalized)}
        for n, node in self.nodes.items():
            a = node.attrs
            if "group" in a and node.op in (Op.GEN, Op.SELECT):
                self.group_of[n] = a["group"]
                self.groups[a["group"]].append(n)
            if node.op is Op.GEN:
                self.params[n] = SglSamplingParams(**{ATTR_TO_FIELD.get(k, k): v
                                                      for k, v in a.items() if k in GEN_PARAMS})
            elif node.op is Op.SELECT:
                self.selects[n] = (a.get("temperature", 0.0),
                                   methods[a.get("choices_method", "token_length_normalized")])
            elif node.op is Op.PY:
                self.code[n] = compile(a["code"], f"<sglc %{n}: {node.loc or 'py'}>", "eval")
        self.segments = {n: self._segment_after(n) for n, node in self.nodes.items()
                         if node.op is Op.GEN and n not in self.group_of}
        self.var_names = sorted({a["name"] for node in self.nodes.values()
                                 for a in [node.attrs] if node.op in (
                                     Op.GEN, Op.SELECT, Op.SCOPE_END) and a.get("name")})

    def _segment_after(self, n) -> list:
        """The nodes a gen's request can carry on through (whole-program execution): constant
        text, roles, scopes and appends (of values known before the gen: checked when it
        runs), each the only op continuing the state before it, up to and including the last
        gen reachable that way (empty if no second gen follows)."""
        chain, segment = [], []
        while True:
            nexts = [u for u in self.users[n] if self.nodes[u].args[:1] == (n,) and u not in
                     self.group_of and (self.nodes[u].op in CONTINUING_OPS and
                                        len(self.nodes[u].args) == 1 or
                                        self.nodes[u].op is Op.APPEND)]
            if len(nexts) != 1:
                return segment
            n = nexts[0]
            chain.append(n)
            if self.nodes[n].op is Op.GEN:
                segment = list(chain)

    def _main_chain(self) -> set:
        """The nodes the returned state is built through (what a streamed state shows)."""
        out, stack = set(), [self.nodes[self.ret].args[0]]
        while stack:
            n = stack.pop()
            if n in out:
                continue
            out.add(n)
            node = self.nodes[n]
            if node.op is Op.MERGE:
                stack.extend(node.args)
            elif node.args and node.op is not Op.CHILD:
                stack.append(node.args[0])
        return out


class Envs(dict):
    """Globals for `py` code, per function (None: the program's own), built on first use:
    the function's module globals, its closure's values and the executor's helpers."""

    def __init__(self, func):
        super().__init__()
        self.func = func

    def __missing__(self, fn):
        f = fn or self.func
        env = dict(f.__globals__)
        code = getattr(f, "__code__", None)
        for name, cell in zip(code.co_freevars if code else (), f.__closure__ or ()):
            try:
                env[name] = cell.cell_contents
            except ValueError:
                pass
        env.update(HELPERS)
        self[fn] = env
        return env


class Instance:
    """One run of a program: its arguments, its node values, the state its caller holds."""

    def __init__(self, plan: Plan, arguments: dict, state: ProgramState, env: dict):
        self.plan, self.arguments, self.state, self.env = plan, arguments, state, env
        self.values: dict = {}
        self.remaining = dict(plan.num_deps)
        self.group_ready: dict = defaultdict(list)
        self.group_resolved: dict = defaultdict(int)
        self.failed = self.finished = False
        self.shown = -1  # rank of the main-chain node the caller's state shows

    @property
    def mirror(self) -> CallerView:
        return self.state.stream_executor
