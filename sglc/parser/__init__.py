"""Source → IR: parses a program function's Python `ast` into a graph.

`source` finds and parses the function; `program` walks its statements (`control` for loops,
branches and exits, `exprs` for expressions and `s += ...`); `fold` evaluates what is known at
compile time; `builder` emits the nodes and lowers control flow to branch/merge gating."""

from .errors import CompileError, CompileWarning, ProgramCheckError
from .program import lower_program

__all__ = ["CompileError", "CompileWarning", "ProgramCheckError", "lower_program"]
