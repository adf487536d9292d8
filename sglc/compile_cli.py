"""`sglc compile prog.py` (print, save or draw the IR of a file's programs) and `sglc run
prog.py --function NAME --arg k=v` (run one compiled program); added to `sglc`'s command line
by `add_compile_commands`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from sglc_runtime.errors import SglcError

from .engine_args import add_engine_args, engine_kwargs


class CliError(SglcError):
    """A bad command line (missing file, unknown function, malformed --arg)."""


def load_programs(path: str) -> dict:
    """The `@sgl.function` / `@sgl.compile` programs defined in the file, by name."""
    from .lang.function import SglFunction

    file = Path(path)
    if not file.is_file():
        raise CliError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(f"sglc_prog_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise CliError(f"{e.filename}:{e.lineno}:{e.offset}: {e.msg}") from None
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, SglFunction) and getattr(obj.func, "__module__", None) ==
            spec.name}


def _pick(programs: dict, name: str | None, path: str) -> dict:
    if not programs:
        raise CliError(f"{path}: defines no @sgl.function programs")
    if name is None:
        return programs
    if name not in programs:
        raise CliError(f"{path}: no program {name!r}; it defines {', '.join(programs)}")
    return {name: programs[name]}


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile every program of the file; print the IR of those that compile and list, on
    stderr, those that run eagerly and why. Exit 2 for mistakes in a program (or, with
    --strict, for any program that does not compile)."""
    from .compiler import compile as sgl_compile
    from .ir.drawing import draw
    from .parser import CompileError, ProgramCheckError

    passes = None
    if args.passes is not None:
        passes = [p.strip() for p in args.passes.split(",") if p.strip() and p != "none"]
    programs = _pick(load_programs(args.file), args.function, args.file)
    texts, eager, wrong = [], [], []
    for name, program in programs.items():
        try:
            compiled = sgl_compile(program, strict=True, passes=passes,
                                   print_ir_after_all=args.print_ir_after_all)
        except ProgramCheckError as e:
            wrong.append((name, e))
            continue
        except CompileError as e:
            eager.append((name, e))
            continue
        texts.append(compiled.ir)
        if args.dot:
            out = Path(args.dot)
            if len(programs) > 1:
                out = out.with_name(f"{out.stem}_{name}{out.suffix}")
            draw(compiled.graph, out)
            print(f"sglc: drew {name} to {out}", file=sys.stderr)
    text = "\n".join(texts)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    print(f"sglc: {len(texts)} of {len(programs)} programs compiled", file=sys.stderr)
    for name, e in eager:
        print(f"sglc: {name} runs eagerly: {e}", file=sys.stderr)
    for name, e in wrong:
        print(f"sglc: error in {name}: {e}", file=sys.stderr)
    return 2 if wrong or (args.strict and eager) else 0


def parse_arg(item: str) -> tuple[str, object]:
    """`key=value`; the value is JSON if it parses as JSON, else the plain string."""
    if "=" not in item:
        raise CliError(f"--arg {item!r}: expected key=value")
    key, value = item.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_run(args: argparse.Namespace) -> int:
    from .backend.runtime import Runtime
    from .compiler import compile as sgl_compile

    programs = _pick(load_programs(args.file), args.function, args.file)
    if len(programs) > 1:
        raise CliError(f"{args.file} defines several programs ({', '.join(programs)}); pick "
                       "one with --function")
    (program,) = programs.values()
    kwargs = dict(parse_arg(a) for a in args.arg)
    runner = program if args.eager else sgl_compile(program, strict=True)
    rt = Runtime(**engine_kwargs(args))
    try:
        state = runner.run(backend=rt, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, **kwargs)
        sys.stdout.write(state.text() + "\n")
        if args.show_vars:
            for k, v in state.stream_executor.variables.items():
                print(f"{k} = {v!r}", file=sys.stderr)
        if state.ret_value is not None:
            print(f"return: {state.ret_value!r}", file=sys.stderr)
    finally:
        rt.shutdown()
    return 0


def add_compile_commands(sub) -> None:
    c = sub.add_parser("compile", help="compile a file's programs and print their IR")
    c.add_argument("file", help="a Python file defining @sgl.function programs")
    c.add_argument("--function", help="only this program")
    c.add_argument("-o", "--output", help="write the IR here instead of stdout")
    c.add_argument("--passes", help="comma-separated passes to run (default: all; 'none': none)")
    c.add_argument("--print-ir-after-all", action="store_true",
                   help="print the IR after each pass (to stderr)")
    c.add_argument("--dot", metavar="FILE", help="draw the graph to FILE.svg or FILE.png")
    c.add_argument("--strict", action="store_true",
                   help="exit 2 if a program does not compile (instead of listing it)")
    add_engine_args(c)
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="compile and run one program on the engine")
    r.add_argument("file")
    r.add_argument("--function", help="the program to run (needed if the file has several)")
    r.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument (JSON, or a plain string); repeatable")
    r.add_argument("--eager", action="store_true", help="run it eagerly instead")
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--show-vars", action="store_true", help="print the variables (to stderr)")
    add_engine_args(r)
    r.set_defaults(func=cmd_run)
