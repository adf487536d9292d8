"""The optimization pipeline: an explicit list of passes, each a function graph -> graph in a
file of its own, run by `PassManager` with a verify after each."""

from __future__ import annotations

from . import batch_forks, dce, hoist_prefix, lower_constraints, merge_text
from .manager import PassContext, PassManager

PIPELINE = [
    ("dce", dce.run),
    ("merge_text", merge_text.run),
    ("hoist_prefix", hoist_prefix.run),
    ("batch_forks", batch_forks.run),
    ("lower_constraints", lower_constraints.run),
]
PASSES = dict(PIPELINE)


def select_passes(names: list[str] | None) -> list:
    """The pipeline (names=None), or the named passes in the order given."""
    if names is None:
        return list(PIPELINE)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        from ..ir.errors import IRError

        raise IRError(f"unknown pass(es) {', '.join(unknown)}; passes: {', '.join(PASSES)}")
    return [(n, PASSES[n]) for n in names]


__all__ = ["PASSES", "PIPELINE", "PassContext", "PassManager", "select_passes"]
