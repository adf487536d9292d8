"""Fork batching: the sibling gens (or selects) of a fork become one request group.

The k-th model call of each branch of a fork gets the same `group` id; the executor waits
until every member of a group is ready and submits them together (one `generate_many` call:
one engine batch; an API backend can make it one call with `n=` when the prompts and params
are identical). A member joins a group only if it depends on nothing from the other branches,
so holding it back can never wait on itself.

Before:                                      After:
    %3 = fork %2 {n=2}                           %3 = fork %2 {n=2}
    %4 = child %3 {index=0}                      %4 = child %3 {index=0}
    %5 = gen %4 {name="a"}                       %5 = gen %4 {name="a", group=0}
    %6 = child %3 {index=1}                      %6 = child %3 {index=1}
    %7 = gen %6 {name="a"}                       %7 = gen %6 {name="a", group=0}

Invariant: only `group` attributes change; what each node computes does not. Idempotent:
groups are recomputed from scratch, numbered in graph order."""

from __future__ import annotations

import networkx as nx

from ..ir.graph import Graph
from ..ir.ops import Op

CHAIN_OPS = (Op.TEXT, Op.APPEND, Op.GEN, Op.SELECT, Op.ROLE_BEGIN, Op.ROLE_END,
             Op.SCOPE_BEGIN, Op.SCOPE_END, Op.COMMIT)


def run(g: Graph, ctx=None) -> Graph:
    for n in g.nodes_of(Op.GEN, Op.SELECT):
        g.node(n).attrs.pop("group", None)
    next_id = 0
    for fork in g.nodes_of(Op.FORK):
        children = g.users(fork)
        inside = nx.descendants(g, fork)
        lanes = {c: _model_calls(g, c) for c in children}
        own = {c: nx.descendants(g, c) | {c} for c in children}
        for k in range(max((len(v) for v in lanes.values()), default=0)):
            members = [(c, lanes[c][k]) for c in children if len(lanes[c]) > k]
            if len(members) < 2 or len({g.op(m) for _, m in members}) != 1:
                continue
            if any((nx.ancestors(g, m) & inside) - own[c] for c, m in members):
                continue  # a member reads another branch: it cannot be held for the group
            for _, m in members:
                g.node(m).attrs["group"] = next_id
            next_id += 1
    return g


def _model_calls(g: Graph, child) -> list:
    """The gens and selects along a branch's state chain, in order, up to where it splits."""
    calls, cur = [], child
    while True:
        nxt = [u for u in g.users(cur) if g.op(u) in CHAIN_OPS and g.node(u).args[0] == cur]
        if len(nxt) != 1:
            return calls
        cur = nxt[0]
        if g.op(cur) in (Op.GEN, Op.SELECT):
            calls.append(cur)
