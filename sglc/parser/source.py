"""Find a program function's source, parse it with `ast`, and map AST positions back to the
file for error messages."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field

from .errors import CompileError


@dataclass
class FunctionSource:
    """A function's AST and where it sits: AST line 1 is file line `first_line`, and AST column
    0 is file column `indent`."""

    fn: object
    tree: ast.FunctionDef
    filename: str
    first_line: int
    indent: int
    lines: list[str]
    closure: dict = field(default_factory=dict)

    @property
    def globals(self) -> dict:
        return self.fn.__globals__

    def where(self, node: ast.AST | None) -> tuple[str, int, int, str | None]:
        """(file, line, col, source line) of an AST node."""
        if node is None or not hasattr(node, "lineno"):
            node = self.tree
        line = self.first_line + node.lineno - 1
        col = getattr(node, "col_offset", 0) + self.indent
        text = self.lines[node.lineno - 1] if 0 < node.lineno <= len(self.lines) else None
        return self.filename, line, col, text

    def loc(self, node: ast.AST | None) -> str:
        filename, line, _, _ = self.where(node)
        return f"{filename}:{line}"

    def error(self, node: ast.AST | None, message: str) -> CompileError:
        return CompileError(message, *self.where(node))


def load_source(fn) -> FunctionSource:
    """The source of plain function `fn`; raises CompileError if Python cannot show it."""
    code = getattr(fn, "__code__", None)
    filename = code.co_filename if code else "<unknown>"
    line = code.co_firstlineno if code else 0
    try:
        lines, first_line = inspect.getsourcelines(fn)
    except (OSError, TypeError) as e:
        raise CompileError(f"cannot read the source of {getattr(fn, '__qualname__', fn)!r} "
                           f"({e}); define it in a file", filename, line) from None
    text = "".join(lines)
    dedented = textwrap.dedent(text)
    indent = len(lines[0]) - len(lines[0].lstrip())
    try:
        module = ast.parse(dedented)
    except SyntaxError as e:
        raise CompileError(f"cannot parse the source: {e.msg}", filename,
                           first_line + (e.lineno or 1) - 1) from None
    tree = next((n for n in module.body if isinstance(n, (ast.FunctionDef,
                                                          ast.AsyncFunctionDef))), None)
    if tree is None or isinstance(tree, ast.AsyncFunctionDef):
        raise CompileError("a program must be a plain `def` function", filename, first_line)
    closure = {}
    if code is not None and fn.__closure__:
        for name, cell in zip(code.co_freevars, fn.__closure__):
            try:
                closure[name] = cell.cell_contents
            except ValueError:  # a cell not filled yet
                pass
    return FunctionSource(fn, tree, filename, first_line, indent,
                          [ln.rstrip("\n") for ln in lines], closure)
