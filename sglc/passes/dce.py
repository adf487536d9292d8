"""Dead-code elimination: drop every node whose result cannot reach the program's result.

The result is the `ret` node plus the side effects of `py` nodes not marked pure (and the
`arg` nodes, the program's signature, stay); a node is
live if one of those reads it, directly or through other nodes. A fork branch nobody reads
(its text, variables and generations unused) is removed whole, and so are `get`s and pure
Python expressions whose values are never used, and branch/merge nodes of locals that the
rest of the program never reads.

Before:                                      After:
    %0 = begin                                   %0 = begin
    %1 = text %0 {value="Q: "}                   %1 = text %0 {value="Q: "}
    %2 = fork %1 {n=2}                           %2 = gen %1 {name="a"}
    %3 = child %2 {index=0}                      %3 = ret %2
    %4 = gen %3 {name="unused"}
    %5 = child %2 {index=1}
    %6 = get %1 {name="x"}
    %7 = gen %1 {name="a"}
    %8 = ret %7

Invariant: the program's returned state, return value and side effects are unchanged.
Idempotent: what remains is all live."""

from __future__ import annotations

import networkx as nx

from ..ir.graph import Graph
from ..ir.ops import Op


def run(g: Graph, ctx=None) -> Graph:
    roots = [n for n in g.nodes if g.op(n) in (Op.RET, Op.ARG) or
             (g.op(n) is Op.PY and not g.node(n).attrs.get("pure"))]
    live = set(roots)
    for n in roots:
        live |= nx.ancestors(g, n)
    g.remove_nodes_from([n for n in list(g.nodes) if n not in live])
    return g
