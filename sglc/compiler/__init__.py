"""The compiler: `sgl.compile` / `@sgl.compile` (program.py) parses a program into the IR
(sglc.parser, sglc.ir), runs the passes (sglc.passes) and executes the graph: `plan.py` lays a
compiled graph out per program, `executor.py` runs it as dataflow over every program instance,
`segments.py` sends gen/text/gen stretches to the engine as one request."""

from .program import CompiledProgram, compile

__all__ = ["CompiledProgram", "compile"]
