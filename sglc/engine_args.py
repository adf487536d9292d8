"""The engine flags every `sglc` subcommand that starts an engine takes, named like SGLang's and
vLLM's server arguments, and their mapping to `Engine` keyword arguments."""

from __future__ import annotations

import argparse


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
    g.add_argument("--attention-backend", default="auto",
                   choices=["auto", "torch", "sdpa", "matmul", "triton"],
                   help="sdpa: torch's fused kernels; matmul: batched matmuls (16-bit, CPU); "
                        "triton: decode reads the KV pool in place (CUDA); auto: triton on "
                        "CUDA, the faster of sdpa/matmul measured at start on the CPU")
    g.add_argument("--disable-cuda-graph", action="store_true",
                   help="on CUDA, run decode steps eagerly instead of replaying graphs")
    g.add_argument("--cuda-graph-max-bs", type=int, default=160)
    g.add_argument("--disable-prepacked-linear", action="store_true",
                   help="on the CPU, use torch's F.linear instead of oneDNN-packed weights")
    g.add_argument("--disable-cpu-kernels", action="store_true",
                   help="on AVX-512-BF16 CPUs, run bf16 decode attention and RMSNorm as PyTorch "
                        "ops instead of the C kernels (decode attention reads the KV pool in "
                        "place there)")
    g.add_argument("--disable-fp32-logits", action="store_true",
                   help="in bfloat16, keep the LM head's 16-bit logits (by default each row's "
                        "top candidates are recomputed in float32)")
    g.add_argument("--quantization", default="auto", choices=["auto", "none", "int4"],
                   help="int4: small-batch decode reads int4 weights (CPU, faster batch-1); "
                        "auto: int4 in bfloat16 when the GGUF's projections are 4-bit already")
    g.add_argument("--disable-dequant-cache", action="store_true",
                   help="dequantize a GGUF file at every load (~20 s for the default model) "
                        "instead of caching its float32 weights (538 MB) in the cache folder")
    g.add_argument("--enable-deterministic-inference", action="store_true", default=True,
                   help="the same tokens for the same request whatever shares its batch or "
                        "sits in the prefix cache (CPU bf16 kernels: linears and attention in "
                        "one summation order at every batch shape; no cascade attention); on "
                        "by default")
    g.add_argument("--disable-deterministic-inference", action="store_false",
                   dest="enable_deterministic_inference",
                   help="let batch shape pick the faster kernels per step (A/B)")
    g.add_argument("--engine-in-process", action="store_true",
                   help="run the engine on a thread of this process, not in its own process "
                        "(lower batch-1 latency; the caller's torch work then slows it)")
    g.add_argument("--dp", "--dp-size", dest="dp_size", type=int, default=1,
                   help="engine replicas (processes) behind a cache-aware router")
    g.add_argument("--router-policy", default="cache_aware",
                   choices=["cache_aware", "round_robin", "random"])
    g.add_argument("--log-level", default="warning")


#: the flags above that become `Engine` keyword arguments (all but --log-level)
ENGINE_KWARGS = ("model_path", "dtype", "max_total_tokens", "max_running_requests",
                 "chunked_prefill_size", "schedule_policy", "disable_radix_cache",
                 "disable_regex_jump_forward", "disable_cascade_attention", "attention_backend",
                 "disable_cuda_graph", "cuda_graph_max_bs", "disable_prepacked_linear",
                 "disable_cpu_kernels",
                 "disable_fp32_logits", "quantization", "enable_deterministic_inference",
                 "disable_dequant_cache",
                 "engine_in_process", "dp_size",
                 "router_policy")


def engine_kwargs(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ENGINE_KWARGS}
