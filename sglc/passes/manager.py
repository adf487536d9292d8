"""The pass manager: runs a list of passes, verifies the graph after each one (naming the pass
that broke it and those that ran before), and can print the IR after each."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..ir.errors import IRError
from ..ir.graph import Graph
from ..ir.verifier import verify


@dataclass
class PassContext:
    """What a pass may use besides the graph: the backend's tokenizer, if known."""
    tokenizer: object = None


@dataclass
class PassRecord:
    name: str
    changed: bool
    ir: str


class PassManager:
    def __init__(self, passes: list[tuple[str, Callable]], verify_each: bool = True,
                 print_after_all: bool = False, out=None):
        self.passes = passes
        self.verify_each = verify_each
        self.print_after_all = print_after_all
        self.out = out
        self.records: list[PassRecord] = []

    def run(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        ctx = ctx or PassContext()
        graph = verify(graph).canonical()
        self._print("input", str(graph), True)
        done: list[str] = []
        for name, fn in self.passes:
            before = str(graph)
            graph = fn(graph.clone(), ctx).canonical()
            text = str(graph)
            if self.verify_each:
                try:
                    verify(graph)
                except IRError as e:
                    ran = ", ".join(done) or "none"
                    raise IRError(f"pass {name!r} left an invalid graph (passes before it: "
                                  f"{ran}): {e}") from None
            done.append(name)
            self.records.append(PassRecord(name, text != before, text))
            self._print(name, text, text != before)
        return graph

    def _print(self, name: str, text: str, changed: bool) -> None:
        if self.print_after_all:
            out = self.out or sys.stderr
            print(f"// ----- IR after {name}{'' if changed else ' (unchanged)'} -----\n{text}",
                  file=out)
