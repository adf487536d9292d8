"""Read the text form back into a `Graph` (grammar: `sglc_ir.lark`); `str(parse(t)) == t` for
every canonical text `t`."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .errors import IRError
from .graph import Graph
from .ops import Op


@lru_cache(maxsize=1)
def _parser():
    import lark

    grammar = (Path(__file__).parent / "sglc_ir.lark").read_text()
    return lark.Lark(grammar, parser="lalr", maybe_placeholders=False)


def _value(tree):
    """A JSON value from its parse tree."""
    kind = tree.data
    if kind == "string":
        return json.loads(tree.children[0])
    if kind == "number":
        return json.loads(tree.children[0])
    if kind in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[kind]
    if kind == "array":
        return [_value(c) for c in tree.children]
    if kind == "object":
        return {json.loads(p.children[0]): _value(p.children[1]) for p in tree.children}
    raise AssertionError(f"unexpected value node {kind}")


def parse(text: str, verify: bool = True) -> Graph:
    """The graph a text form describes; raises `IRError` (naming the line) on bad text."""
    import lark

    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise IRError(f"line {e.line}, column {e.column}: cannot parse the IR text here:\n"
                      f"{e.get_context(text)}") from None
    header, *lines = tree.children
    graph = Graph(name=str(header.children[0]))
    number: dict[int, int] = {}  # %N in the text -> node id
    for line in lines:
        ref, opname, *rest = line.children
        where = f"line {ref.line}"
        try:
            op = Op(str(opname))
        except ValueError:
            raise IRError(f"{where}: unknown op {str(opname)!r}; ops are "
                          f"{', '.join(o.value for o in Op)}") from None
        args, attrs = [], {}
        for part in rest:
            if part.data == "operands":
                for r in part.children:
                    k = int(r[1:])
                    if k not in number:
                        raise IRError(f"{where}: %{k} is used before it is defined")
                    args.append(number[k])
            else:
                for a in part.children:
                    key = str(a.children[0])
                    if key in attrs:
                        raise IRError(f"{where}: attribute {key!r} given twice")
                    attrs[key] = _value(a.children[1])
        k = int(ref[1:])
        if k in number:
            raise IRError(f"{where}: %{k} is defined twice")
        number[k] = graph.add(op, args, attrs)
    if verify:
        from .verifier import verify as verify_graph

        verify_graph(graph)
    return graph
