"""Emits graph nodes while the parser walks a program, lowering structured control flow to
gating: code under `if c:` reads its states through `branch(state, c, arm)` nodes (dead when the
arm is not taken), and where paths meet (after an `if`, a loop with `break`, a function with
several `return`s) differing states and values become `merge` nodes.

A *guard* is the path of (condition node, arm) pairs under which code runs. Every node records
the guard it was made under; a value is gated up to a longer guard by wrapping it in branch
nodes for the missing pairs. Conditions are themselves gated when an `if` reads them, so a
branch on a condition is dead whenever the code that computed the condition did not run; the
inputs of a merge are therefore live on mutually exclusive paths, and exactly one is live."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..ir.graph import Graph
from ..ir.ops import Op

Guard = tuple  # ((cond_node, arm), ...)


# ---- what a Python name is bound to while compiling -------------------------------------------
@dataclass(eq=False)
class Const:
    """A value known at compile time."""
    value: object


@dataclass(eq=False)
class Val:
    """A value computed at run time by graph node `node`."""
    node: float


@dataclass(eq=False)
class StateRef:
    """A program state (the function's `s`, or a fork branch); its current node is in
    `Builder.states[key]`."""
    key: str


@dataclass(eq=False)
class GroupRef:
    """The branches of a fork (`forks = s.fork(n)`)."""
    fork: float
    keys: tuple


def same_binding(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, Const):
        try:
            return a.value is b.value or (type(a.value) is type(b.value) and
                                          bool(a.value == b.value))
        except Exception:  # noqa: BLE001 - incomparable values differ
            return False
    if isinstance(a, Val):
        return a.node == b.node
    if isinstance(a, StateRef):
        return a.key == b.key
    return a.fork == b.fork


def json_exact(v) -> bool:
    """Whether `v` survives a JSON round trip unchanged (types included)."""
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(json_exact(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and json_exact(x) for k, x in v.items())
    return False


@dataclass
class Snapshot:
    """Where a path stands: each state's node, the frame's local bindings, its guard, and
    (for a `return`) the returned binding."""
    states: dict
    locals: dict
    guard: Guard
    value: object = None


class Builder:
    def __init__(self, name: str):
        self.g = Graph(name=name)
        self.guard: Guard = ()
        self.node_guard: dict = {}
        self.states: dict[str, float] = {}
        self.dead = False  # the current path has ended (return/break/continue)
        self.loc: str | None = None
        self._gates: dict = {}
        self._true = None
        self._new_merges: list = []

    def emit(self, op: Op, args=(), **attrs) -> float:
        n = self.g.add(op, args, attrs, self.loc)
        self.node_guard[n] = () if not args else self.guard
        return n

    # ---- gating -------------------------------------------------------------------------------
    def gate(self, node, guard: Guard, start: int = 0):
        """`node`, wrapped in branch nodes for the pairs of `guard` (from index `start`) it was
        not made under."""
        for i in range(max(start, len(self.node_guard[node])), len(guard)):
            cond, arm = guard[i]
            key = (node, cond, arm)
            if key not in self._gates:
                b = self.g.add(Op.BRANCH, (node, cond), {"arm": arm}, self.loc)
                self.node_guard[b] = guard[:i + 1]
                self._gates[key] = b
            node = self._gates[key]
        return node

    def state(self, key: str):
        """The current node of state `key`, gated to the current path."""
        n = self.gate(self.states[key], self.guard)
        self.states[key] = n
        return n

    def state_op(self, key: str, op: Op, *extra, **attrs) -> float:
        """Append op to state `key` (its node becomes the op's)."""
        n = self.emit(op, (self.state(key),) + extra, **attrs)
        self.states[key] = n
        return n

    # ---- paths --------------------------------------------------------------------------------
    def snapshot(self, local_vars: dict, value=None) -> Snapshot | None:
        if self.dead:
            return None
        return Snapshot(dict(self.states), dict(local_vars), self.guard, value)

    def restore(self, snap: Snapshot, local_vars: dict) -> None:
        self.states = dict(snap.states)
        local_vars.clear()
        local_vars.update(snap.locals)
        self.guard = snap.guard
        self.dead = False

    def merge(self, snaps: list) -> Snapshot | None:
        """One snapshot where the live ones meet (None if no path continues)."""
        live = [s for s in snaps if s is not None]
        if len(live) <= 1:
            return live[0] if live else None
        common = 0
        while all(len(s.guard) > common and s.guard[common] == live[0].guard[common]
                  for s in live):
            common += 1
        guard = live[0].guard[:common]
        saved, self.guard = self.guard, guard
        if not _complementary(live, common):
            # the paths that meet here are not all of `guard` (some left for a break, continue
            # or return): a node live exactly on them keeps the guard exact
            live_here = self.emit(Op.MERGE, [self.gate(self.true(), s.guard, common)
                                             for s in live])
            guard = guard + ((live_here, True),)
        self._new_merges = []
        states = {k: self._merge_nodes([s.states[k] for s in live], live, common)
                  for k in live[0].states if all(k in s.states for s in live)}
        local_vars = {}
        for name in live[0].locals:
            if all(name in s.locals for s in live):
                b = self._merge_bindings([s.locals[name] for s in live], live, common)
                if b is not None:  # a binding that cannot merge is unusable afterwards
                    local_vars[name] = b
        value = None
        if all(s.value is not None for s in live):
            value = self._merge_bindings([s.value for s in live], live, common)
            assert value is not None, "return values that cannot be merged"
        for n in self._new_merges:
            self.node_guard[n] = guard  # a merge is live exactly where the paths meet
        self.guard = saved
        return Snapshot(states, local_vars, guard, value)

    def _merge_nodes(self, nodes: list, snaps: list, common: int):
        if all(n == nodes[0] for n in nodes):
            return nodes[0]
        inputs = [self.gate(n, s.guard, common) for n, s in zip(nodes, snaps)]
        n = self.emit(Op.MERGE, inputs)
        self._new_merges.append(n)
        return n

    def true(self):
        """One shared `const true` (gated copies of it mark where paths are live)."""
        if self._true is None:
            self._true = self.const(True)
        return self._true

    def _merge_bindings(self, bindings: list, snaps: list, common: int):
        if all(same_binding(b, bindings[0]) for b in bindings):
            return bindings[0]
        nodes = []
        for b in bindings:
            if isinstance(b, Val):
                nodes.append(b.node)
            elif isinstance(b, Const) and json_exact(b.value):
                nodes.append(self.const(b.value))
            else:
                return None
        return Val(self._merge_nodes(nodes, snaps, common))

    def const(self, value) -> float:
        n = self.g.add(Op.CONST, (), {"value": json.loads(json.dumps(value))}, self.loc)
        self.node_guard[n] = ()
        return n


def _complementary(snaps: list, common: int) -> bool:
    """Whether the paths are the two arms of one condition and nothing else (so together they
    are exactly the common guard)."""
    if len(snaps) != 2:
        return False
    a, b = (s.guard[common:] for s in snaps)
    return len(a) == len(b) == 1 and a[0][0] == b[0][0] and a[0][1] != b[0][1]
