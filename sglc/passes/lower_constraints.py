"""Constraint lowering: a gen's `json_schema` or `dtype` becomes the final `regex` it means,
and, when the backend's tokenizer is known at compile time, that regex's compressed token FSM
is built now (cached in memory and on disk per pattern and tokenizer), so no request pays for
building it.

Before:
    %4 = gen %3 {name="age", dtype="int"}
    %5 = gen %4 {name="person", json_schema="{\\"type\\": \\"object\\", ...}"}
After:
    %4 = gen %3 {name="age", extra_stop=[" ", "\\n"], regex="[-+]?[0-9]+[ \\n]{0,2}"}
    %5 = gen %4 {name="person", regex="\\\\{[ ]?\\"name\\"...\\\\}"}

`extra_stop` keeps what a `dtype` of int or float adds (a number ends at a space or newline).
A constraint that does not convert (a bad schema) is left alone: the request then fails as the
eager program's would. Invariant: every gen asks the engine for the same FSM as before.
Idempotent: no json_schema or dtype is left to lower."""

from __future__ import annotations

import logging

from ..ir.graph import Graph
from ..ir.ops import Op

logger = logging.getLogger(__name__)

NUMBER_STOPS = [" ", "\n"]  # what SglSamplingParams.to_request adds for int and float


def run(g: Graph, ctx=None) -> Graph:
    try:
        from sglc_runtime.constrained import dtype_regex, json_schema_to_regex
        from sglc_runtime.errors import ConstraintError
    except ImportError:  # the runtime's FSM library is not available: leave gens as they are
        logger.debug("sglc_runtime.constrained is not importable; constraints stay unlowered")
        return g
    for n in g.nodes_of(Op.GEN):
        attrs = g.node(n).attrs
        try:
            if "json_schema" in attrs:
                attrs["regex"] = json_schema_to_regex(attrs["json_schema"])
                del attrs["json_schema"]
            elif "dtype" in attrs:
                attrs["regex"] = dtype_regex(attrs["dtype"])
                if attrs.pop("dtype") in ("int", "float"):
                    attrs["extra_stop"] = NUMBER_STOPS
        except ConstraintError as e:
            logger.info("gen %%%s keeps its constraint (%s)", n, e)
    tokenizer = getattr(ctx, "tokenizer", None)
    if tokenizer is not None:
        warm(g, tokenizer)
    return g


def warm(g: Graph, tokenizer) -> int:
    """Build (or load) the token FSM of every gen's regex with `tokenizer`; returns how many."""
    from sglc_runtime.constrained import build_constraint

    patterns = sorted({g.node(n).attrs["regex"] for n in g.nodes_of(Op.GEN)
                       if "regex" in g.node(n).attrs})
    for p in patterns:
        build_constraint(tokenizer, regex=p)
    return len(patterns)
