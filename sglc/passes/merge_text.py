"""Text coalescing: consecutive constant texts on one state become one `text` node.

Before:                                      After:
    %0 = begin                                   %0 = begin
    %1 = text %0 {value="Question: "}            %1 = text %0 {value="Question: What?\\n"}
    %2 = text %1 {value="What?"}                 %2 = gen %1 {name="a"}
    %3 = text %2 {value="\\n"}                    %3 = ret %2
    %4 = gen %3 {name="a"}
    %5 = ret %4

A text merges into the one before it only if that one is read by it alone, so no other node
sees a state that disappears; the merged node keeps the first one's place. Invariant: every remaining state has the same text and variables. Idempotent: no
text node is left whose operand is a text read by it alone."""

from __future__ import annotations

from ..ir.graph import Graph
from ..ir.ops import Op


def run(g: Graph, ctx=None) -> Graph:
    for n in g.topo_order():
        if n not in g or g.op(n) is not Op.TEXT:
            continue
        node = g.node(n)
        while True:
            users = list(g.successors(n))
            if len(users) != 1 or g.op(users[0]) is not Op.TEXT:
                break
            (nxt,) = users
            node.attrs["value"] += g.node(nxt).attrs["value"]
            g.replace_uses(nxt, n)
            g.remove(nxt)
    return g
