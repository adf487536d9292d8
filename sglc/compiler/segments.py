"""Whole-program execution: a gen and the constant ops and gens after it (`Plan.segments`) run
as one engine request that continues in place (`backend.generate_program`). The text between
gens is predicted on a scratch state and checked against the real one; from a gen whose prompt
would differ (or whose parameters a segment cannot carry) on, the rest runs node by node."""

from __future__ import annotations

import logging

from ..ir.ops import Op
from ..lang.primitives import SglConstantText
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


def _apply_constant(inst: Instance, node, exe) -> None:
    exe.apply(node_expr(node, [exe] + [inst.values[a] for a in node.args[1:]]))


def run_segment(executor, inst: Instance, nodes: list) -> list:
    """Run `nodes` (a gen, then its segment) through `executor`'s backend; returns the nodes'
    states in order, possibly only a prefix of them (see the module docstring)."""
    plan = inst.plan
    start = inst.values[plan.nodes[nodes[0]].args[0]]
    scratch, steps = start.copy(), []
    for n in nodes:
        node = plan.nodes[n]
        if node.op is Op.GEN:
            params = executor._params(plan, n, scratch)
            if params.n not in (None, 1) or params.to_request()[1]:
                break  # n > 1 or logprobs: not in a segment
            steps.append(("gen", params))
            scratch.record(node.attrs.get("name"), "", {})
        else:
            before = len(scratch.text_)
            _apply_constant(inst, node, scratch)
            steps.append(("text", scratch.text_[before:]))
    if sum(kind == "gen" for kind, _ in steps) < 2 or not start.text_:
        return [executor._call(inst, nodes[0], [start])]
    outs = iter(executor.backend.generate_program(start.text_, steps))
    values, exe, expected = [], start, start.text_
    for n, (kind, value) in zip(nodes, steps):
        node = plan.nodes[n]
        exe = exe.copy()
        if kind == "gen":
            if exe.text_ != expected:
                logger.debug("segment at %%%s: predicted prompt differs; going on node by node",
                             n)
                break
            text, meta = next(outs)
            exe.apply(SglConstantText(text))
            exe.record(node.attrs.get("name"), text, meta)
            expected += text
        else:
            _apply_constant(inst, node, exe)
            expected += value
        values.append(exe)
    return values
