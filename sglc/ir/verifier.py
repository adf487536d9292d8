"""The verifier: checks every invariant a graph must keep, and on failure raises `IRError` with
the whole printed graph, the offending lines marked."""

from __future__ import annotations

import ast
import re

import networkx as nx

from .errors import IRError
from .graph import Graph
from .ops import SIGNATURES, Kind, Op

_JSON_SCALARS = (str, int, float, bool, type(None))
_OPERAND_NAME = re.compile(r"_(\d+)$")


def _is_json(v) -> bool:
    if isinstance(v, _JSON_SCALARS):
        return True
    if isinstance(v, list):
        return all(_is_json(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json(x) for k, x in v.items())
    return False


def _check_node(g: Graph, n, problems: dict) -> None:
    def bad(msg: str) -> None:
        problems.setdefault(n, msg)

    node = g.node(n)
    sig = SIGNATURES[node.op]
    if set(g.predecessors(n)) != set(node.args):
        return bad("edges do not match the operands")
    args = node.args
    if len(args) < len(sig.operands) + sig.min_rest or (sig.rest is None and
                                                         len(args) > len(sig.operands)):
        return bad(f"{node.op.value} takes {len(sig.operands)}"
                   f"{' or more' if sig.rest else ''} operands, got {len(args)}")
    kinds = [g.kind(a) for a in args]
    first = kinds[0] if kinds else None
    for i, k in enumerate(kinds):
        want = sig.operands[i] if i < len(sig.operands) else sig.rest
        if want is Kind.SAME:
            want = first if node.op in (Op.MERGE, Op.BRANCH) and i > 0 else k
        if node.op is Op.PY and i > 0 and k in (Kind.STATE, Kind.VALUE):
            continue
        if k is not want:
            return bad(f"operand {i} (%{args[i]}) is a {k.value}, expected a {want.value}")
    missing = [a for a in sig.required if a not in node.attrs]
    unknown = [a for a in node.attrs if a not in sig.required + sig.optional]
    if missing or unknown:
        return bad(f"{node.op.value}: missing attribute(s) {missing}" if missing else
                   f"{node.op.value}: unknown attribute(s) {unknown}")
    if not all(_is_json(v) for v in node.attrs.values()):
        return bad("attribute values must be JSON values")
    _check_attrs(g, n, node, bad)


def _check_attrs(g: Graph, n, node, bad) -> None:
    a = node.attrs
    if node.op is Op.TEXT and not isinstance(a["value"], str):
        bad("text value must be a string")
    elif node.op is Op.FORK and not (isinstance(a["n"], int) and a["n"] >= 1):
        bad("fork n must be an integer >= 1")
    elif node.op is Op.CHILD:
        fork = g.node(node.args[0])
        if not (isinstance(a["index"], int) and 0 <= a["index"] < fork.attrs.get("n", 0)):
            bad(f"child index {a['index']} is outside the fork's {fork.attrs.get('n')} branches")
    elif node.op is Op.BRANCH and not isinstance(a["arm"], bool):
        bad("branch arm must be true or false")
    elif node.op is Op.JOIN and a["mode"] not in ("gather_variable", "concate_and_append"):
        bad("join mode must be gather_variable or concate_and_append")
    elif node.op is Op.SELECT:
        has_operand = len(node.args) == 2
        choices = a.get("choices")
        if has_operand == (choices is not None) or len(node.args) > 2:
            bad("select takes its choices either as an attribute or as one operand")
        elif choices is not None and not (choices and all(isinstance(c, str) for c in choices)):
            bad("select choices must be a non-empty list of strings")
    elif node.op is Op.RET and len(node.args) > 2:
        bad("ret takes a state and at most one value")
    elif node.op is Op.PY:
        _check_code(node, bad)
    elif node.op in (Op.GET, Op.ROLE_BEGIN, Op.ROLE_END, Op.SCOPE_BEGIN, Op.SCOPE_END):
        key = "role" if node.op in (Op.ROLE_BEGIN, Op.ROLE_END) else "name"
        if not isinstance(a[key], str):
            bad(f"{node.op.value} {key} must be a string")


def _check_code(node, bad) -> None:
    try:
        tree = ast.parse(node.attrs["code"], mode="eval")
    except (SyntaxError, TypeError):
        return bad("py code is not a Python expression")
    for x in ast.walk(tree):
        if isinstance(x, ast.Name):
            m = _OPERAND_NAME.match(x.id)
            if m and not 1 <= int(m.group(1)) < len(node.args):
                return bad(f"py code reads {x.id}, but the node has {len(node.args) - 1} "
                           "value operand(s)")


def _check_graph(g: Graph, problems: dict) -> None:
    begins = [n for n in g.nodes if g.op(n) is Op.BEGIN]
    rets = [n for n in g.nodes if g.op(n) is Op.RET]
    if len(rets) != 1:
        for n in rets:
            problems.setdefault(n, "a program has exactly one ret")
        if not rets:
            problems.setdefault(None, "the program has no ret node")
    if len(begins) != 1:
        for n in begins:
            problems.setdefault(n, "a program has exactly one begin")
    seen_args, seen_children = {}, {}
    for n in g.nodes:
        node = g.node(n)
        if node.op is Op.ARG:
            name = node.attrs.get("name")
            if name in seen_args:
                problems.setdefault(n, f"argument {name!r} is declared twice")
            seen_args[name] = n
        elif node.op is Op.CHILD and node.args:
            key = (node.args[0], node.attrs.get("index"))
            if key in seen_children:
                problems.setdefault(n, f"branch {key[1]} of the fork is taken twice")
            seen_children[key] = n
        elif node.op is Op.FORK:
            for u in g.successors(n):
                if g.op(u) is not Op.CHILD:
                    problems.setdefault(u, "a fork's group is read only by child nodes")


def verify(g: Graph) -> Graph:
    """Return `g` if it is well formed; raise `IRError` showing every problem otherwise."""
    problems: dict = {}
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        problems.update({u: "on a cycle" for u, _ in cycle})
    for n in g.nodes:
        if "node" not in g.nodes[n]:
            problems[n] = "has no Node"
            continue
        _check_node(g, n, problems)
    if not problems:
        _check_graph(g, problems)
    if problems:
        general = problems.pop(None, None)
        summary = general or next(iter(problems.values()))
        text = g.to_text(marks=problems) if all("node" in g.nodes[n] for n in g.nodes) else ""
        raise IRError(f"invalid IR ({len(problems) + bool(general)} problem(s)): {summary}\n"
                      f"{text}")
    return g
