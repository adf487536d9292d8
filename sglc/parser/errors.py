"""`CompileError`: a construct the compiler cannot turn into IR, named by file:line:col with the
source line and a caret under the column."""

from __future__ import annotations

from sglc_runtime.errors import SglcError


class CompileError(SglcError):
    """The program uses something the compiler cannot put in the graph (or uses it wrongly)."""

    def __init__(self, message: str, filename: str = "<unknown>", line: int = 0, col: int = 0,
                 source_line: str | None = None):
        self.message = message
        self.filename, self.line, self.col = filename, line, col
        self.source_line = source_line
        super().__init__(self._format())

    @property
    def location(self) -> str:
        return f"{self.filename}:{self.line}:{self.col + 1}"

    def _format(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.source_line is not None:
            src = self.source_line.rstrip("\n")
            text += f"\n    {src}\n    {' ' * self.col}^"
        return text


class ProgramCheckError(CompileError):
    """The program itself is wrong (a gen argument of the wrong type or range, a bad regex or
    schema, a name read before it is written): it would fail eagerly too, so it is reported at
    compile time rather than run eagerly."""


class CompileWarning(UserWarning):
    """A program could not be compiled and runs eagerly instead."""
