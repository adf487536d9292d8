"""CPU op choices, measured side by side at the default model's shapes: torch's F.linear vs
oneDNN-packed linears (sglc_runtime/model/packed_linear.py), and SDPA vs the matmul attention
`attend` (sglc_runtime/attention/torch_attention.py), in float32 and bfloat16. Each pair runs
interleaved, median of the runs. Run: python benchmarks/bench_cpu_ops.py [--reps 30]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, median_ms, save

from sglc_runtime.attention import attend
from sglc_runtime.model.packed_linear import PackedLinear

# (out, in) of the decoder's fused projections and the LM head
LINEARS = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
           "lm_head": (49152, 576)}
N_Q, N_KV, HD = 9, 3, 64


def bench_linears(reps: int) -> dict:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (1, 8, 64, 512):
            total = {"F.linear": 0.0, "packed": 0.0}
            for shape in LINEARS.values():
                lin = torch.nn.Linear(shape[1], shape[0], bias=False).to(dtype)
                packed = PackedLinear(lin)
                x = torch.randn(rows, shape[1]).to(dtype)
                ms = median_ms({"F.linear": lambda: F.linear(x, lin.weight),
                                "packed": lambda: packed(x)}, reps)
                for k in total:
                    total[k] += ms[k]
            key = f"{str(dtype).split('.')[1]} rows={rows}"
            out[key] = {**total, "speedup": total["F.linear"] / total["packed"]}
            print("linear (all 5 shapes)", key, {k: round(v, 3) for k, v in out[key].items()},
                  flush=True)
    return out


def bench_attention(reps: int) -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    cases = {"decode b=64 L=80": (64, 1, 80), "decode b=64 L=300": (64, 1, 300),
             "decode b=1 L=64": (1, 1, 64), "decode b=1 L=1000": (1, 1, 1000),
             "prefill T=512": (1, 512, 512)}
    for dtype in (torch.float32, torch.bfloat16):
        for name, (b, tq, length) in cases.items():
            q = torch.randn(b, tq, N_Q, HD, generator=g).to(dtype)
            k = torch.randn(b, length, N_KV, HD, generator=g).to(dtype)
            v = torch.randn(b, length, N_KV, HD, generator=g).to(dtype)
            causal = tq > 1
            qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            mask = torch.ones(tq, length, dtype=torch.bool).tril(length - tq)[None]
            ms = median_ms({
                "sdpa": lambda: F.scaled_dot_product_attention(
                    qs, ks, vs, is_causal=causal, scale=HD ** -0.5, enable_gqa=True),
                "attend": lambda: attend(q, k, v, HD ** -0.5, mask if causal else None,
                                         need_lse=False)}, reps)
            key = f"{str(dtype).split('.')[1]} {name}"
            out[key] = {**ms, "speedup": ms["sdpa"] / ms["attend"]}
            print("attention", key, {k: round(v, 3) for k, v in out[key].items()}, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    result = {"linear_ms": bench_linears(args.reps), "attention_ms": bench_attention(args.reps)}
    path = save("cpu_ops", result)
    def short(key: str) -> str:
        return (key.replace("float32", "f32").replace("bfloat16", "bf16")
                .replace("decode ", "").replace("prefill T=", "prefill ").replace(" L=", " L")
                .replace("rows=", "M="))

    bar_plot(RESULTS / "cpu_ops.png", "CPU op choices: speedup of packed linears and of attend",
             {"packed linear vs F.linear": {short(k): v["speedup"]
                                            for k, v in result["linear_ms"].items()},
              "attend vs SDPA (<1: SDPA is used)": {
                  short(k): v["speedup"] for k, v in result["attention_ms"].items()}},
             "speedup (x)")
    print(path.read_text())


if __name__ == "__main__":
    main()
