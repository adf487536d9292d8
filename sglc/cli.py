"""The `sglc` command line: generate text, serve the OpenAI API, compile and run programs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from sglc_runtime.errors import SglcError


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Engine flags, named like SGLang's and vLLM's server arguments."""
    g = p.add_argument_group("engine")
    g.add_argument("--model-path", default=None,
                   help="a .gguf file or Hugging Face folder (default: SmolLM2-135M-Instruct)")
    g.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    g.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size in tokens")
    g.add_argument("--max-running-requests", type=int, default=256)
    g.add_argument("--chunked-prefill-size", type=int, default=2048)
    g.add_argument("--schedule-policy", default="lpm", choices=["lpm", "fcfs"])
    g.add_argument("--disable-radix-cache", action="store_true")
    g.add_argument("--disable-regex-jump-forward", action="store_true")
    g.add_argument("--disable-cascade-attention", action="store_true",
                   help="attend a batch's shared cached prefix per request, not once")
    g.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"],
                   help="decode attention: triton reads the KV pool in place (CUDA)")
    g.add_argument("--disable-cuda-graph", action="store_true",
                   help="on CUDA, run decode steps eagerly instead of replaying graphs")
    g.add_argument("--cuda-graph-max-bs", type=int, default=160)
    g.add_argument("--disable-prepacked-linear", action="store_true",
                   help="on the CPU, use torch's F.linear instead of oneDNN-packed weights")
    g.add_argument("--quantization", default="auto", choices=["auto", "none", "int4"],
                   help="int4: small-batch decode reads int4 weights (CPU, faster batch-1); "
                        "auto: int4 in bfloat16 when the GGUF's projections are 4-bit already")
    g.add_argument("--engine-in-process", action="store_true",
                   help="run the engine on a thread of this process, not in its own process "
                        "(lower batch-1 latency; the caller's torch work then slows it)")
    g.add_argument("--dp", "--dp-size", dest="dp_size", type=int, default=1,
                   help="engine replicas (processes) behind a cache-aware router")
    g.add_argument("--router-policy", default="cache_aware",
                   choices=["cache_aware", "round_robin", "random"])
    g.add_argument("--log-level", default="warning")


def engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(model_path=args.model_path, dtype=args.dtype,
                max_total_tokens=args.max_total_tokens,
                max_running_requests=args.max_running_requests,
                chunked_prefill_size=args.chunked_prefill_size,
                schedule_policy=args.schedule_policy,
                disable_radix_cache=args.disable_radix_cache,
                disable_regex_jump_forward=args.disable_regex_jump_forward,
                disable_cascade_attention=args.disable_cascade_attention,
                attention_backend=args.attention_backend,
                disable_cuda_graph=args.disable_cuda_graph,
                cuda_graph_max_bs=args.cuda_graph_max_bs,
                disable_prepacked_linear=args.disable_prepacked_linear,
                quantization=args.quantization, engine_in_process=args.engine_in_process,
                dp_size=args.dp_size, router_policy=args.router_policy)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text for one prompt (streams to stdout)")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    add_engine_args(g)
    g.set_defaults(func=cmd_generate)
    s = sub.add_parser("serve", help="serve the OpenAI-compatible API over HTTP")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=30000)
    s.add_argument("--served-model-name", default=None)
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route (or SGLC_API_KEY)")
    s.add_argument("--max-request-bytes", type=int, default=16 << 20,
                   help="larger request bodies get HTTP 413")
    add_engine_args(s)
    s.set_defaults(func=cmd_serve)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands():
    """Subcommands defined next to what they drive (the compiler)."""
    cmds = []
    try:
        from .compile_cli import add_compile_commands
        cmds.append(add_compile_commands)
    except ImportError:
        pass
    return cmds


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
