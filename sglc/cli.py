"""The `sglc` command line: generate text, serve the OpenAI API, compile and run programs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from sglc_runtime.errors import SglcError

from .compile_cli import add_compile_commands
from .engine_args import add_engine_args, engine_kwargs


def cmd_generate(args: argparse.Namespace) -> int:
    from sglc_runtime.engine import Engine

    eng = Engine(**engine_kwargs(args))
    try:
        prompt = args.prompt
        if args.chat:
            prompt = eng.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
        for chunk in eng.generate(prompt, params, stream=True):
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()
            if "finish_reason" in chunk["meta_info"]:
                meta = chunk["meta_info"]
        sys.stdout.write("\n")
        logging.getLogger("sglc").info("meta_info: %s", json.dumps(meta))
    finally:
        eng.shutdown()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sglc_runtime.engine import Engine
    from sglc_runtime.server.app import create_app

    api_key = args.api_key or os.environ.get("SGLC_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logging.getLogger("sglc").warning("serving on %s without --api-key: anyone who reaches "
                                          "this address can use the model", args.host)
    engine = Engine(**engine_kwargs(args))
    name = args.served_model_name or (args.model_path or "SmolLM2-135M-Instruct")
    try:
        app = create_app(engine, name, api_key=api_key,
                         max_request_bytes=args.max_request_bytes)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.shutdown()
    return 0


def cmd_bench(args) -> int:
    from .bench.run import main as bench_main

    return bench_main(args)


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default (where it has one)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", formatter_class=DefaultsHelp,
                       help="generate text for one prompt (streams to stdout)")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    add_engine_args(g)
    g.set_defaults(func=cmd_generate)
    s = sub.add_parser("serve", formatter_class=DefaultsHelp,
                       help="serve the OpenAI-compatible API over HTTP")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=30000, help="port to listen on")
    s.add_argument("--served-model-name", default=None,
                   help="the model name the API reports (default: --model-path, else "
                        "SmolLM2-135M-Instruct)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route (or SGLC_API_KEY)")
    s.add_argument("--max-request-bytes", type=int, default=16 << 20,
                   help="larger request bodies get HTTP 413")
    add_engine_args(s)
    s.set_defaults(func=cmd_serve)
    b = sub.add_parser("bench", formatter_class=DefaultsHelp,
                       help="the workload table: sglc and its peers side by side")
    from .bench.run import add_args as add_bench_args

    add_bench_args(b)
    b.set_defaults(func=cmd_bench)
    add_compile_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SglcError as e:
        print(f"sglc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
