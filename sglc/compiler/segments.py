"""Whole-program execution: a gen and the constant ops and gens after it (`Plan.segments`) run
as one engine request that continues in place (`backend.generate_program`). The text between
gens is predicted on a scratch state and checked against the real one; from a gen whose prompt
would differ (or whose parameters a segment cannot carry) on, the rest runs node by node."""

from __future__ import annotations

import logging

from ..ir.ops import Op
from ..lang.snapshot import Snapshot, apply
from .plan import Instance, appends_model_call, node_expr

logger = logging.getLogger(__name__)


def usable_segment(inst: Instance, segment: list) -> list:
    """The part of a gen's segment that can run now: up to the last gen before the first
    append of a value not known yet (or one holding a model call)."""
    last_gen = 0
    for k, n in enumerate(segment):
        node = inst.plan.nodes[n]
        if node.op is Op.APPEND and (node.args[1] not in inst.values or
                                     appends_model_call(node, inst.values[node.args[1]])):
            break
        if node.op is Op.GEN:
            last_gen = k + 1
    return segment[:last_gen]


def _apply_constant(inst: Instance, node, state: Snapshot) -> Snapshot:
    expr = node_expr(node, [state] + [inst.values[a] for a in node.args[1:]])
    return apply(state, expr, inst.mirror.chat_template)


def run_segment(executor, inst: Instance, nodes: list) -> list:
    """Run `nodes` (a gen, then its segment) through `executor`'s backend; returns the nodes'
    states in order, possibly only a prefix of them (see the module docstring)."""
    plan = inst.plan
    start = inst.values[plan.nodes[nodes[0]].args[0]]
    scratch, steps = start, []
    for n in nodes:
        node = plan.nodes[n]
        if node.op is Op.GEN:
            params = executor.gen_params(inst, n, scratch)
            if params.n not in (None, 1) or params.to_request()[1]:
                break  # n > 1 or logprobs: not in a segment
            steps.append(("gen", params))
            scratch = scratch.with_var(node.attrs.get("name"), "", {})
        else:
            before = len(scratch.text)
            scratch = _apply_constant(inst, node, scratch)
            steps.append(("text", scratch.text[before:]))
    if sum(kind == "gen" for kind, _ in steps) < 2 or not start.text:
        return [executor.call_model(inst, nodes[0], [start])]
    outs = iter(executor.backend.generate_program(start.text, steps))
    values, state, expected = [], start, start.text
    for n, (kind, value) in zip(nodes, steps):
        node = plan.nodes[n]
        if kind == "gen":
            if state.text != expected:
                logger.debug("segment at %%%s: predicted prompt differs; going on node by node",
                             n)
                break
            text, meta = next(outs)
            state = state.generated(node.attrs.get("name"), text, meta)
            expected += text
        else:
            state = _apply_constant(inst, node, state)
            expected += value
        values.append(state)
    return values
