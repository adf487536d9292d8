"""`Node` (an op, its operands and attributes) and `Graph`, a `networkx.DiGraph` of nodes whose
one canonical text form is `str(graph)`: one SSA line per node, in topological order.

An edge u -> v means node v reads u's result. Node ids are integers, never reused, and the graph
keeps an explicit sequence of them (`graph.graph["order"]`): the canonical order is the
topological order that breaks ties by position in that sequence, and printing numbers nodes %0,
%1, ... in that order, so a graph read back from its text prints identically. Passes insert a
node `before=` or `after=` another (a position in the sequence, however many times) and
renumber at the end (`canonical`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import networkx as nx

from .ops import SIGNATURES, Kind, Op


@dataclass
class Node:
    op: Op
    args: tuple = ()
    attrs: dict = field(default_factory=dict)
    # where the node came from; neither is part of the text form
    loc: str | None = None  # "file:line" in the program's source
    fn: object = None       # for `py`: the function whose globals its code reads

    def copy(self) -> Node:
        return Node(self.op, tuple(self.args), json.loads(json.dumps(self.attrs)), self.loc,
                    self.fn)


def format_value(v) -> str:
    """An attribute value as JSON (non-ASCII kept readable)."""
    return json.dumps(v, ensure_ascii=False)


def _attr_order(key: str) -> tuple:
    return (key != "name", key)  # `name` first, then alphabetical


class Graph(nx.DiGraph):
    """A program as a DAG of `Node`s (node attribute "node"); `graph.graph["name"]` names it."""

    # ---- building -----------------------------------------------------------------------------
    @property
    def order(self) -> list[int]:
        """Node ids in sequence (ties of the topological order go to the earlier)."""
        return self.graph.setdefault("order", [])

    def add(self, op: Op, args=(), attrs: dict | None = None, loc: str | None = None,
            id: int | None = None, before: int | None = None, after: int | None = None) -> int:
        """Add a node reading `args`; returns its id (the next integer unless `id` is given).
        It goes last in the sequence, or just before node `before` / just after `after`."""
        if id is None:
            id = max(self.nodes, default=-1) + 1
        assert isinstance(id, int) and id not in self, f"node id {id} is taken or not an int"
        if before is not None:
            self.order.insert(self.order.index(before), id)
        elif after is not None:
            self.order.insert(self.order.index(after) + 1, id)
        else:
            self.order.append(id)
        self.add_node(id, node=Node(op, tuple(args), dict(attrs or {}), loc))
        for a in args:
            assert a in self, f"operand %{a} of new {op.value} node does not exist"
            self.add_edge(a, id)
        return id

    def node(self, i) -> Node:
        return self.nodes[i]["node"]

    def op(self, i) -> Op:
        return self.nodes[i]["node"].op

    def set_args(self, i, args) -> None:
        """Replace node i's operands, keeping the edges in step."""
        for a in list(self.predecessors(i)):
            self.remove_edge(a, i)
        self.node(i).args = tuple(args)
        for a in args:
            self.add_edge(a, i)

    def replace_uses(self, old, new, skip=()) -> None:
        """Every node but those in `skip` that reads `old` reads `new` instead."""
        for u in list(self.successors(old)):
            if u in skip or u == new:
                continue
            self.set_args(u, [new if a == old else a for a in self.node(u).args])

    def remove(self, i) -> None:
        assert not list(self.successors(i)), f"removing %{i}, which is still read"
        self.remove_node(i)
        self.order.remove(i)

    def remove_nodes_from(self, nodes) -> None:
        nodes = set(nodes)
        super().remove_nodes_from(nodes)
        self.graph["order"] = [n for n in self.order if n not in nodes]

    def users(self, i) -> list:
        return sorted(self.successors(i))

    def nodes_of(self, *ops: Op) -> list:
        return [n for n in self.topo_order() if self.op(n) in ops]

    def kind(self, i) -> Kind:
        """What node i yields: a state, a value, a group or nothing."""
        node = self.node(i)
        result = SIGNATURES[node.op].result
        if result is Kind.SAME:
            return self.kind(node.args[0]) if node.args else Kind.VALUE
        return result

    # ---- order, copies, text ------------------------------------------------------------------
    def topo_order(self) -> list:
        """The canonical order: topological, ties broken by position in the sequence."""
        pos = {n: k for k, n in enumerate(self.order)}
        assert len(pos) == len(self), "the node sequence and the nodes differ"
        return list(nx.lexicographical_topological_sort(self, key=pos.__getitem__))

    def clone(self) -> Graph:
        g = Graph(name=self.graph.get("name", "program"))
        for n in self.order:
            g.add_node(n, node=self.node(n).copy())
        g.graph["order"] = list(self.order)
        g.add_edges_from(self.edges)
        return g

    def canonical(self) -> Graph:
        """A copy numbered 0..N-1 in canonical order."""
        order = self.topo_order()
        new = {old: i for i, old in enumerate(order)}
        g = Graph(name=self.graph.get("name", "program"))
        for old in order:
            node = self.node(old).copy()
            g.add(node.op, [new[a] for a in node.args], node.attrs, node.loc, id=new[old])
            g.node(new[old]).fn = node.fn
        return g

    def format_line(self, i, number: dict) -> str:
        node = self.node(i)
        line = f"%{number[i]} = {node.op.value}"
        if node.args:
            line += " " + ", ".join(f"%{number[a]}" for a in node.args)
        if node.attrs:
            items = sorted(node.attrs.items(), key=lambda kv: _attr_order(kv[0]))
            line += " {" + ", ".join(f"{k}={format_value(v)}" for k, v in items) + "}"
        return line

    def to_text(self, marks: dict | None = None) -> str:
        """The canonical text; `marks` maps node ids to notes appended as comments."""
        try:
            order = self.topo_order()
        except nx.NetworkXUnfeasible:  # a cycle: print in sequence so the verifier can show it
            order = list(self.order)
        number = {n: i for i, n in enumerate(order)}
        lines = [f"program {self.graph.get('name', 'program')}"]
        for n in order:
            line = self.format_line(n, number)
            if marks and n in marks:
                line += f"  # <-- {marks[n]}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text()

    def same_as(self, other: Graph) -> bool:
        return str(self) == str(other)
