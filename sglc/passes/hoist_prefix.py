"""Prefix hoisting: shared text is computed once.

1. Text (or a role's opening or closing) that every branch of a fork appends first moves above
   the fork, so it becomes part of the prefix the branches share.
2. Before a fork of more than one branch, the parent's text is committed to the backend's
   prefix cache once, so the branches reuse it (`commit`).
3. The program's constant prefix (the text and roles before anything depends on an argument
   or on the model) is marked `commit {batch=true}`: the executor prefills it once for all the
   instances of a `run_batch`.

Before:                                      After:
    %0 = begin                                   %0 = begin
    %1 = arg {name="q"}                          %1 = arg {name="q"}
    %2 = text %0 {value="Examples..."}           %2 = text %0 {value="Examples..."}
    %3 = append %2, %1                           %3 = commit %2 {batch=true}
    %4 = fork %3 {n=2}                           %4 = append %3, %1
    %5 = child %4 {index=0}                      %5 = text %4 {value="Answer:"}
    %6 = text %5 {value="Answer:"}               %6 = commit %5
    %7 = gen %6 {name="a"}                       %7 = fork %6 {n=2}
    %8 = child %4 {index=1}                      %8 = child %7 {index=0}
    %9 = text %8 {value="Answer:"}               %9 = gen %8 {name="a"}
    %10 = gen %9 {name="a"}                      %10 = child %7 {index=1}
    ...                                          %11 = gen %10 {name="a"}

The parent's own state is untouched (its later ops still read the pre-fork node); forks joined
with `concate_and_append` keep their text (it is what they hand back). Invariant: every
state's text, variables and messages are unchanged; commits only warm the cache. Idempotent:
existing commits are taken out and put back in the same places."""

from __future__ import annotations

from ..ir.graph import Graph
from ..ir.ops import Op

HOISTABLE = (Op.TEXT, Op.ROLE_BEGIN, Op.ROLE_END)
PREFIX_OPS = (Op.TEXT, Op.ROLE_BEGIN, Op.ROLE_END)


def run(g: Graph, ctx=None) -> Graph:
    _remove_commits(g)
    for fork in g.nodes_of(Op.FORK):
        while _hoist_once(g, fork):
            pass
    for fork in g.nodes_of(Op.FORK):
        if g.node(fork).attrs["n"] > 1:
            parent = g.node(fork).args[0]
            c = g.add(Op.COMMIT, (parent,), before=fork, loc=g.node(fork).loc)
            g.set_args(fork, (c,))
    _commit_batch_prefix(g)
    return g


def _remove_commits(g: Graph) -> None:
    for n in g.nodes_of(Op.COMMIT):
        users = list(g.successors(n))
        if g.node(n).attrs.get("batch") or (len(users) == 1 and g.op(users[0]) is Op.FORK):
            g.replace_uses(n, g.node(n).args[0])
            g.remove(n)


def _concat_joined(g: Graph, fork) -> bool:
    import networkx as nx

    return any(g.op(d) is Op.JOIN and g.node(d).attrs["mode"] == "concate_and_append"
               for d in nx.descendants(g, fork))


def _hoist_once(g: Graph, fork) -> bool:
    """Move the first op of every branch above the fork if they are all the same op."""
    children = list(g.successors(fork))
    firsts = []
    for c in children:
        users = list(g.successors(c))
        if len(users) != 1 or g.op(users[0]) not in HOISTABLE:
            return False
        firsts.append(users[0])
    ops = {(g.op(f), tuple(sorted(g.node(f).attrs.items()))) for f in firsts}
    if len(ops) != 1 or not firsts or _concat_joined(g, fork):
        return False
    first = g.node(firsts[0])
    parent = g.node(fork).args[0]
    h = g.add(first.op, (parent,), dict(first.attrs), first.loc, before=fork)
    g.set_args(fork, (h,))
    for c, f in zip(children, firsts):
        g.replace_uses(f, c)
        g.remove(f)
    return True


def _commit_batch_prefix(g: Graph) -> None:
    """Mark the end of the state chain from `begin` made only of constant text and roles."""
    (cur,) = g.nodes_of(Op.BEGIN)
    while True:
        nxt = [u for u in g.users(cur) if g.op(u) in PREFIX_OPS]
        if len(nxt) != 1:
            break
        cur = nxt[0]
    if g.op(cur) is Op.BEGIN:
        return
    c = g.add(Op.COMMIT, (cur,), {"batch": True}, g.node(cur).loc, after=cur)
    g.replace_uses(cur, c, skip={c})
